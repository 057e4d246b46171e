"""Non-finite scores and losses are never a result: NaN/inf scores rank last, a NaN/inf training
loss stops training with a clear error, a dev epoch with non-finite values is never ``best``; and
recalls are the reference's own floats (47.1, not 47.099999999999994)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xmr.eval.recall import ranks_from_scores, recall_summary, summarize
from xmr.errors import TrainingError

from bad_input_data import tiny_train_args, write_precomputed

K = 5


def _caption_image(n):
    return np.repeat(np.arange(n), K)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_all_non_finite_scores_rank_last(bad):
    scores = np.full((12, 60), bad)
    i2t, t2i = ranks_from_scores(scores, _caption_image(12))
    res = summarize(i2t, t2i)
    assert res["rsum"] == 0.0 and res["mR"] == 0.0  # not 600
    assert (i2t == 60 - K).all() and (t2i == 11).all()


def test_a_nan_ground_truth_ranks_below_every_finite_score():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4, 20))
    scores[0, :K] = np.nan  # image 0's captions all NaN
    scores[1, 7] = np.inf   # a non-ground-truth +inf: ranks last too, never above image 1's own
    i2t, t2i = ranks_from_scores(scores, _caption_image(4))
    assert i2t[0] == 20 - K  # last
    assert (t2i[:K] == 3).all()
    ref = scores.copy()
    ref[1, 7] = -np.inf
    ref[0, :K] = -np.inf
    i2t_ref, t2i_ref = ranks_from_scores(ref, _caption_image(4))
    np.testing.assert_array_equal(i2t, i2t_ref)
    np.testing.assert_array_equal(t2i, t2i_ref)


def test_nan_scores_rank_last_in_blocked_evaluation_too():
    from xmr.eval import evaluate as ev

    class Emb(torch.nn.Module):
        score_block = (3, 7)

        def similarity(self, img, txt):
            return img["e"] @ txt["e"].T

    img = {"e": torch.randn(6, 4)}
    img["e"][2] = float("nan")
    txt = {"e": torch.randn(30, 4)}
    i2t, t2i = ev.ranks(Emb(), img, txt, _caption_image(6), image_chunk=4, caption_chunk=7)
    assert i2t[2] == 30 - K and (t2i[10:15] == 5).all()
    assert ev.non_finite_count(img) == 4


def test_recalls_are_the_reference_floats():
    # 471 of 1000 ranks below 5: the reference prints 100.0 * 471 / 1000 = 47.1
    ranks = np.array([0] * 471 + [9] * 529)
    assert recall_summary(ranks)["r5"] == 47.1
    assert repr(100.0 * np.mean(ranks < 5)) != "47.1"  # the old formula's float
    with pytest.raises(ValueError, match="empty split"):
        recall_summary(np.array([], dtype=int))


def test_nan_loss_stops_training_and_nan_dev_is_never_best(tmp_path, monkeypatch, capsys):
    from xmr import train as train_mod
    from xmr.cli import main
    from xmr.models.base import RetrievalModel

    data = "precomputed:" + str(write_precomputed(tmp_path / "d"))
    real = RetrievalModel.stage_loss  # what the one loop calls for every batch

    def nan_loss(*a, **kw):
        parts = real(*a, **kw)
        return {**parts, "loss": parts["loss"] * float("nan")}

    monkeypatch.setattr(RetrievalModel, "stage_loss", nan_loss)
    with pytest.raises(TrainingError, match=r"training loss is nan at epoch 1/1, step 1"):
        train_mod.train(train_mod.TrainConfig(model="vsepp", data=data, out=str(tmp_path / "r0"),
                                              cache=str(tmp_path / "c"), progress=False,
                                              overrides={"epochs": 1, "batch_size": 8, "word_vectors": "none"}))
    assert main(tiny_train_args(data, tmp_path / "r1", tmp_path / "c")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training loss is nan" in err and "Traceback" not in err
    monkeypatch.setattr(RetrievalModel, "stage_loss", real)

    real_validate = train_mod.PairTask.validate

    def nan_dev(*a, **kw):
        return {**real_validate(*a, **kw), "non_finite": 3}

    monkeypatch.setattr(train_mod.PairTask, "validate", nan_dev)
    assert main(tiny_train_args(data, tmp_path / "r2", tmp_path / "c")) == 0
    assert "not kept as best" in capsys.readouterr().out
    assert not (tmp_path / "r2" / "best.json").exists() and (tmp_path / "r2" / "last.json").is_file()
    assert json.loads((tmp_path / "r2" / "last.json").read_text())["best"] == {}  # no best epoch yet
