"""open_clip's CSV reader (``csv:``): good files read right, bad ones named by file and line."""
from __future__ import annotations

import pytest

from xmr.cli import main
from xmr.data import DataError, open_split

from conftest import K, caps_for, colour_of, write_image


def write_csv(path, rows, header=("filepath", "caption"), sep=",", bom=False):
    """Rows are field tuples; fields with the separator, quotes or newlines are quoted (csv style)."""
    def field(f):
        return '"' + f.replace('"', '""') + '"' if any(c in f for c in (sep, '"', "\n")) else f
    text = "\n".join(sep.join(field(f) for f in r) for r in [header, *rows]) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))
    return path


def rows_for(names, k=K, prefix="imgs/"):
    """Interleaved rows (round robin over images), as a reader must group by image."""
    return [(f"{prefix}{n}", c) for j in range(k) for n in names for c in [caps_for(n, k)[j]]]


@pytest.fixture
def csv_root(tmp_path):
    root = tmp_path / "csvdata"
    for split, names in {"train": ["a.jpg", "b.jpg", "c.jpg"], "val": ["d.jpg"], "test": ["e.jpg", "f.jpg"]}.items():
        write_csv(root / f"{split}.csv", rows_for(names))
        for i, n in enumerate(names):
            write_image(root / "imgs" / n, colour_of(i))
    return root


def test_folder_of_split_files(csv_root):
    s = open_split(f"csv:{csv_root}", "train")
    assert s.image_ids == ["imgs/a.jpg", "imgs/b.jpg", "imgs/c.jpg"]
    assert s.captions == [c for n in ("a.jpg", "b.jpg", "c.jpg") for c in caps_for(n)]
    assert s.image_paths == [csv_root / "imgs" / n for n in ("a.jpg", "b.jpg", "c.jpg")]
    assert all(p.is_file() for p in s.image_paths)
    assert open_split(f"csv:{csv_root}", "dev").image_ids == ["imgs/d.jpg"]  # dev found as val.csv
    assert open_split(f"csv:{csv_root}", "test").n_images == 2


def test_one_file_is_its_split_and_its_folder_serves_the_others(csv_root):
    assert open_split(f"csv:{csv_root / 'test.csv'}", "test").n_images == 2
    assert open_split(f"csv:{csv_root / 'test.csv'}", "train").n_images == 3


def test_open_clip_tsv_with_title_column_and_images_option(tmp_path):
    """open_clip's defaults: tab-separated, the caption column named 'title'; other columns ignored."""
    lines = ["title\tfilepath\textra"] + [f"photo {j}, with a comma\tx{j % 2}.png\tz" for j in range(10)]
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "train.tsv").write_text("\n".join(lines) + "\n")
    s = open_split(f"csv:{tmp_path / 'meta'},images={tmp_path / 'pics'}", "train")
    assert s.image_ids == ["x0.png", "x1.png"] and s.image_paths[0] == tmp_path / "pics" / "x0.png"
    assert s.captions[:2] == ["photo 0, with a comma", "photo 2, with a comma"]


def test_quoted_fields_bom_and_blank_lines(tmp_path):
    rows = [("a.jpg", f'a "quoted", caption {j}') for j in range(5)] + [("b.jpg", f"two\nlines {j}") for j in range(5)]
    f = write_csv(tmp_path / "train.csv", rows, bom=True)
    f.write_text(f.read_text(encoding="utf-8") + "\n\n", encoding="utf-8")  # trailing blank lines
    s = open_split(f"csv:{f}", "train")
    assert s.captions[0] == 'a "quoted", caption 0'
    assert s.captions[5] == "two lines 0"  # one line, single spaces, as every reader gives captions


def test_images_with_other_caption_counts(tmp_path, capsys):
    rows = rows_for(["a.jpg"], 6, "") + rows_for(["b.jpg"], 5, "") + rows_for(["c.jpg"], 2, "")
    f = write_csv(tmp_path / "train.csv", rows)
    s = open_split(f"csv:{f}", "train")
    assert s.image_ids == ["a.jpg", "b.jpg"] and len(s.captions) == 10
    assert "left out 1 of 3 images with fewer than 5 captions" in capsys.readouterr().err
    assert open_split(f"csv:{f},captions_per_image=2", "train").n_images == 3


