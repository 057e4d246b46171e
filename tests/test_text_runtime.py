"""The query runtimes (issue 24): MiniLM on ONNX Runtime gives torch's token states within
TOLERANCE (final layer and a ``bert_tail`` layer), a searcher on it returns torch's hits; a bad
runtime name is a one-line error; an index records the runtime of its image features and the
engine encodes query images on that one (torch for an index without the field)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import SYNTHETIC_SMALL as DATA
from xmr.cli import main
from xmr.data import DatasetSpec, open_split
from xmr.features import text
from xmr.features.image import folder_runtime
from xmr.features.onnx_runtime import OnnxNetwork, OnnxText
from xmr.features.store import feature_root
from xmr.search.engine import TEXT_RUNTIME, Searcher
from xmr.search.index import Collection, build_index, describe
from test_serve_batching import QUERIES, as_dicts

SENTENCES = ["a dog runs on the beach", "two children in red coats play in the snow near a wooden fence", "a",
             "people walk down a busy city street at night"]


def assert_same_hits(got: list[dict], want: list[dict]) -> None:
    """Same hits in the same order (ids, ranks, verdicts exactly), scores within 1e-4."""
    assert [{k: v for k, v in h.items() if not isinstance(v, float)} for h in got] == \
           [{k: v for k, v in h.items() if not isinstance(v, float)} for h in want]
    for key in ("score", "first_stage_score"):
        np.testing.assert_allclose([h.get(key, 0.0) for h in got], [h.get(key, 0.0) for h in want], atol=1e-4)


def test_a_bad_text_runtime_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown text runtime 'tensorrt'; use one of torch, onnx"):
        text.check_runtime("tensorrt")
    with pytest.raises(ValueError, match="unknown text runtime 'tensorrt'"):
        Searcher(tmp_path, text_runtime="tensorrt")  # refused before the index is read
    assert main(["search", str(tmp_path), "a dog", "--text-runtime", "tensorrt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "xmr: error: unknown text runtime 'tensorrt'; use one of torch, onnx"
    assert TEXT_RUNTIME == "onnx"


@pytest.mark.slow
def test_onnx_states_equal_torch_ones(tmp_path):
    for tail in (0, 2):
        tokenizer, bert = text.load_encoder("torch", tail)
        _, onnx = text.load_encoder("onnx", tail, tmp_path)
        assert isinstance(onnx, OnnxText) and onnx.layer == 6 - tail
        for captions in (SENTENCES, SENTENCES[:1]):  # a padded batch, and one sentence alone
            want, want_mask = text.bert_encode(captions, tokenizer, bert, 50, tail, padding="longest")
            got, got_mask = text.bert_encode(captions, tokenizer, onnx, 50, tail, padding="longest")
            assert got.shape == want.shape and got.dtype == np.float16
            np.testing.assert_array_equal(got_mask, want_mask)
            diff = np.abs(got.astype(np.float32) - want.astype(np.float32))
            assert float(diff.max()) < text.TOLERANCE["max_abs"]
        with pytest.raises(ValueError, match=f"gives layer {6 - tail}'s states, not layer 3's"):
            text.bert_encode(SENTENCES, tokenizer, onnx, tail_layers=3)
    assert sorted(p.name.split("-")[1] for p in tmp_path.glob("minilm-*.onnx")) == ["l4", "l6"]
    # The file is exported once: a second load reads it.
    stamp = next(tmp_path.glob("minilm-l6-*.onnx")).stat().st_mtime_ns
    text.load_encoder("onnx", 0, tmp_path)
    assert next(tmp_path.glob("minilm-l6-*.onnx")).stat().st_mtime_ns == stamp


@pytest.fixture(scope="module")
def bert_index(tmp_path_factory, feature_cache):
    """A tiny VSE++ reading MiniLM's layer 5 (``bert_tail = 1``), indexed over the synthetic test split."""
    from xmr.train import TrainConfig, train

    run = tmp_path_factory.mktemp("bert-run")
    train(TrainConfig(model="vsepp", preset="tiny", data=DATA, out=str(run), cache=str(feature_cache),
                      overrides={"epochs": 1, "text_input": "bert", "text_tail_layers": 1}, progress=False))
    out = tmp_path_factory.mktemp("idx") / "bert-index"
    build_index(run, Collection("split", DATA, "test"), out, cache=feature_cache, progress=False)
    return run, out


def test_onnx_searcher_returns_the_torch_hits(bert_index, tmp_path):
    searchers = {r: Searcher(bert_index[1], text_runtime=r, cache=tmp_path) for r in ("torch", "onnx")}
    assert searchers["onnx"].model.inputs.bert_tail == 1
    assert isinstance(searchers["onnx"]._bert[1], OnnxText) and isinstance(searchers["torch"]._bert[1], torch.nn.Module)
    assert list((tmp_path / "onnx").glob("minilm-l5-*.onnx"))
    for k in (1, 10):
        got, want = (s.search_texts(QUERIES, k=k) for s in (searchers["onnx"], searchers["torch"]))
        for g, w in zip(got, want):
            assert_same_hits(as_dicts(g), as_dicts(w))


def test_the_index_records_its_feature_runtime_and_queries_use_it(vsepp_index, feature_cache, tmp_path):
    run, out = vsepp_index
    meta = json.loads((out / "meta.json").read_text())
    made_with = folder_runtime(feature_root(DatasetSpec.of(DATA), meta["extractor"], feature_cache))
    assert meta["feature_runtime"] == made_with == "onnx"  # a new feature folder's default
    assert "onnx runtime" in describe(out)
    searcher = Searcher(out, cache=tmp_path)
    assert searcher.feature_runtime == "onnx" and all(isinstance(net, OnnxNetwork) for net, _ in searcher._backbone)
    # A query image is encoded as the indexed ones were.
    split = open_split(DATA, "test")
    query = searcher.image_batch_from_pil([split.load_image(0)])["image"]
    stored = searcher.image_batch_stored(np.array([0]))["image"]
    np.testing.assert_allclose(query.numpy(), stored.numpy(), atol=1e-2)  # the index stores fp16

    # An index from before the field (or with torch features) is served on torch.
    for value in (None, "torch"):
        copy = tmp_path / f"index-{value}"
        shutil.copytree(out.resolve(), copy)
        old = json.loads((copy / "meta.json").read_text())
        if value is None:
            del old["feature_runtime"]
        else:
            old["feature_runtime"] = value
        (copy / "meta.json").write_text(json.dumps(old))
        s = Searcher(copy, cache=tmp_path)
        assert s.feature_runtime == "torch" and all(isinstance(net, torch.nn.Module) for net, _ in s._backbone)
        assert [h.caption_index for h in s.search_image(split.load_image(0), k=5)] == \
               [h.caption_index for h in searcher.search_image(split.load_image(0), k=5)]


def test_a_sentence_index_has_no_feature_runtime(vsepp_index, feature_cache, tmp_path):
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("a red circle\na blue square\n", encoding="utf-8")
    build_index(vsepp_index[0], Collection("sentences", str(sentences)), tmp_path / "ix", cache=feature_cache,
                progress=False)
    assert json.loads((tmp_path / "ix" / "meta.json").read_text())["feature_runtime"] is None
