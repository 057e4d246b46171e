"""--on-bad-input: an unreadable image stops the work with a message naming it (fail, the
default) or is left out with its captions and counted (skip), in feature extraction, training
data and indexing."""
from __future__ import annotations

import pytest

from xmr.data import open_split
from xmr.data.base import DataError
from xmr.features.image import extract_split, skipped_images
from xmr.features.store import split_with_features
from xmr.search.index import Collection, SearchError, build_index

pytestmark = pytest.mark.slow  # trains, extracts features or starts processes


@pytest.fixture
def corrupt_flickr(make_flickr8k):
    root = make_flickr8k()
    (root / "Flicker8k_Dataset" / "1002_b.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


def test_extraction_fails_naming_the_file_or_skips_and_counts(corrupt_flickr, tmp_path):
    split = open_split(f"flickr8k:{corrupt_flickr}", "train")
    with pytest.raises(DataError, match="1002_b.jpg: cannot decode image"):
        extract_split(split, tmp_path / "fail", progress=False)
    stats = extract_split(split, tmp_path / "skip", progress=False, on_bad_input="skip")
    assert stats["skipped"] == 1
    (record,) = skipped_images(tmp_path / "skip", "train")
    assert record["index"] == 1 and record["id"] == "1002_b.jpg" and "cannot decode" in record["reason"]
    with pytest.raises(ValueError, match="'fail' or 'skip'"):
        extract_split(split, tmp_path / "x", progress=False, on_bad_input="ignore")


def test_training_split_leaves_the_image_and_its_captions_out(corrupt_flickr, tmp_path, capsys):
    spec = f"flickr8k:{corrupt_flickr}"
    with pytest.raises(DataError, match="1002_b.jpg"):
        split_with_features(spec, "train", "pooled", cache=tmp_path, progress=False)
    s = split_with_features(spec, "train", "pooled", cache=tmp_path, progress=False, on_bad_input="skip")
    assert s.image_ids == ["1001_a.jpg", "1003_c.jpg"] and len(s.captions) == 10
    assert all(c.startswith(("1001_a", "1003_c")) for c in s.captions) and s.features.shape == (2, 1280)
    assert "left out 1 unreadable image" in capsys.readouterr().err
    # Features cached with a skipped image are not silently used under the fail policy.
    with pytest.raises(DataError, match="could not be read when its features were extracted.*--on-bad-input skip"):
        split_with_features(spec, "train", "pooled", cache=tmp_path, progress=False)


def test_index_of_a_folder_with_a_corrupt_photo(vsepp_index, tmp_path, feature_cache):
    run, _ = vsepp_index
    split = open_split("synthetic,seed=3,n_train=300,n_dev=60,n_test=60", "test")
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        split.load_image(i).save(folder / f"p{i}.jpg")
    (folder / "p1.jpg").write_bytes((folder / "p1.jpg").read_bytes()[:200])  # truncated
    with pytest.raises(SearchError, match="p1.jpg.*--on-bad-input skip"):
        build_index(run, Collection("images", str(folder)), tmp_path / "a", cache=feature_cache, progress=False)
    info = build_index(run, Collection("images", str(folder)), tmp_path / "b", cache=feature_cache,
                       progress=False, on_bad_input="skip")
    assert info["counts"] == {"images": 2}


def test_huge_image_is_refused_naming_the_file_or_skipped(make_flickr8k, tmp_path, monkeypatch):
    from xmr.data import images

    monkeypatch.setattr(images, "MAX_PIXELS", 200)  # the 16 x 16 test images are "huge" now
    split = open_split(f"flickr8k:{make_flickr8k()}", "test")
    with pytest.raises(DataError, match=r"3001_f.jpg: image is 16x16, over 200 pixels"):
        extract_split(split, tmp_path / "a", progress=False)
    assert extract_split(split, tmp_path / "b", progress=False, on_bad_input="skip")["skipped"] == 1
