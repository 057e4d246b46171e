"""Two-step retrieval: a cheap first stage shortlists K candidates, a pairwise score re-ranks them.

This is xmr's one retriever: evaluation (``two_step_evaluate``, ``k_curve``, dev validation) and
search (``xmr.search.engine``, whose first stage is a faiss index) re-rank through ``rerank``.

JGCAR (Sec. 2.5) retrieves the top K = 100 by its global representation and re-ranks them by the
co-attentive score; the same scheme serves every pairwise model (ACMM, MMCA, JGCAR) with either the
model's own cheap part (``embed``) or any trained embedding model (e.g. VSE++) as the first stage.

The final list is the K candidates ordered by the pairwise score, then every other item in
first-stage order (a first stage with Euclidean embeddings, ``metric = "l2"``, is turned into an
exactly equivalent inner product by ``inner_product_form``). So a query whose ground truth is shortlisted gets its rank among the candidates
by the pairwise score, and one whose ground truth is not keeps its first-stage rank (which is >= K).
With K = all items the ranks equal exhaustive pairwise scoring. Ties follow the pessimistic rule of
``xmr.eval.recall``. Everything runs in query blocks: a block's first-stage scores against the
whole database, its top-K, and ``model.indexed_pair_similarity`` on the block's (query, candidate) pairs.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from xmr.data.pairs import PairData
from xmr.eval.evaluate import encode
from xmr.eval.recall import finite_or_last, gt_ranks, recall_summary, summarize
from xmr.models.base import Reps, RetrievalModel


@torch.no_grad()
def rerank(model: RetrievalModel, queries: Reps, items: Reps, q: torch.Tensor, cand: torch.Tensor,
           query_is_image: bool) -> torch.Tensor:
    """The model's pair score (B, K) of each query ``q[b]`` (a row of ``queries``) with its
    shortlisted items ``cand[b]`` (rows of ``items``), through ``indexed_pair_similarity`` so that a
    query's per-item work is done once, not K times."""
    k = cand.size(1)
    q_rows, c_rows = q.repeat_interleave(k), cand.reshape(-1)
    if query_is_image:
        fine = model.indexed_pair_similarity(queries, items, q_rows, c_rows)
    else:
        fine = model.indexed_pair_similarity(items, queries, c_rows, q_rows)
    return fine.view(len(q), k)


