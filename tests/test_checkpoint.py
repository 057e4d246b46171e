"""Checkpoints: safetensors + JSON round trip, and clear refusals."""
from __future__ import annotations

import json

import pytest
import torch

from xmr import checkpoint
from xmr.checkpoint import CheckpointError
from xmr.models import create_model


def small(**kw):
    return create_model("vsepp", vocab_size=20, image_dim=8, embed_dim=6, word_dim=4, **kw)


def test_round_trip_with_optimizer(tmp_path):
    torch.manual_seed(0)
    model = small()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = model.encode_images({"image": torch.randn(3, 8)})["emb"].sum()
    loss.backward()
    opt.step()
    checkpoint.save(tmp_path / "ck", model, {"model": "vsepp", "epoch": 3}, [opt])
    assert json.loads((tmp_path / "ck.json").read_text())["epoch"] == 3

    other = small()
    other_opt = torch.optim.Adam(other.parameters(), lr=1e-3)
    meta = checkpoint.load(tmp_path / "ck", other, [other_opt])
    assert meta["epoch"] == 3
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    sa, sb = opt.state_dict()["state"], other_opt.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for pid in sa:
        torch.testing.assert_close(sa[pid]["exp_avg"], sb[pid]["exp_avg"])


def test_refuses_other_shapes_models_and_formats(tmp_path):
    model = small()
    checkpoint.save(tmp_path / "ck", model, {"model": "vsepp"})
    with pytest.raises(CheckpointError, match="do not fit"):
        checkpoint.load(tmp_path / "ck", create_model("vsepp", vocab_size=20, image_dim=8, embed_dim=7,
                                                      word_dim=4))
    meta = json.loads((tmp_path / "ck.json").read_text())
    (tmp_path / "ck.json").write_text(json.dumps({**meta, "model": "mmca"}))
    with pytest.raises(CheckpointError, match="for model 'mmca'"):
        checkpoint.load(tmp_path / "ck", model)
    (tmp_path / "ck.json").write_text(json.dumps({**meta, "format": "something-else"}))
    with pytest.raises(CheckpointError, match="not an xmr checkpoint"):
        checkpoint.load(tmp_path / "ck", model)
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "missing", model)


def test_tensors_file_holds_no_pickle(tmp_path):
    checkpoint.save(tmp_path / "ck", small(), {"model": "vsepp"})
    raw = (tmp_path / "ck.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8: 8 + header_len])  # safetensors: a JSON header, then raw tensor bytes
    assert any(k.startswith("model.") for k in header)
    assert b"\x80\x04" not in raw[:8 + header_len]  # no pickle protocol marker in the header
