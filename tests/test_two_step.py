"""Two-step retrieval: K = all equals exhaustive scoring, shortlists behave as documented, and a
pairwise model's aligned-pair score equals its all-pairs score."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from test_mmca import batch, small_model
from xmr.eval.evaluate import ranks
from xmr.eval.recall import gt_ranks, ranks_from_scores
from xmr.eval.two_step import two_step_evaluate

N_IMG, PER_IMAGE = 6, 3


@pytest.fixture(scope="module")
def encoded():
    model = small_model(pair_chunk=7).eval()  # a chunk size that splits blocks unevenly
    lengths = [int(n) for n in np.random.default_rng(0).integers(1, 10, N_IMG * PER_IMAGE)]
    b = batch(N_IMG, lengths)
    with torch.no_grad():
        img, txt = model.encode_images(b), model.encode_texts(b)
    return model, img, txt, np.repeat(np.arange(N_IMG), PER_IMAGE)


def test_gt_ranks_is_pessimistic_about_ties():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1], [0.2, 0.2, 0.2, 0.2]])
    is_gt = torch.tensor([[True, False, False, True], [False, True, False, False]])
    assert gt_ranks(scores, is_gt).tolist() == [2, 3]


def test_pair_similarity_is_the_diagonal_of_similarity(encoded):
    model, img, txt, _ = encoded
    n_txt = N_IMG * PER_IMAGE
    rows, cols = torch.arange(N_IMG).repeat_interleave(n_txt), torch.arange(n_txt).repeat(N_IMG)
    with torch.no_grad():
        full = model.similarity(img, txt)
        aligned = model.pair_similarity({k: v[rows] for k, v in img.items()},
                                        {k: v[cols] for k, v in txt.items()})
    torch.testing.assert_close(aligned.view(N_IMG, n_txt), full, rtol=0, atol=1e-5)


def test_indexed_pair_similarity_equals_pair_similarity_on_gathered_rows(encoded):
    """MMCA computes each distinct item's cross-attention parts once; the scores must not change,
    with repeated and unordered indices (as in a shortlist) and chunks that split them unevenly."""
    model, img, txt, _ = encoded
    g = torch.Generator().manual_seed(4)
    rows = torch.randint(0, N_IMG, (40,), generator=g)
    cols = torch.randint(0, N_IMG * PER_IMAGE, (40,), generator=g)
    with torch.no_grad():
        gathered = model.pair_similarity({k: v[rows] for k, v in img.items()}, {k: v[cols] for k, v in txt.items()})
        indexed = model.indexed_pair_similarity(img, txt, rows, cols)
        default = super(type(model), model).indexed_pair_similarity(img, txt, rows, cols)
    torch.testing.assert_close(indexed, gathered, rtol=0, atol=1e-5)
    torch.testing.assert_close(default, gathered, rtol=0, atol=0)


@pytest.mark.parametrize("k", [N_IMG * PER_IMAGE, 1000])
def test_k_all_equals_exhaustive_ranking(encoded, k):
    model, img, txt, cap_img = encoded
    i2t, t2i = ranks(model, img, txt, cap_img)
    out = two_step_evaluate(model, img, txt, cap_img, k, pair_budget=10)
    np.testing.assert_array_equal(out["ranks"]["i2t"], i2t)
    np.testing.assert_array_equal(out["ranks"]["t2i"], t2i)


def test_short_list_reranks_candidates_and_keeps_first_stage_rank_otherwise(encoded):
    model, img, txt, cap_img = encoded
    k = 2
    out = two_step_evaluate(model, img, txt, cap_img, k, pair_budget=5)
    # The first stage is the model's own i0 . c0 score.
    first = ranks_from_scores(model.embed(img) @ model.embed(txt).T, cap_img)
    np.testing.assert_array_equal(out["first_stage"]["ranks"]["i2t"], first[0])
    np.testing.assert_array_equal(out["first_stage"]["ranks"]["t2i"], first[1])
    full = model.similarity(img, txt)
    for direction, fs_rank in (("i2t", first[0]), ("t2i", first[1])):
        two = out["ranks"][direction]
        missed = fs_rank >= k  # ground truth not shortlisted: first-stage rank, never inside the list
        np.testing.assert_array_equal(two[missed], fs_rank[missed])
        assert (two[~missed] < k).all()
    # A shortlisted text->image query is ordered by the full score among its K candidates.
    coarse = (model.embed(txt) @ model.embed(img).T)
    cand = coarse.topk(k, dim=1).indices
    for q in np.flatnonzero(first[1] < k):
        c = cand[q]
        s = full[c, q]
        gt = s[c == cap_img[q]]
        assert out["ranks"]["t2i"][q] == int((s[c != cap_img[q]] >= gt).sum())


def test_other_models_first_stage(encoded):
    model, img, txt, cap_img = encoded
    g = torch.Generator().manual_seed(5)
    im_emb, tx_emb = torch.randn(N_IMG, 8, generator=g), torch.randn(N_IMG * PER_IMAGE, 8, generator=g)
    out = two_step_evaluate(model, img, txt, cap_img, 3, first_stage=(im_emb, tx_emb))
    first = ranks_from_scores(im_emb @ tx_emb.T, cap_img)
    np.testing.assert_array_equal(out["first_stage"]["ranks"]["i2t"], first[0])
    assert out["k"] == 3 and out["seconds"]["rerank"] > 0


def test_euclidean_first_stage_becomes_an_exact_inner_product():
    from xmr.eval.two_step import inner_product_form

    g = torch.Generator().manual_seed(0)
    im, tx = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(9, 4, generator=g, dtype=torch.float64)
    a, b = inner_product_form(im, tx, "l2")
    torch.testing.assert_close(a @ b.T, -torch.cdist(im, tx).pow(2) / 2)
    assert inner_product_form(im, tx, "ip")[0] is im