@torch.no_grad()
def rerank_direction(model: RetrievalModel, queries: Reps, items: Reps, q_emb: torch.Tensor,
                     i_emb: torch.Tensor, is_gt_fn, k: int, query_is_image: bool,
                     pair_budget: int = 4096, progress: bool = False) -> dict:
    """Two-step ranks of every query against all items, one direction.

    ``queries`` / ``items``: the model's encoded parts; ``q_emb`` / ``i_emb``: first-stage
    embeddings (rows aligned with them); ``is_gt_fn(q_idx) -> (B, N_items) bool`` marks each
    query's ground truth. Returns 0-based ranks, first-stage ranks and the seconds each stage took.
    """
    nq, ni = q_emb.size(0), i_emb.size(0)
    k = min(k, ni)
    block = max(1, pair_budget // k)
    ranks = torch.empty(nq, dtype=torch.long)
    first_ranks = torch.empty(nq, dtype=torch.long)
    t_first = t_rerank = 0.0
    for s in tqdm(range(0, nq, block), desc=f"re-rank top {k}", disable=not progress):
        q = torch.arange(s, min(nq, s + block))
        t0 = time.perf_counter()
        coarse = finite_or_last(q_emb[q] @ i_emb.T)  # (B, N_items); non-finite ranks last
        is_gt = is_gt_fn(q)
        first_ranks[q] = gt_ranks(coarse, is_gt)
        cand = coarse.topk(k, dim=1).indices  # (B, K)
        t1 = time.perf_counter()
        fine = rerank(model, queries, items, q, cand, query_is_image)
        cand_gt = is_gt.gather(1, cand)
        ranks[q] = torch.where(cand_gt.any(1), gt_ranks(fine, cand_gt), first_ranks[q])
        t_first += t1 - t0
        t_rerank += time.perf_counter() - t1
    return {"ranks": ranks.numpy(), "first_ranks": first_ranks.numpy(),
            "seconds": {"first_stage": t_first, "rerank": t_rerank}}


def inner_product_form(im_emb: torch.Tensor, tx_emb: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """First-stage vectors whose dot product ranks as the model's metric. For ``"l2"``:
    ``[a, -|a|²/2, 1] · [b, 1, -|b|²/2] = a·b - |a|²/2 - |b|²/2 = -|a - b|²/2``, in both directions."""
    if metric == "ip":
        return im_emb, tx_emb
    if metric != "l2":
        raise ValueError(f"unknown metric {metric!r}")
    ones_i, ones_t = im_emb.new_ones(len(im_emb), 1), tx_emb.new_ones(len(tx_emb), 1)
    return (torch.cat([im_emb, -im_emb.pow(2).sum(1, keepdim=True) / 2, ones_i], 1),
            torch.cat([tx_emb, ones_t, -tx_emb.pow(2).sum(1, keepdim=True) / 2], 1))


@torch.no_grad()
def two_step_evaluate(model: RetrievalModel, img: Reps, txt: Reps, caption_image: np.ndarray, k: int,
                      first_stage: tuple[torch.Tensor, torch.Tensor] | None = None,
                      pair_budget: int = 4096, progress: bool = False) -> dict:
    """R@K etc. of two-step retrieval over a split, both directions, with the first stage's own
    results, the ranks (``ranks``, ``first_stage.ranks``) and the time of each stage.

    ``first_stage``: (image embeddings, caption embeddings) of any model for the same images and
    captions (rows aligned with ``img`` / ``txt``); default the model's own ``embed``.
    """
    model.eval()
    im_emb, tx_emb = first_stage if first_stage is not None else (model.embed(img), model.embed(txt))
    if im_emb is None or tx_emb is None:
        raise ValueError(f"model {model.name!r} has no embedding for a first stage; pass first_stage")
    if first_stage is None:
        im_emb, tx_emb = inner_product_form(im_emb, tx_emb, model.metric)
    cap_img = torch.as_tensor(caption_image, dtype=torch.long)
    i2t = rerank_direction(model, img, txt, im_emb, tx_emb, lambda q: cap_img[None, :] == q[:, None],
                           k, True, pair_budget, progress)
    image_ids = torch.arange(im_emb.size(0))
    t2i = rerank_direction(model, txt, img, tx_emb, im_emb, lambda q: image_ids[None, :] == cap_img[q, None],
                           k, False, pair_budget, progress)
    out = summarize(i2t["ranks"], t2i["ranks"])
    for direction, r in (("i2t", i2t["ranks"]), ("t2i", t2i["ranks"])):  # JGCAR's Table 3
        out[direction].update({key: v for key, v in recall_summary(r, (20, 50, 100)).items()
                               if key.startswith("r")})
    out["first_stage"] = {k_: v for k_, v in summarize(i2t["first_ranks"], t2i["first_ranks"]).items()
                          if k_ in ("i2t", "t2i", "rsum", "mR")}
    out["k"] = int(k)
    out["ranks"] = {"i2t": i2t["ranks"], "t2i": t2i["ranks"]}
    out["first_stage"]["ranks"] = {"i2t": i2t["first_ranks"], "t2i": t2i["first_ranks"]}
    out["seconds"] = {part: i2t["seconds"][part] + t2i["seconds"][part] for part in ("first_stage", "rerank")}
    return out


def k_curve(model: RetrievalModel, data: PairData, ks: list[int],
            first_stage: tuple[torch.Tensor, torch.Tensor] | None = None, progress: bool = False) -> list[dict]:
    """Two-step results (without per-query ranks) for each shortlist size K, encoding once."""
    img, txt = encode(model, data, progress=progress)
    out = []
    for k in ks:
        res = two_step_evaluate(model, img, txt, data.caption_image, k, first_stage, progress=progress)
        res.pop("ranks")
        res["first_stage"].pop("ranks")
        out.append(res)
    return out


def first_stage_embeddings(run: str | Path, data: str, split: str, cache: Path,
                           like: PairData) -> tuple[torch.Tensor, torch.Tensor]:
    """Another trained model's embeddings of a split, as the first stage for ``like``'s model."""
    from xmr.runs import open_run

    trained = open_run(run)
    model, other = trained.model, trained.data(split, data, cache)
    if (other.n_images, other.n_captions) != (like.n_images, like.n_captions):
        raise ValueError(f"first stage {run} sees {other.n_images} images / {other.n_captions} captions, "
                         f"the model {like.n_images} / {like.n_captions}")
    img, txt = encode(model, other)
    im_emb, tx_emb = model.embed(img), model.embed(txt)
    if im_emb is None or tx_emb is None:
        raise ValueError(f"{run}: model {model.name!r} has no embedding to serve as a first stage")
    return inner_product_form(im_emb, tx_emb, model.metric)


def plot_k_curve(rows: list[dict], exhaustive: dict | None, path: Path, title: str = "") -> None:
    """R@1 both ways and re-ranking time against K, with the exhaustive result as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    for d, label, colour in (("i2t", "image→text", "C0"), ("t2i", "text→image", "C1")):
        ax[0].plot(ks, [r[d]["r1"] for r in rows], marker="o", color=colour, label=f"{label} two-step")
        if exhaustive:
            ax[0].axhline(exhaustive[d]["r1"], color=colour, ls="--", lw=1, label=f"{label} exhaustive")
    ax[0].set(xscale="log", xlabel="shortlist size K", ylabel="R@1 (%)", title=title or "two-step R@1")
    ax[0].legend(fontsize=7)
    ax[1].plot(ks, [r["seconds"]["first_stage"] + r["seconds"]["rerank"] for r in rows], marker="o",
               label="two-step")
    if exhaustive:
        scoring = exhaustive["seconds"]["total"] - exhaustive["seconds"]["encode"]
        ax[1].axhline(scoring, color="k", ls="--", lw=1, label="exhaustive")
    ax[1].set(xscale="log", yscale="log", xlabel="shortlist size K", ylabel="seconds", title="scoring time")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
