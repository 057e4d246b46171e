"""The fine-tunable MiniLM tail over cached lower-layer token states (xmr/models/text_tail.py): the
states entering the last k layers are cached apart from the final-layer states, the tail at its
pretrained weights reproduces those final states, VSE++ with ``text_tail_layers`` trains it (at a
smaller learning rate) and starts from, and resumes, runs with and without it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from xmr.features import text
from xmr.features.fingerprint import content_key, key_file
from xmr.interface import BERT_DIM
from xmr.models import create_model
from xmr.models.vsepp import VSEPP

CAPTIONS = ["a dog runs on the beach", "two people", "a red circle on the left next to a blue square",
            "a man rides a bicycle down a very long and winding mountain road at dawn"]
COLOURS = ["red", "blue", "green", "yellow", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star"]


# --------------------------------------------------------------------------- without MiniLM


def test_bad_tail_depths_are_named():
    for bad in (-1, 7):
        with pytest.raises(ValueError, match=f"text_tail_layers={bad}"):
            VSEPP.inputs_for(text_input="bert", text_tail_layers=bad)
        with pytest.raises(ValueError, match=f"tail_layers={bad}"):
            text.bert_states(CAPTIONS, "unused", "dev", tail_layers=bad)
    with pytest.raises(ValueError, match="text_input='bert'"):
        VSEPP.inputs_for(text_input="words", text_tail_layers=1)


def test_the_model_declares_the_layer_it_reads():
    assert VSEPP.inputs_for(text_input="bert").bert_tail == 0
    assert VSEPP.inputs_for(text_input="bert", text_tail_layers=2).bert_tail == 2
    frozen = create_model("vsepp", vocab_size=10, image_dim=8, text_input="bert")
    assert frozen.text_tail is None and frozen.inputs.bert_tail == 0
    assert not any("text_tail" in name for name, _ in frozen.named_parameters())
    assert len(frozen.param_groups()) == 1


# --------------------------------------------------------------------------- with MiniLM


@pytest.mark.slow
def test_layer_cache_is_apart_from_the_final_one_and_reused(tmp_path, monkeypatch):
    final, final_mask = text.bert_states(CAPTIONS, tmp_path, "dev", max_len=16, progress=False)
    final_file = tmp_path / "dev_bert.npy"
    # The final-layer cache keeps its name and content key, so caches made before the tail are reused.
    assert json.loads(key_file(final_file).read_text())["key"] == content_key("bert", BERT_DIM, 16, CAPTIONS)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    states, mask = text.bert_states(CAPTIONS, tmp_path, "dev", max_len=16, progress=False, tail_layers=1)
    assert (tmp_path / "dev_bert_l5.npy").is_file() and (tmp_path / "dev_bert_l5_mask.npy").is_file()
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir() if p.name in before} == before
    assert states.shape == final.shape and states.dtype == np.float16
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(final_mask))
    assert not np.allclose(np.asarray(states, np.float32), np.asarray(final, np.float32), atol=0.1)
    layer_key = json.loads(key_file(tmp_path / "dev_bert_l5.npy").read_text())["key"]
    assert layer_key != content_key("bert", BERT_DIM, 16, CAPTIONS)

    def no_model():
        raise AssertionError("a cached layer was computed again")

    monkeypatch.setattr(text, "load_bert", no_model)
    again, _ = text.bert_states(CAPTIONS, tmp_path, "dev", max_len=16, progress=False, tail_layers=1)
    assert isinstance(again, np.memmap)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(states))
    text.bert_states(CAPTIONS, tmp_path, "dev", max_len=16, progress=False)  # the final layer's, still reused


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2])
def test_pretrained_tail_reproduces_the_final_states(tmp_path, k):
    """At MiniLM's weights the tail maps the cached layer-(6-k) states to the cached final states,
    padding positions included, up to their fp16 storage."""
    from xmr.models.text_tail import TextTail

    final, mask = text.bert_states(CAPTIONS, tmp_path, "dev", max_len=24, progress=False)
    lower, _ = text.bert_states(CAPTIONS, tmp_path, "dev", max_len=24, progress=False, tail_layers=k)
    tail = TextTail(k).eval()
    assert len(tail.layers) == k
    with torch.no_grad():
        out = tail(torch.from_numpy(np.array(lower)), torch.from_numpy(np.array(mask)))
    assert out.dtype == torch.float32 and out.shape == (len(CAPTIONS), 24, BERT_DIM)
    torch.testing.assert_close(out, torch.from_numpy(np.asarray(final, np.float32)), rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="tail_layers=0"):
        TextTail(0)


def _data(tmp_path) -> str:
    """A precomputed-feature set whose captions name an image's colour and shape (16-d features
    that encode both), so a few epochs learn something."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    root.mkdir()
    for split, n in (("train", 16), ("dev", 8)):
        colour, shape = rng.integers(len(COLOURS), size=n), rng.integers(len(SHAPES), size=n)
        feats = np.zeros((n, 16), np.float32)
        feats[np.arange(n), colour] = 1.0
        feats[np.arange(n), 8 + shape] = 1.0
        feats += 0.05 * rng.normal(size=feats.shape).astype(np.float32)
        np.save(root / f"{split}_ims.npy", feats)
        caps = [f"{opener} {COLOURS[c]} {SHAPES[s]}{tail}" for c, s in zip(colour, shape)
                for opener, tail in (("a", ""), ("there is a", ""), ("one", " here"), ("a single", " shape"),
                                     ("we see a", ""))]
        (root / f"{split}_caps.txt").write_text("".join(c + "\n" for c in caps), encoding="utf-8")
    return f"precomputed:{root}"


