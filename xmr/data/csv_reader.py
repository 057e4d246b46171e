"""open_clip's CSV: one row per caption, an image path column and a caption column.

``csv:PATH[,images=DIR][,sep=tab|comma][,img_key=filepath][,caption_key=caption]``

- ``PATH`` is a folder holding one file per split, ``{split}.csv`` (or ``.tsv``; ``dev`` is also
  found as ``val.csv``, open_clip's name), or one such file: a file's name is its split and its
  folder serves the others (``csv:data/train.csv`` reads ``dev`` from ``data/dev.csv``).
- Columns are found by name in the header: ``img_key`` (default ``filepath``) and ``caption_key``
  (default ``caption``; open_clip's own default name ``title`` is taken when there is no
  ``caption`` column). Other columns are ignored.
- The separator is a tab when the header holds one (open_clip's ``--csv-separator`` default),
  else a comma; ``sep=`` forces it. Fields may be quoted (captions with commas or newlines).
- Image paths are relative to ``images=DIR``, else to the CSV file's folder; absolute paths stay.

Images come in order of first appearance; each keeps its first ``captions_per_image`` captions
(default 5). An image with fewer is left out and counted on stderr, as the COCO reader does
(user CSVs vary; a CSV with one caption per image wants ``captions_per_image=1``); when no image
has enough, the error says which count the file does have. Every error names the file and line.
"""
from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path

from xmr.data.base import CAPTIONS_PER_IMAGE, DataError, Split
from xmr.data.text import check_caption

ALIASES = {"dev": ("dev", "val"), "train": ("train",), "test": ("test",)}
SEPARATORS = {"tab": "\t", "comma": ","}
SUFFIXES = (".csv", ".tsv")


def find_csv(path: Path, split: str) -> Path:
    """The CSV file of ``split``: ``path`` itself when it is that split's file, else
    ``{split}.csv`` / ``.tsv`` (and aliases) in ``path`` (a folder) or beside it (a file)."""
    names = ALIASES.get(split, (split,))
    if path.is_file():
        if path.stem in names:
            return path
        folder = path.parent
    elif path.is_dir():
        folder = path
    else:
        raise DataError(f"{path}: CSV file or folder of {{split}}.csv files not found")
    for name in names:
        for suffix in SUFFIXES:
            if (folder / f"{name}{suffix}").is_file():
                return folder / f"{name}{suffix}"
    wanted = " or ".join(f"{n}.csv" for n in names)
    raise DataError(f"{folder}: no {wanted} for split {split!r}; a CSV dataset has one file per split "
                    "(train.csv, dev.csv or val.csv, test.csv)")


def _decode(csv_file: Path) -> str:
    data = csv_file.read_bytes()
    try:
        return data.decode("utf-8-sig")  # a byte-order mark (spreadsheet exports) is dropped
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{csv_file}:{line}: invalid UTF-8 ({e.reason} at byte {e.start})") from None


def _column(header: list[str], key: str, fallbacks: tuple[str, ...], csv_file: Path, option: str) -> int:
    names = [h.strip() for h in header]
    for name in (key, *fallbacks):
        if name in names:
            return names.index(name)
    raise DataError(f"{csv_file}:1: no {key!r} column (the header has {', '.join(map(repr, names))}); "
                    f"name the column with {option}=NAME")


def read_rows(csv_file: Path, sep: str | None, img_key: str, caption_key: str) -> list[tuple[int, str, str]]:
    """(line, image path, caption) of every data row; errors name the file and line."""
    text = _decode(csv_file)
    first = text.split("\n", 1)[0]
    if not first.strip():
        raise DataError(f"{csv_file}:1: empty file or header; expected a header naming the "
                        f"{img_key!r} and {caption_key!r} columns")
    delimiter = SEPARATORS[sep] if sep else ("\t" if "\t" in first else ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
        img_col = _column(header, img_key, (), csv_file, "img_key")
        cap_col = _column(header, caption_key, ("title",) if caption_key == "caption" else (), csv_file,
                          "caption_key")
        rows, line = [], reader.line_num + 1
        for row in reader:
            if row and len(row) != len(header):
                raise DataError(f"{csv_file}:{line}: {len(row)} fields, the header has {len(header)} "
                                f"(separator {'tab' if delimiter == chr(9) else 'comma'}; quote fields that "
                                "hold it)")
            if row and any(field.strip() for field in row):
                image = row[img_col].strip()
                if not image:
                    raise DataError(f"{csv_file}:{line}: empty {img_key!r}")
                rows.append((line, image, check_caption(row[cap_col], f"{csv_file}:{line}")))
            line = reader.line_num + 1  # a quoted field may span lines: the next row starts after it
    except csv.Error as e:
        raise DataError(f"{csv_file}:{reader.line_num}: not valid CSV ({e})") from None
    if not rows:
        raise DataError(f"{csv_file}: no rows after the header")
    return rows


def read_csv(path: str | Path, split: str, images: str | Path | None = None,
             captions_per_image: int = CAPTIONS_PER_IMAGE, sep: str | None = None,
             img_key: str = "filepath", caption_key: str = "caption") -> Split:
    if sep is not None and sep not in SEPARATORS:
        raise DataError(f"dataset option sep={sep!r}: choose {' or '.join(SEPARATORS)}")
    csv_file = find_csv(Path(path), split)
    root = Path(images) if images is not None else csv_file.parent
    captions_of: dict[str, list[str]] = {}  # image id (its normalised path) -> captions, first-seen order
    for _, image, caption in read_rows(csv_file, sep, img_key, caption_key):
        captions_of.setdefault(os.path.normpath(image), []).append(caption)
    k = captions_per_image
    order = [i for i, caps in captions_of.items() if len(caps) >= k]
    if not order:
        most = max(len(c) for c in captions_of.values())
        raise DataError(f"{csv_file}: no image has {k} captions (at most {most}); read it with "
                        f"captions_per_image={most} (e.g. csv:{path},captions_per_image={most})")
    if len(order) < len(captions_of):
        print(f"{csv_file}: left out {len(captions_of) - len(order)} of {len(captions_of)} images with fewer "
              f"than {k} captions", file=sys.stderr)
    captions = [c for i in order for c in captions_of[i][:k]]
    return Split(split, order, captions, k, image_paths=[root / i for i in order])
