"""Every dataset reader behind ``open_split``: ids, order, 5 captions each, paths, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import (COCO_EXPECTED, FLICKR_SPLITS, K, KARPATHY_EXPECTED, caps_for, coco_files,
                      colour_of, karpathy_entries, write_image)
from xmr.data import DataError, DatasetSpec, Split, open_split
from xmr.data.images import load_rgb


def assert_pairing(split: Split, expected_caps: dict[str, list[str]]) -> None:
    """captions come K per image in image order and caption_image maps each one to its image."""
    assert split.captions_per_image == K
    assert len(split.captions) == K * split.n_images
    ci = split.caption_image
    assert ci.dtype.kind == "i"
    np.testing.assert_array_equal(ci, np.repeat(np.arange(split.n_images), K))
    for i, image_id in enumerate(split.image_ids):
        mine = [c for c, j in zip(split.captions, ci) if j == i]
        assert mine == expected_caps[image_id], image_id


def assert_same_pixels(path, colour, tol=12):
    px = np.asarray(load_rgb(path), dtype=int)
    assert np.abs(px - np.array(colour)).max() <= tol, (path, px[0, 0], colour)


# =========================================================================== Flickr8k


@pytest.mark.parametrize("name", ["train", "dev", "test"])
def test_flickr8k_split(flickr8k_root, name):
    s = open_split(f"flickr8k:{flickr8k_root}", name)
    assert s.name == name
    assert s.image_ids == FLICKR_SPLITS[name]  # split-file order, not token-file order
    assert_pairing(s, {n: caps_for(n) for n in FLICKR_SPLITS[name]})
    assert s.image_paths == [flickr8k_root / "Flicker8k_Dataset" / n for n in s.image_ids]
    assert s.features is None and s.labels is None


def test_flickr8k_paths_point_at_the_right_images(flickr8k_root):
    all_names = [n for names in FLICKR_SPLITS.values() for n in names]
    s = open_split(f"flickr8k:{flickr8k_root}", "train")
    for i, (image_id, path) in enumerate(zip(s.image_ids, s.image_paths)):
        assert path.is_file() and path.name == image_id
        im = s.load_image(i)
        assert im.mode == "RGB" and im.size == (16, 16)
        assert_same_pixels(path, colour_of(all_names.index(image_id)))


def test_flickr8k_keeps_first_k_captions_and_normalises_spaces(make_flickr8k):
    splits = {"train": ["a.jpg", "b.jpg"], "dev": ["b.jpg"], "test": ["a.jpg"]}
    lines = [b"a.jpg#0\t  A dog   runs .  ", b"b.jpg#0\tb zero\r"]
    lines += [f"a.jpg#{j}\ta {j}".encode() for j in range(1, 7)]  # a has 7 captions
    lines += [f"b.jpg#{j}\tb {j}".encode() for j in range(1, 5)]
    root = make_flickr8k(splits=splits, token_lines=lines)
    s = open_split(f"flickr8k:{root}", "train")
    assert s.image_ids == ["a.jpg", "b.jpg"]
    assert s.captions[:5] == ["A dog runs .", "a 1", "a 2", "a 3", "a 4"]
    assert s.captions[5:] == ["b zero", "b 1", "b 2", "b 3", "b 4"]


def test_flickr8k_captions_per_image_option(flickr8k_root):
    s = open_split(f"flickr8k:{flickr8k_root},captions_per_image=3", "dev")
    assert s.captions_per_image == 3
    assert s.captions == [c for n in FLICKR_SPLITS["dev"] for c in caps_for(n)[:3]]
    np.testing.assert_array_equal(s.caption_image, [0, 0, 0, 1, 1, 1])


def test_flickr8k_missing_token_file(flickr8k_root):
    token = flickr8k_root / "Flickr8k_text" / "Flickr8k.token.txt"
    token.unlink()
    with pytest.raises(DataError, match="Flickr8k.token.txt") as e:
        open_split(f"flickr8k:{flickr8k_root}", "train")
    assert str(token) in str(e.value)


def test_flickr8k_missing_split_file(flickr8k_root):
    (flickr8k_root / "Flickr8k_text" / "Flickr_8k.devImages.txt").unlink()
    with pytest.raises(DataError, match=r"Flickr_8k\.devImages\.txt: missing"):
        open_split(f"flickr8k:{flickr8k_root}", "dev")


def test_flickr8k_unknown_split(flickr8k_root):
    with pytest.raises(DataError, match="'val'"):
        open_split(f"flickr8k:{flickr8k_root}", "val")


def test_flickr8k_split_lists_image_without_captions(make_flickr8k):
    captions = {n: caps_for(n) for n in ["a.jpg", "b.jpg"]}
    root = make_flickr8k(captions=captions,
                         splits={"train": ["a.jpg", "ghost.jpg", "b.jpg"], "dev": ["a.jpg"], "test": ["b.jpg"]})
    with pytest.raises(DataError) as e:
        open_split(f"flickr8k:{root}", "train")
    msg = str(e.value)
    assert f"{root / 'Flickr8k_text' / 'Flickr_8k.trainImages.txt'}:2:" in msg
    assert "ghost.jpg" in msg and "Flickr8k.token.txt" in msg


def test_flickr8k_missing_image_line_number_counts_blank_lines(make_flickr8k):
    root = make_flickr8k(captions={"a.jpg": caps_for("a.jpg")},
                         splits={"train": ["a.jpg"], "dev": ["a.jpg"], "test": ["a.jpg"]})
    split_file = root / "Flickr8k_text" / "Flickr_8k.trainImages.txt"
    split_file.write_text("a.jpg\n\nghost.jpg\n", encoding="utf-8")  # ghost.jpg is on line 3
    with pytest.raises(DataError) as e:
        open_split(f"flickr8k:{root}", "train")
    assert f"{split_file}:3:" in str(e.value)


def test_flickr8k_invalid_utf8_in_split_file(flickr8k_root):
    split_file = flickr8k_root / "Flickr8k_text" / "Flickr_8k.testImages.txt"
    split_file.write_bytes(b"3001_f.jpg\n\xff\xfe.jpg\n")
    with pytest.raises(DataError, match="Flickr_8k.testImages.txt"):
        open_split(f"flickr8k:{flickr8k_root}", "test")


def test_flickr8k_image_with_too_few_captions(make_flickr8k):
    captions = {"a.jpg": caps_for("a.jpg"), "b.jpg": caps_for("b.jpg", 3)}
    root = make_flickr8k(captions=captions, splits={"train": ["a.jpg", "b.jpg"], "dev": ["a.jpg"], "test": ["a.jpg"]})
    with pytest.raises(DataError, match=r"Flickr8k\.token\.txt: image 'b\.jpg' has 3 captions, needs 5"):
        open_split(f"flickr8k:{root}", "train")
    assert open_split(f"flickr8k:{root}", "dev").image_ids == ["a.jpg"]  # only the listed images matter


def test_flickr8k_invalid_utf8_names_file_and_line(flickr8k_root):
    token = flickr8k_root / "Flickr8k_text" / "Flickr8k.token.txt"
    lines = token.read_bytes().split(b"\n")
    lines[3] = lines[3][:-3] + b"\xff\xfe\xfa"  # line 4
    token.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match="invalid UTF-8") as e:
        open_split(f"flickr8k:{flickr8k_root}", "train")
    assert f"{token}:4:" in str(e.value)


def test_flickr8k_latin1_caption_is_rejected_but_utf8_accepted(make_flickr8k):
    splits = {"train": ["a.jpg"], "dev": ["a.jpg"], "test": ["a.jpg"]}
    good = [f"a.jpg#{j}\tcafé {j} — naïve".encode("utf-8") for j in range(5)]
    root = make_flickr8k(splits=splits, token_lines=good)
    assert open_split(f"flickr8k:{root}", "train").captions[0] == "café 0 — naïve"
    bad = good[:2] + ["a.jpg#2\tcafé".encode("latin-1")] + good[3:]
    root = make_flickr8k(splits=splits, token_lines=bad)
    with pytest.raises(DataError, match=r"Flickr8k\.token\.txt:3: invalid UTF-8"):
        open_split(f"flickr8k:{root}", "train")


def test_flickr8k_empty_caption(make_flickr8k):
    splits = {"train": ["a.jpg"], "dev": ["a.jpg"], "test": ["a.jpg"]}
    lines = [f"a.jpg#{j}\tcap {j}".encode() for j in range(5)]
    lines[1] = b"a.jpg#1\t  \t "
    root = make_flickr8k(splits=splits, token_lines=lines)
    with pytest.raises(DataError, match="empty caption") as e:
        open_split(f"flickr8k:{root}", "train")
    assert f"{root / 'Flickr8k_text' / 'Flickr8k.token.txt'}:2:" in str(e.value)


def test_flickr8k_line_without_tab(make_flickr8k):
    splits = {"train": ["a.jpg"], "dev": ["a.jpg"], "test": ["a.jpg"]}
    lines = [f"a.jpg#{j}\tcap {j}".encode() for j in range(5)]
    lines[4] = b"a.jpg#4 cap 4"
    root = make_flickr8k(splits=splits, token_lines=lines)
    with pytest.raises(DataError, match=r"Flickr8k\.token\.txt:5: expected"):
        open_split(f"flickr8k:{root}", "train")


# =========================================================================== Karpathy


@pytest.mark.parametrize("name", ["train", "dev", "test"])
def test_karpathy_split(karpathy_json, name):
    s = open_split(f"karpathy:{karpathy_json}", name)
    assert s.image_ids == KARPATHY_EXPECTED[name]
    expected = {e["filename"]: [x["raw"] or " ".join(x["tokens"]) for x in e["sentences"]][:K]
                for e in karpathy_entries()}
    assert_pairing(s, expected)
    assert s.image_paths == [karpathy_json.parent / "imgs" / n for n in s.image_ids]


def test_karpathy_restval_in_train_val_is_dev(karpathy_json):
    entries = {e["filename"]: e["split"] for e in karpathy_entries()}
    train = open_split(f"karpathy:{karpathy_json}", "train")
    assert {entries[i] for i in train.image_ids} == {"train", "restval"}
    assert [i for i in train.image_ids if entries[i] == "restval"] == ["k2.jpg", "k6.jpg"]
    dev = open_split(f"karpathy:{karpathy_json}", "dev")
    assert {entries[i] for i in dev.image_ids} == {"val"}
    assert not set(train.image_ids) & set(dev.image_ids)


def test_karpathy_caption_details(karpathy_json):
    s = open_split(f"karpathy:{karpathy_json}", "train")
    assert s.captions[2] == "tokens only sentence"  # empty 'raw' falls back to the tokens
    k4 = s.image_ids.index("k4.jpg")
    assert s.captions[k4 * K:(k4 + 1) * K] == caps_for("k4.jpg", 6)[:K]  # 6th sentence dropped


def test_karpathy_images_option_and_pixels(karpathy_json, tmp_path):
    s = open_split(f"karpathy:{karpathy_json},images={tmp_path / 'elsewhere'}", "test")
    assert s.image_paths == [tmp_path / "elsewhere" / "imgs" / n for n in s.image_ids]
    s = open_split(f"karpathy:{karpathy_json}", "test")
    names = [e["filename"] for e in karpathy_entries()]
    for i, n in enumerate(s.image_ids):
        assert_same_pixels(s.image_paths[i], colour_of(names.index(n)))


def test_karpathy_errors(make_karpathy, tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(DataError, match="nope.json"):
        open_split(f"karpathy:{missing}", "train")

    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="bad.json: not a Karpathy split JSON"):
        open_split(f"karpathy:{bad}", "train")

    entries = karpathy_entries()
    entries[3]["sentences"] = entries[3]["sentences"][:4]
    path = make_karpathy(entries, images=False, name="few.json")
    with pytest.raises(DataError, match=r"few\.json: images\[3\] \(k3\.jpg\) has 4 sentences"):
        open_split(f"karpathy:{path}", "test")

    entries = karpathy_entries()
    entries[1]["sentences"][4] = {"raw": "   ", "tokens": []}
    path = make_karpathy(entries, images=False, name="empty.json")
    with pytest.raises(DataError, match=r"empty\.json: images\[1\]: empty caption"):
        open_split(f"karpathy:{path}", "dev")

    path = make_karpathy([e for e in karpathy_entries() if e["split"] != "test"], images=False, name="notest.json")
    with pytest.raises(DataError, match=r"notest\.json: no images in split 'test'"):
        open_split(f"karpathy:{path}", "test")


# =========================================================================== COCO


@pytest.mark.parametrize("name", ["train", "dev", "test"])
def test_coco_split(coco_root, name):
    s = open_split(f"coco:{coco_root}", name)
    assert s.image_ids == COCO_EXPECTED[name]  # image-list order; 13 (4 captions) dropped
    assert_pairing(s, {i: [f"coco {i} caption {j}" for j in range(K)] for i in s.image_ids})
    folder = "train2014" if name == "train" else "val2014"
    assert s.image_paths == [coco_root / folder / f"COCO_{int(i):012d}.jpg" for i in s.image_ids]
    for p in s.image_paths:
        assert p.is_file()


def test_coco_drops_image_with_four_captions(coco_root):
    s = open_split(f"coco:{coco_root}", "train")
    assert "13" not in s.image_ids and s.n_images == 3
    assert not any(c.startswith("coco 13 ") for c in s.captions)
    assert "coco 14 caption 5" not in s.captions and "coco 11 caption 5" not in s.captions


def test_coco_file_names_as_split_and_images_option(coco_root, tmp_path):
    s = open_split(f"coco:{coco_root},images={tmp_path / 'imgs'}", "val2014")
    assert s.image_ids == ["21", "22"]
    assert s.image_paths == [tmp_path / "imgs" / "COCO_000000000021.jpg", tmp_path / "imgs" / "COCO_000000000022.jpg"]


def test_coco_annotation_file_at_root(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    (root / "captions_val2017.json").write_text(json.dumps(coco_files()["val2014"]), encoding="utf-8")
    s = open_split(f"coco:{root}", "dev")
    assert s.image_ids == ["21", "22"] and s.image_paths[0] == root / "val2017" / "COCO_000000000021.jpg"


def test_coco_errors(make_coco, tmp_path):
    empty = tmp_path / "empty_root"
    empty.mkdir()
    with pytest.raises(DataError, match="captions_train"):
        open_split(f"coco:{empty}", "train")

    files = coco_files()
    files["val2014"]["annotations"][2]["caption"] = " \n "
    bad_id = files["val2014"]["annotations"][2]["id"]
    root = make_coco(files, images=False)
    with pytest.raises(DataError, match=rf"captions_val2014\.json: annotation {bad_id}: empty caption"):
        open_split(f"coco:{root}", "dev")

    ann = root / "annotations" / "captions_val2014.json"
    ann.write_text(json.dumps({"images": []}), encoding="utf-8")
    with pytest.raises(DataError, match=r"captions_val2014\.json: not a COCO captions file"):
        open_split(f"coco:{root}", "dev")

    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg"}],
                               "annotations": [{"id": 1, "image_id": 1, "caption": "only one"}]}), encoding="utf-8")
    with pytest.raises(DataError, match=r"captions_val2014\.json: no image has 5 captions"):
        open_split(f"coco:{root}", "dev")


# =========================================================================== precomputed


def test_precomputed_2d_features_memory_mapped(precomputed_root):
    root, feats = precomputed_root
    s = open_split(f"precomputed:{root}", "train")
    assert isinstance(s.features, np.memmap)
    assert s.features.shape == (3, 4) and s.features.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(s.features), feats["train"])
    assert s.image_ids == ["img_a", "img_b", "img_c"]  # from train_ids.txt
    assert s.image_paths is None
    assert_pairing(s, {iid: caps_for(f"tr{i}") for i, iid in enumerate(s.image_ids)})
    with pytest.raises(DataError, match="precomputed features only"):
        s.load_image(0)


def test_precomputed_3d_region_features(precomputed_root):
    root, feats = precomputed_root
    s = open_split(f"precomputed:{root}", "dev")
    assert isinstance(s.features, np.memmap)
    assert s.features.shape == (2, 3, 4) and s.features.dtype == np.float16
    np.testing.assert_array_equal(np.asarray(s.features), feats["dev"])
    assert s.image_ids == ["dev-0", "dev-1"]  # no ids file
    assert_pairing(s, {f"dev-{i}": caps_for(f"dv{i}") for i in range(2)})


def test_precomputed_rows_repeated_per_caption_are_deduplicated(precomputed_root):
    root, feats = precomputed_root
    assert np.load(root / "test_ims.npy").shape == (10, 4)
    s = open_split(f"precomputed:{root}", "test")
    assert s.features.shape == (2, 4) and s.n_images == 2
    np.testing.assert_array_equal(np.asarray(s.features), feats["test"])
    assert_pairing(s, {f"test-{i}": caps_for(f"te{i}") for i in range(2)})


def test_precomputed_mismatched_rows(make_precomputed):
    root = make_precomputed("train", np.zeros((3, 4), np.float32), caps_for("x", 14))
    with pytest.raises(DataError, match=r"train_ims\.npy has 3 rows but train_caps\.txt has 14 captions") as e:
        open_split(f"precomputed:{root}", "train")
    assert str(root) in str(e.value)


@pytest.mark.parametrize("shape", [(3, 4), (3, 2, 4)])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_precomputed_non_finite_features(make_precomputed, shape, bad):
    f = np.ones(shape, np.float32)
    f[2].flat[1] = bad
    root = make_precomputed("dev", f, caps_for("x", 15))
    with pytest.raises(DataError, match=r"dev_ims\.npy: row 2 has NaN or inf"):
        open_split(f"precomputed:{root}", "dev")


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, bool])
def test_precomputed_integer_features(make_precomputed, dtype):
    root = make_precomputed("train", np.ones((1, 4), dtype=dtype), caps_for("x"))
    with pytest.raises(DataError, match=r"train_ims\.npy: features must be float"):
        open_split(f"precomputed:{root}", "train")


def test_precomputed_other_file_errors(make_precomputed, tmp_path):
    root = make_precomputed("train", np.ones((1, 2, 3, 4), np.float32), caps_for("x"))
    with pytest.raises(DataError, match=r"train_ims\.npy: features must be \(N, D\) or \(N, R, D\)"):
        open_split(f"precomputed:{root}", "train")

    with pytest.raises(DataError, match=r"dev_ims\.npy: feature file not found"):
        open_split(f"precomputed:{root}", "dev")

    (root / "test_ims.npy").write_bytes(b"not an npy file at all")
    with pytest.raises(DataError, match=r"test_ims\.npy: not a readable \.npy"):
        open_split(f"precomputed:{root}", "test")

    np.save(root / "val_ims.npy", np.ones((1, 4), np.float32))
    with pytest.raises(DataError, match=r"val_caps\.txt: caption file not found"):
        open_split(f"precomputed:{root}", "val")


def test_precomputed_caption_file_errors(make_precomputed):
    lines = [c.encode() for c in caps_for("x")]
    bad = lines[:3] + [b"caf\xe9"] + lines[4:]
    root = make_precomputed("train", np.ones((1, 4), np.float32), caps_bytes=b"\n".join(bad) + b"\n")
    with pytest.raises(DataError, match=r"train_caps\.txt:4: invalid UTF-8"):
        open_split(f"precomputed:{root}", "train")

    blank = lines[:1] + [b"   "] + lines[2:]
    root = make_precomputed("train", np.ones((1, 4), np.float32), caps_bytes=b"\n".join(blank) + b"\n")
    with pytest.raises(DataError, match=r"train_caps\.txt:2: empty caption"):
        open_split(f"precomputed:{root}", "train")


# =========================================================================== spec parsing


def test_spec_parse():
    s = DatasetSpec.parse("karpathy:/d/dataset.json,images=/d/imgs, captions_per_image = 3")
    assert (s.kind, s.path) == ("karpathy", "/d/dataset.json")
    assert s.options == {"images": "/d/imgs", "captions_per_image": "3"}
    syn = DatasetSpec.parse("synthetic,seed=1")
    assert syn.path is None and syn.options == {"seed": "1"}
    assert DatasetSpec.parse("flickr8k").path  # defaults to the shared copy's location
    assert DatasetSpec.parse("coco:/a").key != DatasetSpec.parse("coco:/b").key
    assert DatasetSpec.parse("coco:/a").key == DatasetSpec.parse("coco:/a").key


def test_spec_unknown_kind():
    with pytest.raises(DataError, match="unknown dataset kind 'flickr30k'"):
        open_split("flickr30k:/some/where", "train")


@pytest.mark.parametrize("kind", ["karpathy", "coco", "precomputed"])
def test_spec_needs_path(kind):
    with pytest.raises(DataError, match=f"dataset '{kind}' needs a path"):
        open_split(kind, "train")
    with pytest.raises(DataError, match="needs a path"):
        open_split(f"{kind}:,images=x", "train")


def test_spec_option_not_key_value():
    with pytest.raises(DataError, match="'seed' .* is not key=value"):
        DatasetSpec.parse("synthetic,seed")


def test_split_rejects_wrong_caption_count():
    with pytest.raises(DataError, match="7 captions for 2 images"):
        Split("x", ["a", "b"], ["c"] * 7)


# =========================================================================== images


def test_load_rgb_grayscale(tmp_path):
    for suffix in (".png", ".jpg"):
        p = write_image(tmp_path / f"gray{suffix}", 77, mode="L")
        im = load_rgb(p)
        assert im.mode == "RGB" and im.size == (16, 16)
        assert_same_pixels(p, (77, 77, 77), tol=2)


def test_load_rgb_cmyk(tmp_path):
    p = write_image(tmp_path / "cmyk.jpg", (0, 255, 255, 0), mode="CMYK")
    assert Image.open(p).mode == "CMYK"
    assert load_rgb(p).mode == "RGB"
    assert_same_pixels(p, (255, 0, 0), tol=8)


def test_load_rgb_rgba_composites_on_white(tmp_path):
    im = Image.new("RGBA", (4, 4), (10, 200, 30, 255))
    im.putpixel((0, 0), (0, 0, 0, 0))
    im.putpixel((1, 0), (0, 0, 0, 128))
    im.save(tmp_path / "rgba.png")
    out = load_rgb(tmp_path / "rgba.png")
    assert out.mode == "RGB"
    assert out.getpixel((3, 3)) == (10, 200, 30)
    assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white, not black
    assert all(120 <= v <= 135 for v in out.getpixel((1, 0)))  # half-transparent black over white


def test_load_rgb_palette(tmp_path):
    pal = [0, 0, 0, 10, 200, 30] + [0] * 762
    im = Image.new("P", (4, 4), 1)
    im.putpalette(pal)
    im.putpixel((0, 0), 0)
    im.save(tmp_path / "p.png")
    out = load_rgb(tmp_path / "p.png")
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (10, 200, 30) and out.getpixel((0, 0)) == (0, 0, 0)
    im.save(tmp_path / "pt.png", transparency=0)
    assert Image.open(tmp_path / "pt.png").mode == "P"
    out = load_rgb(tmp_path / "pt.png")
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (10, 200, 30)
    Image.new("LA", (2, 2), (50, 255)).save(tmp_path / "la.png")
    assert load_rgb(tmp_path / "la.png").getpixel((0, 0)) == (50, 50, 50)


def test_load_rgb_truncated_and_corrupt(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    full = tmp_path / "full.jpg"
    Image.fromarray(noise).save(full, quality=90)
    assert load_rgb(full).size == (64, 64)
    data = full.read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="trunc.jpg: cannot decode image") as e:
        load_rgb(tmp_path / "trunc.jpg")
    assert str(tmp_path / "trunc.jpg") in str(e.value)
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)
    with pytest.raises(DataError, match="junk.jpg: cannot decode image"):
        load_rgb(tmp_path / "junk.jpg")
    with pytest.raises(DataError, match="absent.jpg: image file not found"):
        load_rgb(tmp_path / "absent.jpg")


def test_precomputed_per_caption_rows_must_repeat(tmp_path):
    root = tmp_path / "pre"
    root.mkdir()
    np.save(root / "test_ims.npy", np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32))
    (root / "test_caps.txt").write_text("".join(f"caption {i}\n" for i in range(10)))
    with pytest.raises(DataError, match="not repeated per image"):
        open_split(f"precomputed:{root}", "test")


def test_precomputed_ids_file_must_match_rows(tmp_path):
    root = tmp_path / "pre"
    root.mkdir()
    np.save(root / "test_ims.npy", np.ones((3, 4), dtype=np.float32))
    (root / "test_caps.txt").write_text("".join(f"caption {i}\n" for i in range(15)))
    (root / "test_ids.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="test_ids.txt: 2 image ids for 3 feature rows"):
        open_split(f"precomputed:{root}", "test")
