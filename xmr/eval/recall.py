"""Ranking metrics of the image-sentence retrieval protocol (VSE++'s ``i2t``/``t2i``).

Ranks are 0-based. Image->text: an image's rank is the best rank among its ground-truth
captions. Text->image: a caption's rank is the rank of its image.

Tie rule (pinned): pessimistic. Every non-ground-truth item whose score *equals* the ground
truth's counts as ranked above it. Without ties this is exactly the VSE++ reference; with ties
it stays well defined (argsort-based reference code depends on sort stability, and a collapsed
model that scores everything equal would otherwise get R@1 = 100; here it gets R@1 = 0).

Non-finite scores (pinned): a NaN or +-inf score ranks *last*. It is treated as -inf before any
comparison, so a NaN ground truth is outranked by every other item (ties with other non-finite
scores count against it, by the tie rule) and a NaN non-ground-truth item never outranks a finite
ground truth. A model whose weights are NaN gets R@K = 0, never 100 (``>=`` is false for NaN).
"""
from __future__ import annotations

import numpy as np
import torch

RECALL_KS = (1, 5, 10)


def finite_or_last(scores: torch.Tensor) -> torch.Tensor:
    """``scores`` with every non-finite value (NaN, +-inf) replaced by -inf: it ranks last."""
    if scores.is_floating_point():
        return scores.masked_fill(~torch.isfinite(scores), float("-inf"))
    return scores


def gt_ranks(scores: torch.Tensor, is_gt: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's best ground truth: how many non-ground-truth items score >= it."""
    scores = finite_or_last(scores)
    best = scores.masked_fill(~is_gt, float("-inf")).amax(1, keepdim=True)
    return ((scores >= best) & ~is_gt).sum(1)


def i2t_ranks(scores: torch.Tensor, caption_image: torch.Tensor, image_offset: int = 0) -> torch.Tensor:
    """Ranks (Ni,) of images ``image_offset + arange(Ni)`` given their scores (Ni, Nt) to all captions."""
    image_ids = torch.arange(image_offset, image_offset + scores.size(0), device=scores.device)
    return gt_ranks(scores, caption_image.view(1, -1) == image_ids.view(-1, 1))


def t2i_counts(scores: torch.Tensor, gt_scores: torch.Tensor, caption_image: torch.Tensor,
               image_offset: int = 0) -> torch.Tensor:
    """For each caption, how many of the images in this row block outscore (or tie) its image.

    Summed over all row blocks this is the text->image rank; ``gt_scores`` (Nt,) are the scores
    of each caption with its own image.
    """
    scores, gt_scores = finite_or_last(scores), finite_or_last(gt_scores)
    ni = scores.size(0)
    image_ids = torch.arange(image_offset, image_offset + ni, device=scores.device)
    not_gt = caption_image.view(1, -1) != image_ids.view(-1, 1)
    return ((scores >= gt_scores.view(1, -1)) & not_gt).sum(0)


def ranks_from_scores(scores: torch.Tensor | np.ndarray,
                      caption_image: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both directions' 0-based ranks from a full (Ni, Nt) score matrix."""
    scores = torch.as_tensor(scores)
    caption_image = torch.as_tensor(caption_image, dtype=torch.long)
    gt = scores[caption_image, torch.arange(scores.size(1))]
    return (i2t_ranks(scores, caption_image).numpy(),
            t2i_counts(scores, gt, caption_image).numpy())


def recall_summary(ranks: np.ndarray, ks: tuple[int, ...] = RECALL_KS) -> dict[str, float]:
    """R@K (percent), median and mean rank (1-based, VSE++'s ``floor(median) + 1``).

    R@K is computed as the reference does, ``100.0 * count / n`` (not ``100 * mean``), so the
    floats are the reference's own (47.1, not 47.099999999999994).
    """
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no queries to rank (empty split)")
    out = {f"r{k}": 100.0 * int(np.count_nonzero(ranks < k)) / len(ranks) for k in ks}
    out["medr"] = float(np.floor(np.median(ranks)) + 1)
    out["meanr"] = float(ranks.mean() + 1)
    return out


def summarize(i2t: np.ndarray, t2i: np.ndarray) -> dict:
    """Both directions plus rsum (sum of the six recalls) and mR (their mean, as ACMM reports)."""
    a, b = recall_summary(i2t), recall_summary(t2i)
    recalls = [a[f"r{k}"] for k in RECALL_KS] + [b[f"r{k}"] for k in RECALL_KS]
    return {"i2t": a, "t2i": b, "rsum": float(sum(recalls)), "mR": float(np.mean(recalls)),
            "n_images": int(len(i2t)), "n_captions": int(len(t2i))}


def mean_over_folds(results: list[dict]) -> dict:
    """COCO 1K: the mean of *each* metric over the folds (not a metric of mean ranks)."""
    def avg(values):
        return float(np.mean(values))

    out = {d: {m: avg([r[d][m] for r in results]) for m in results[0][d]} for d in ("i2t", "t2i")}
    out["rsum"] = avg([r["rsum"] for r in results])
    out["mR"] = avg([r["mR"] for r in results])
    out["n_images"], out["n_captions"] = results[0]["n_images"], results[0]["n_captions"]
    out["folds"] = len(results)
    return out
