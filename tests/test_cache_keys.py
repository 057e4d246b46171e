"""A feature/pixel/text cache is reused only when it matches the split's content and order:
change a split's image list (or reorder it) and the cache is computed again, not silently reused."""
from __future__ import annotations

import numpy as np
import pytest

from xmr.data import open_split
from xmr.features.fingerprint import key_file
from xmr.features.pixels import cache_pixels
from xmr.features.store import split_with_features


def _rewrite_split(root, split, names):
    from conftest import FLICKR_SPLIT_FILES

    (root / "Flickr8k_text" / FLICKR_SPLIT_FILES[split]).write_text("".join(n + "\n" for n in names))


def test_changed_split_list_is_not_silently_reused(make_flickr8k, tmp_path, capsys):
    root = make_flickr8k()
    spec = f"flickr8k:{root}"
    a = split_with_features(spec, "train", "pooled", cache=tmp_path, progress=False)
    assert a.image_ids == ["1001_a.jpg", "1002_b.jpg", "1003_c.jpg"]
    again = split_with_features(spec, "train", "pooled", cache=tmp_path, progress=False)
    np.testing.assert_array_equal(a.features, again.features)
    assert "computing them again" not in capsys.readouterr().err
    # Reorder the split: the rows must follow the new order.
    _rewrite_split(root, "train", ["1003_c.jpg", "1001_a.jpg", "1002_b.jpg"])
    b = split_with_features(spec, "train", "pooled", cache=tmp_path, progress=False)
    assert "made from a different split" in capsys.readouterr().err
    np.testing.assert_allclose(np.asarray(b.features, np.float32), np.asarray(a.features, np.float32)[[2, 0, 1]],
                               atol=1e-2)
    # Shrink it: 2 rows, not the 3 cached ones.
    _rewrite_split(root, "train", ["1002_b.jpg", "1001_a.jpg"])
    c = split_with_features(spec, "train", "pooled", cache=tmp_path, progress=False)
    assert c.features.shape[0] == 2 and c.image_ids == ["1002_b.jpg", "1001_a.jpg"]
    np.testing.assert_allclose(np.asarray(c.features, np.float32), np.asarray(a.features, np.float32)[[1, 0]],
                               atol=1e-2)


def test_a_cache_without_a_key_is_accepted_only_if_its_ids_match(make_flickr8k, tmp_path, capsys):
    root = make_flickr8k()
    spec = f"flickr8k:{root}"
    split_with_features(spec, "test", "pooled", cache=tmp_path, progress=False)
    (keys := list(tmp_path.rglob("test.key.json")))
    assert len(keys) == 1
    keys[0].unlink()  # as written by an older xmr
    split_with_features(spec, "test", "pooled", cache=tmp_path, progress=False)
    assert "computing them again" not in capsys.readouterr().err and keys[0].is_file()


def test_pixels_cache_follows_the_split(make_flickr8k, tmp_path, capsys):
    root = make_flickr8k()
    split = open_split(f"flickr8k:{root}", "train")
    arr, _ = cache_pixels(split, tmp_path, 8, progress=False)
    first = np.array(arr)
    assert key_file(tmp_path / "train.npy").is_file()
    _rewrite_split(root, "train", ["1002_b.jpg", "1003_c.jpg", "1001_a.jpg"])
    arr2, _ = cache_pixels(open_split(f"flickr8k:{root}", "train"), tmp_path, 8, progress=False)
    assert "made from a different split" in capsys.readouterr().err
    np.testing.assert_array_equal(np.array(arr2), first[[1, 2, 0]])


def test_bert_cache_follows_the_captions(tmp_path, monkeypatch, capsys):
    from xmr.features import text

    calls = []

    def fake_encode(captions, tokenizer, model, max_len=32, tail_layers=0):
        calls.append(list(captions))
        n = len(captions)
        return np.full((n, max_len, text.BERT_DIM), len(calls), np.float16), np.ones((n, max_len), bool)

    monkeypatch.setattr(text, "load_bert", lambda: (None, None))
    monkeypatch.setattr(text, "bert_encode", fake_encode)
    text.bert_states(["a dog", "a cat"], tmp_path, "dev", max_len=4, progress=False)
    text.bert_states(["a dog", "a cat"], tmp_path, "dev", max_len=4, progress=False)
    assert len(calls) == 1
    states, _ = text.bert_states(["a cat", "a dog"], tmp_path, "dev", max_len=4, progress=False)
    assert len(calls) == 2 and float(states[0, 0, 0]) == 2.0
    assert "made from a different split" in capsys.readouterr().err


def test_bert_cache_built_by_two_at_once(tmp_path, monkeypatch):
    """A second build of the same cache starting while the first is writing (another process in
    practice) finishes, and so does the first, each from its own partial file."""
    from xmr.features import text

    calls = []

    def fake_encode(captions, tokenizer, model, max_len=32, tail_layers=0):
        calls.append(list(captions))
        call = len(calls)
        if call == 1:  # the first build, mid-way: a second one of the same cache
            inner, _ = text.bert_states(["a dog", "a cat"], tmp_path, "dev", max_len=4, progress=False)
            assert float(inner[0, 0, 0]) == 2.0
        n = len(captions)
        return np.full((n, max_len, text.BERT_DIM), call, np.float16), np.ones((n, max_len), bool)

    monkeypatch.setattr(text, "load_bert", lambda: (None, None))
    monkeypatch.setattr(text, "bert_encode", fake_encode)
    states, mask = text.bert_states(["a dog", "a cat"], tmp_path, "dev", max_len=4, progress=False)
    assert len(calls) == 2 and states.shape == (2, 4, text.BERT_DIM) and mask.all()
    assert float(states[0, 0, 0]) == 1.0  # the first build's own rows, renamed last
    assert not list(tmp_path.glob("*.partial"))