def test_same_image_spelled_two_ways_is_one_image(tmp_path):
    rows = [("imgs/a.jpg" if j % 2 else "./imgs/a.jpg", f"cap {j}") for j in range(5)]
    s = open_split(f"csv:{write_csv(tmp_path / 'train.csv', rows)}", "train")
    assert s.image_ids == ["imgs/a.jpg"] and len(s.captions) == 5


BAD = [
    ("missing column", lambda p: write_csv(p, [("a.jpg", "x")] * 5, header=("path", "caption")),
     r"train\.csv:1: no 'filepath' column \(the header has 'path', 'caption'\); name the column with img_key"),
    ("empty caption", lambda p: write_csv(p, [("a.jpg", f"c{j}") for j in range(4)] + [("a.jpg", "  ")]),
     r"train\.csv:6: empty caption"),
    ("empty path", lambda p: write_csv(p, [("a.jpg", "c")] * 2 + [("", "c")]), r"train\.csv:4: empty 'filepath'"),
    ("field count", lambda p: p.write_text("filepath,caption\na.jpg,one\na.jpg,two,three\n"),
     r"train\.csv:3: 3 fields, the header has 2"),
    ("bad utf-8", lambda p: p.write_bytes(b"filepath,caption\na.jpg,ok\na.jpg,caf\xe9\n"), r"train\.csv:3: invalid UTF-8"),
    ("empty file", lambda p: p.write_bytes(b""), r"train\.csv:1: empty file or header"),
    ("header only", lambda p: p.write_text("filepath,caption\n"), r"train\.csv: no rows after the header"),
    ("too few captions", lambda p: write_csv(p, [("a.jpg", "c")]),
     r"train\.csv: no image has 5 captions \(at most 1\); read it with captions_per_image=1"),
    ("unclosed quote", lambda p: p.write_text('filepath,caption\na.jpg,"open\n'), r"train\.csv:\d+: not valid CSV"),
]


@pytest.mark.parametrize("name, write, pattern", BAD, ids=[b[0] for b in BAD])
def test_bad_files_name_file_and_line(tmp_path, name, write, pattern):
    write(tmp_path / "train.csv")
    with pytest.raises(DataError, match=pattern):
        open_split(f"csv:{tmp_path}", "train")


def test_missing_split_file_and_bad_options(tmp_path, csv_root):
    with pytest.raises(DataError, match=r"no test\.csv for split 'test'"):
        write_csv(tmp_path / "only" / "train.csv", rows_for(["a.jpg"]))
        open_split(f"csv:{tmp_path / 'only'}", "test")
    with pytest.raises(DataError, match="not found"):
        open_split(f"csv:{tmp_path / 'nowhere'}", "train")
    with pytest.raises(DataError, match=r"sep='semicolon': choose tab or comma"):
        open_split(f"csv:{csv_root},sep=semicolon", "train")
    with pytest.raises(DataError, match="csv takes captions_per_image, images, sep, img_key, caption_key"):
        open_split(f"csv:{csv_root},image=x", "train")
    with pytest.raises(DataError, match="dataset 'csv' needs a path"):
        open_split("csv", "train")


def test_cli_data_reads_csv_and_one_line_errors(csv_root, tmp_path, capsys):
    assert main(["data", f"csv:{csv_root}"]) == 0
    out = capsys.readouterr().out
    assert "train: 3 images, 15 captions (5/image)" in out and "all 3 images open" in out
    write_csv(tmp_path / "bad" / "train.csv", [("a.jpg", "c")] * 4 + [("a.jpg", "")])
    assert main(["data", f"csv:{tmp_path / 'bad'}", "--splits", "train"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("xmr: error: ") and "train.csv:6: empty caption" in err[0]
