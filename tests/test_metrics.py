"""The retrieval protocol: ranks (pessimistic ties), R@K / medr / meanr, folds, and the VSE++ reference."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from xmr.data.base import Split
from xmr.data.pairs import PairData
from xmr.data.text import Vocab
from xmr.eval import evaluate as ev
from xmr.eval.recall import mean_over_folds, ranks_from_scores, recall_summary, summarize
from xmr.models.base import RetrievalModel


VSEPP_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "vsepp-protocol"
K = 5  # captions per image


# --------------------------------------------------------------------------------------------
# Brute-force reference of the protocol, written as plainly as possible.
# --------------------------------------------------------------------------------------------
def reference_ranks(scores: np.ndarray, caption_image: np.ndarray) -> tuple[list[int], list[int]]:
    """0-based ranks with the pessimistic tie rule, by explicit loops.

    Image->text: for each image, for each of its captions, the caption's rank is the number of
    *other* (non-ground-truth) captions scoring >= it; the image's rank is the best (smallest)
    of those. Text->image: for each caption, the number of other images scoring >= its own
    image (ties count against it).
    """
    n_images, n_captions = scores.shape
    i2t = []
    for i in range(n_images):
        best = None
        for j in range(n_captions):
            if caption_image[j] != i:
                continue  # only this image's own captions are candidates
            rank = 0
            for other in range(n_captions):
                if caption_image[other] != i and scores[i, other] >= scores[i, j]:
                    rank += 1
            if best is None or rank < best:
                best = rank
        i2t.append(best)
    t2i = []
    for j in range(n_captions):
        own = caption_image[j]
        rank = 0
        for i in range(n_images):
            if i != own and scores[i, j] >= scores[own, j]:
                rank += 1
        t2i.append(rank)
    return i2t, t2i


def _caption_image(n_images: int) -> np.ndarray:
    return np.arange(n_images * K) // K


# --------------------------------------------------------------------------------------------
# ranks_from_scores vs the loop reference
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_images", [1, 2, 3, 7, 16])
@pytest.mark.parametrize("kind", ["continuous", "few_values", "binary"])
def test_ranks_from_scores_matches_reference(n_images, kind):
    rng = np.random.default_rng(1000 * n_images + len(kind))
    shape = (n_images, n_images * K)
    if kind == "continuous":
        scores = rng.standard_normal(shape)
    elif kind == "few_values":  # many ties
        scores = rng.integers(0, 4, size=shape).astype(np.float64)
    else:  # extreme ties
        scores = rng.integers(0, 2, size=shape).astype(np.float32)
    cap_img = _caption_image(n_images)
    want_i2t, want_t2i = reference_ranks(scores, cap_img)
    got_i2t, got_t2i = ranks_from_scores(scores, cap_img)
    assert got_i2t.shape == (n_images,) and got_t2i.shape == (n_images * K,)
    np.testing.assert_array_equal(got_i2t, want_i2t)
    np.testing.assert_array_equal(got_t2i, want_t2i)
    # the same through torch tensors
    got_i2t, got_t2i = ranks_from_scores(torch.from_numpy(scores), torch.from_numpy(cap_img))
    np.testing.assert_array_equal(got_i2t, want_i2t)
    np.testing.assert_array_equal(got_t2i, want_t2i)


def test_ranks_from_scores_caption_order_is_free():
    """caption_image need not be sorted: ranks follow the captions wherever they sit."""
    rng = np.random.default_rng(7)
    n = 9
    cap_img = rng.permutation(_caption_image(n))
    scores = rng.integers(0, 5, size=(n, n * K)).astype(np.float64)
    want_i2t, want_t2i = reference_ranks(scores, cap_img)
    got_i2t, got_t2i = ranks_from_scores(scores, cap_img)
    np.testing.assert_array_equal(got_i2t, want_i2t)
    np.testing.assert_array_equal(got_t2i, want_t2i)


def test_ranks_hand_example():
    # 2 images, 10 captions; image 0 owns captions 0-4, image 1 owns 5-9.
    scores = np.array([
        [0.1, 0.9, 0.2, 0.0, 0.3, 0.95, 0.5, 0.9, 0.2, 0.0],
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.4, 0.6, 0.1, 0.2, 0.3],
    ])
    i2t, t2i = ranks_from_scores(scores, _caption_image(2))
    # image 0: best own caption 0.9; others >= 0.9: 0.95 and the tied 0.9 -> rank 2
    # image 1: best own caption 0.6; others >= 0.6: none -> rank 0
    assert i2t.tolist() == [2, 0]
    # caption j: 1 if the other image scores >= its own image, else 0
    # (caption 8 ties 0.2 vs 0.2 -> pessimistic 1; caption 6: 0.6 > 0.5 -> 0)
    assert t2i.tolist() == [1, 0, 1, 1, 1, 1, 0, 1, 1, 0]


@pytest.mark.parametrize("n_images", [1, 4, 13])
def test_collapsed_model_gets_worst_ranks(n_images):
    scores = np.full((n_images, n_images * K), 0.25)
    i2t, t2i = ranks_from_scores(scores, _caption_image(n_images))
    assert (i2t == n_images * K - K).all()
    assert (t2i == n_images - 1).all()
    res = summarize(i2t, t2i)
    if n_images > 1:
        assert res["i2t"]["r1"] == 0.0 and res["t2i"]["r1"] == 0.0
    assert res["i2t"]["meanr"] == n_images * K - K + 1
    assert res["t2i"]["meanr"] == n_images


# --------------------------------------------------------------------------------------------
# recall_summary / summarize / mean_over_folds against hand computation
# --------------------------------------------------------------------------------------------
def test_recall_summary_hand_values():
    ranks = np.array([0, 3, 7, 12, 0, 4])
    got = recall_summary(ranks)
    # <1: {0, 0} -> 2/6; <5: {0, 3, 0, 4} -> 4/6; <10: all but 12 -> 5/6
    assert got["r1"] == pytest.approx(100 * 2 / 6)
    assert got["r5"] == pytest.approx(100 * 4 / 6)
    assert got["r10"] == pytest.approx(100 * 5 / 6)
    # sorted 0 0 3 4 7 12: median 3.5 -> floor 3 -> +1 = 4
    assert got["medr"] == 4.0
    # mean 26/6 -> +1
    assert got["meanr"] == pytest.approx(26 / 6 + 1)
    assert set(got) == {"r1", "r5", "r10", "medr", "meanr"}


def test_recall_summary_odd_length_and_custom_ks():
    ranks = np.array([9, 1, 0, 20, 5])
    got = recall_summary(ranks, ks=(1, 2, 6))
    assert got["r1"] == pytest.approx(20.0)   # {0}
    assert got["r2"] == pytest.approx(40.0)   # {1, 0}
    assert got["r6"] == pytest.approx(60.0)   # {1, 0, 5}
    assert got["medr"] == 6.0                 # median 5 -> 6
    assert got["meanr"] == pytest.approx(35 / 5 + 1)


def test_summarize_hand_values():
    i2t = np.array([0, 1, 6, 30])           # r1 25, r5 50, r10 75, medr floor(3.5)+1=4, meanr 10.25
    t2i = np.array([0, 0, 2, 4, 5, 9, 10, 11])  # r1 25, r5 50, r10 75, medr floor(4.5)+1=5, meanr 6.125
    res = summarize(i2t, t2i)
    assert res["i2t"] == pytest.approx({"r1": 25.0, "r5": 50.0, "r10": 75.0, "medr": 4.0, "meanr": 10.25})
    assert res["t2i"] == pytest.approx({"r1": 25.0, "r5": 50.0, "r10": 75.0, "medr": 5.0, "meanr": 6.125})
    assert res["rsum"] == pytest.approx(2 * (25 + 50 + 75))
    assert res["mR"] == pytest.approx((25 + 50 + 75) / 3)
    assert res["n_images"] == 4 and res["n_captions"] == 8


def test_summarize_rsum_is_sum_of_six_distinct_recalls():
    i2t = np.array([0, 4, 9, 10, 11])        # 20, 40, 60
    t2i = np.array([0, 0, 0, 3, 3, 8, 20, 20, 20, 20])  # 30, 50, 60
    res = summarize(i2t, t2i)
    assert res["rsum"] == pytest.approx(20 + 40 + 60 + 30 + 50 + 60)
    assert res["mR"] == pytest.approx((20 + 40 + 60 + 30 + 50 + 60) / 6)


def _fold(r1a, medra, r1b, meanrb, rsum, mr):
    return {"i2t": {"r1": r1a, "medr": medra}, "t2i": {"r1": r1b, "meanr": meanrb},
            "rsum": rsum, "mR": mr, "n_images": 1000, "n_captions": 5000}


def test_mean_over_folds_averages_each_metric():
    folds = [_fold(10.0, 3.0, 20.0, 7.5, 100.0, 16.0),
             _fold(30.0, 4.0, 25.0, 9.0, 160.0, 26.0),
             _fold(50.0, 8.0, 60.0, 3.0, 220.0, 37.0)]
    out = mean_over_folds(folds)
    assert out["i2t"] == pytest.approx({"r1": 30.0, "medr": 5.0})
    assert out["t2i"] == pytest.approx({"r1": 35.0, "meanr": 6.5})
    assert out["rsum"] == pytest.approx(160.0)
    assert out["mR"] == pytest.approx(79 / 3)
    assert out["folds"] == 3
    assert out["n_images"] == 1000 and out["n_captions"] == 5000


def test_mean_over_folds_is_mean_of_metrics_not_metric_of_mean_ranks():
    # fold A medr = 1, fold B medr = 11: mean of medr is 6, not a medr of pooled ranks.
    a = summarize(np.array([0, 0, 0]), np.array([0] * 15))
    b = summarize(np.array([10, 10, 10]), np.array([10] * 15))
    out = mean_over_folds([a, b])
    assert out["i2t"]["medr"] == 6.0
    assert out["i2t"]["r1"] == 50.0 and out["t2i"]["r10"] == 50.0
    assert out["rsum"] == pytest.approx((a["rsum"] + b["rsum"]) / 2)


# --------------------------------------------------------------------------------------------
# A tiny embedding model through the model interface (default similarity = dot product)
# --------------------------------------------------------------------------------------------
class EmbModel(RetrievalModel):
    """Image emb = the feature; text emb = a fixed lookup of the caption's first token."""

    def __init__(self, table: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("table", table if table is not None else torch.zeros(1, 1))
        self.block_shapes: list[tuple[int, int]] = []

    def encode_images(self, batch):
        return {"emb": batch["image"]}

    def encode_texts(self, batch):
        return {"emb": self.table[batch["tokens"][:, 0]]}

    def similarity(self, img, txt):  # records the block shapes, then defers to the default
        out = super().similarity(img, txt)
        self.block_shapes.append(tuple(out.shape))
        return out


def test_emb_model_uses_default_similarity():
    m = EmbModel()
    a, b = torch.randn(3, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(m.similarity({"emb": a}, {"emb": b}), a @ b.T)
    assert m.block_shapes == [(3, 5)]


@pytest.mark.parametrize("image_chunk,caption_chunk", [(7, 33), (3, 4), (1000, 100000)])
def test_block_ranks_match_reference_with_ties(image_chunk, caption_chunk):
    """evaluate.ranks (bounded-memory blocks) equals the loop reference, ties and shuffled captions included."""
    rng = np.random.default_rng(image_chunk)
    n = 23
    img = torch.from_numpy(rng.integers(-1, 2, size=(n, 3)).astype(np.float64))  # integer dots: exact ties
    txt = torch.from_numpy(rng.integers(-1, 2, size=(n * K, 3)).astype(np.float64))
    cap_img = rng.permutation(_caption_image(n))
    scores = (img @ txt.T).numpy()
    want_i2t, want_t2i = reference_ranks(scores, cap_img)
    model = EmbModel()
    got_i2t, got_t2i = ev.ranks(model, {"emb": img}, {"emb": txt}, cap_img,
                                image_chunk=image_chunk, caption_chunk=caption_chunk)
    np.testing.assert_array_equal(got_i2t, want_i2t)
    np.testing.assert_array_equal(got_t2i, want_t2i)
    assert max(r for r, _ in model.block_shapes) <= image_chunk
    assert max(c for _, c in model.block_shapes) <= caption_chunk


# --------------------------------------------------------------------------------------------
# The VSE++ reference data
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vsepp():
    if not VSEPP_DIR.is_dir():
        pytest.skip(f"VSE++ protocol reference data not found at {VSEPP_DIR}")
    images = np.load(VSEPP_DIR / "images.npy")
    captions = np.load(VSEPP_DIR / "captions.npy")
    expected = json.loads((VSEPP_DIR / "expected.json").read_text())
    assert images.shape[0] * K == captions.shape[0]
    return images, captions, expected


def _check_against_vsepp(i2t, t2i, expected):
    np.testing.assert_array_equal(i2t, expected["i2t_ranks_0based"])
    np.testing.assert_array_equal(t2i, expected["t2i_ranks_0based"])
    res = summarize(i2t, t2i)
    for direction in ("i2t", "t2i"):
        for metric in ("r1", "r5", "r10", "medr", "meanr"):
            got, want = res[direction][metric], expected[direction][metric]
            assert math.isclose(got, want, rel_tol=0, abs_tol=1e-9), (direction, metric, got, want)
    want_recalls = [expected[d][f"r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
    assert res["rsum"] == pytest.approx(sum(want_recalls), abs=1e-9)
    assert res["mR"] == pytest.approx(sum(want_recalls) / 6, abs=1e-9)


def test_vsepp_reference_full_matrix(vsepp):
    images, captions, expected = vsepp
    scores = images @ captions.T
    i2t, t2i = ranks_from_scores(scores, _caption_image(len(images)))
    _check_against_vsepp(i2t, t2i, expected)


def test_vsepp_reference_through_model_blocks(vsepp):
    images, captions, expected = vsepp
    model = EmbModel()
    img = {"emb": torch.from_numpy(images).to(torch.float64)}
    txt = {"emb": torch.from_numpy(captions).to(torch.float64)}
    i2t, t2i = ev.ranks(model, img, txt, _caption_image(len(images)), image_chunk=7, caption_chunk=33)
    _check_against_vsepp(i2t, t2i, expected)
    # the block path was really used: no block larger than 7 x 33, and many of them
    assert max(r for r, _ in model.block_shapes) <= 7
    assert max(c for _, c in model.block_shapes) <= 33
    assert len(model.block_shapes) > 2 * math.ceil(len(images) / 7)


# --------------------------------------------------------------------------------------------
# evaluate(folds=5) == mean of the five separate fold evaluations
# --------------------------------------------------------------------------------------------
def _pair_data(name, features, caption_words, vocab):
    split = Split(name=name, image_ids=[f"img{i}" for i in range(len(features))],
                  captions=caption_words, features=features)
    return PairData(split, vocab)


@pytest.fixture(scope="module")
def fold_setup():
    rng = np.random.default_rng(3)
    n, d = 50, 6
    features = rng.standard_normal((n, d)).astype(np.float32)
    words = [f"cap{k}" for k in range(n * K)]
    vocab = Vocab.build(words)
    # caption k's embedding: its image's feature plus enough noise to give non-trivial ranks
    cap_emb = features[np.arange(n * K) // K] + 1.5 * rng.standard_normal((n * K, d)).astype(np.float32)
    table = torch.zeros(len(vocab), d)
    for k, w in enumerate(words):
        table[vocab.index[w]] = torch.from_numpy(cap_emb[k])
    model = EmbModel(table)
    return features, words, vocab, cap_emb, model


def test_evaluate_single_fold_matches_reference(fold_setup):
    features, words, vocab, cap_emb, model = fold_setup
    data = _pair_data("test", features, words, vocab)
    res = ev.evaluate(model, data, folds=1, image_chunk=9, caption_chunk=40)
    scores = features.astype(np.float64) @ cap_emb.astype(np.float64).T
    want_i2t, want_t2i = reference_ranks(scores, data.caption_image)
    assert res["ranks"]["i2t"] == want_i2t
    assert res["ranks"]["t2i"] == want_t2i
    want = summarize(np.array(want_i2t), np.array(want_t2i))
    for key in ("i2t", "t2i", "rsum", "mR", "n_images", "n_captions"):
        assert res[key] == pytest.approx(want[key])


def test_evaluate_five_folds_is_mean_of_separate_folds(fold_setup):
    features, words, vocab, _, model = fold_setup
    data = _pair_data("test", features, words, vocab)
    res = ev.evaluate(model, data, folds=5, image_chunk=4, caption_chunk=17)
    separate = []
    for f in range(5):
        sub = _pair_data(f"fold{f}", features[10 * f: 10 * (f + 1)], words[50 * f: 50 * (f + 1)], vocab)
        separate.append(ev.evaluate(model, sub, folds=1))
    assert res["folds"] == 5
    assert res["n_images"] == 10 and res["n_captions"] == 50
    for direction in ("i2t", "t2i"):
        for metric in ("r1", "r5", "r10", "medr", "meanr"):
            want = np.mean([s[direction][metric] for s in separate])
            assert res[direction][metric] == pytest.approx(want, abs=1e-9), (direction, metric)
    assert res["rsum"] == pytest.approx(np.mean([s["rsum"] for s in separate]), abs=1e-9)
    assert res["mR"] == pytest.approx(np.mean([s["mR"] for s in separate]), abs=1e-9)
    assert len(res["per_fold"]) == 5
    for got, want in zip(res["per_fold"], separate):
        for key in ("i2t", "t2i", "rsum", "mR", "n_images", "n_captions"):
            assert got[key] == pytest.approx(want[key], abs=1e-9), key
    # folds restrict the candidates: the 5-fold result is not the whole-set result
    whole = ev.evaluate(model, data, folds=1)
    assert whole["n_images"] == 50
    assert whole["i2t"]["meanr"] > res["i2t"]["meanr"]


def test_evaluate_rejects_uneven_folds(fold_setup):
    features, words, vocab, _, model = fold_setup
    data = _pair_data("test", features, words, vocab)
    with pytest.raises(ValueError):
        ev.evaluate(model, data, folds=3)