def _config(data, tmp_path, out, **overrides):
    from xmr.train import TrainConfig

    return TrainConfig(model="vsepp", preset="tiny", data=data, out=str(tmp_path / out), cache=str(tmp_path / "cache"),
                       progress=False, overrides={"text_input": "bert", "epochs": 1, "batch_size": 16,
                                                  "warmup_epochs": 0, **overrides})


@pytest.mark.slow
def test_tail_trains_at_its_own_rate_and_only_with_the_option(tmp_path):
    from xmr.models.text_tail import TextTail
    from xmr.train import train

    data = _data(tmp_path)
    train(_config(data, tmp_path, "frozen"))
    assert not any("text_tail" in k for k in load_file(str(tmp_path / "frozen" / "best.safetensors")))
    train(_config(data, tmp_path, "tail", text_tail_layers=1, lr=1e-3))
    weights = load_file(str(tmp_path / "tail" / "last.safetensors"))
    pretrained = {f"model.text_tail.{k}": v for k, v in TextTail(1).state_dict().items()}
    assert pretrained and set(pretrained) <= set(weights)
    changed = [k for k, v in pretrained.items() if not torch.equal(weights[k], v)]
    assert len(changed) == len(pretrained), f"unchanged tail tensors: {set(pretrained) - set(changed)}"
    model = create_model("vsepp", vocab_size=10, image_dim=16, text_input="bert", text_tail_layers=1)
    groups = model.build_optimizers(model.stages[0], {"lr": 1e-3, "weight_decay": 0.0, "optimizer": "adam"})[0].param_groups
    tail_ids = {id(p) for p in model.text_tail.parameters()}
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]  # text_tail_lr_scale 0.1 by default
    assert {id(p) for p in groups[1]["params"]} == tail_ids
    assert not tail_ids & {id(p) for p in groups[0]["params"]}


@pytest.mark.slow
def test_tail_run_starts_from_a_frozen_state_run_and_resumes(tmp_path):
    """init_from a run without the tail: the tail keeps MiniLM's weights, every other tensor comes
    from that run, and the two embed the dev captions alike; the tail run then resumes."""
    from xmr.eval.evaluate import encoded_batches
    from xmr.runs import open_run
    from xmr.train import train

    data = _data(tmp_path)
    train(_config(data, tmp_path, "frozen", lr=1e-3))
    train(_config(data, tmp_path, "ft", text_tail_layers=1, lr=0.0, init_from=str(tmp_path / "frozen")))
    a, b = load_file(str(tmp_path / "frozen" / "best.safetensors")), load_file(str(tmp_path / "ft" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("model."))
    frozen, ft = open_run(tmp_path / "frozen"), open_run(tmp_path / "ft")
    assert ft.model.inputs.bert_tail == 1
    emb = [torch.cat([r["emb"] for r in encoded_batches(run.model, run.data("dev", data, tmp_path / "cache",
                                                                                    progress=False), "captions")])
           for run in (frozen, ft)]
    cos = (emb[0] * emb[1]).sum(-1)
    assert cos.min() > 0.999, cos.min()
    train(_config(data, tmp_path, "ft", text_tail_layers=1, lr=1e-3, epochs=2), resume=True)
    rows = [json.loads(r) for r in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and np.isfinite(rows[-1]["train_loss"])

