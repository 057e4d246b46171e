"""Evaluation through the model interface: encode once, score in bounded blocks, rank.

Memory is bounded by the block size: the (Ni, Nt) score matrix is never held whole; each block
of ``image_chunk`` images x ``caption_chunk`` captions (what bounds a pairwise model's work) is
scored and reduced to rank counts at once. Both directions' counts need the ground-truth scores
first (each caption's with its own image, each image's best); they come from a cheap pass over
the diagonal blocks (an image chunk against its own captions).
"""
from __future__ import annotations

import time
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from xmr.data.pairs import PairData
from xmr.eval.recall import finite_or_last, mean_over_folds, summarize
from xmr.models.base import Reps, RetrievalModel


def _cat(parts: list[Reps]) -> Reps:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def take(reps: Reps, idx) -> Reps:
    return {k: v[idx] for k, v in reps.items()}


@torch.no_grad()
def encoded_batches(model: RetrievalModel, data: PairData, side: str, batch_size: int = 256,
                    progress: bool = False) -> Iterator[Reps]:
    """The per-item parts of every image (``side="images"``) or caption (``"captions"``) of
    ``data``, one batch of ``batch_size`` items at a time, in order."""
    if side not in ("images", "captions"):
        raise ValueError(f"side must be images or captions, not {side!r}")
    n = data.n_images if side == "images" else data.n_captions
    for s in tqdm(range(0, n, batch_size), desc=f"encode {side}", disable=not progress):
        idx = np.arange(s, min(n, s + batch_size))
        yield model.encode_images(data.image_batch(idx)) if side == "images" else \
            model.encode_texts(data.text_batch(idx))


def encode(model: RetrievalModel, data: PairData, batch_size: int = 256,
           progress: bool = False) -> tuple[Reps, Reps]:
    """Every image's and caption's per-item parts, computed once."""
    model.eval()
    return tuple(_cat(list(encoded_batches(model, data, side, batch_size, progress)))
                 for side in ("images", "captions"))


@torch.no_grad()
def score_rows(model: RetrievalModel, img: Reps, txt: Reps, caption_chunk: int) -> torch.Tensor:
    """Scores of a few images against all captions, built from caption slices."""
    n = next(iter(txt.values())).size(0)
    return torch.cat([model.similarity(img, take(txt, slice(s, s + caption_chunk)))
                      for s in range(0, n, caption_chunk)], dim=1)


# Images per diagonal block: a block of b images scores b x (their captions) pairs to read only
# their own ones, so small blocks keep that pass at a few percent of the full one.
DIAGONAL_BLOCK = 16


@torch.no_grad()
def ranks(model: RetrievalModel, img: Reps, txt: Reps, caption_image: np.ndarray,
          image_chunk: int | None = None, caption_chunk: int | None = None,
          progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """0-based image->text and text->image ranks of every query, in bounded memory.

    Each (``image_chunk`` images x ``caption_chunk`` captions) block is reduced to counts as soon as
    it is scored, while it is still in cache: per image, the captions scoring at least its best
    ground truth; per caption, the images scoring at least its own image. The ground-truth pairs
    among those are then taken off, read from the same block, so the counts are of the other
    items only (the pessimistic tie rule of ``xmr.eval.recall``) even if a score computed twice
    differs in its last bit. Block sizes default to the model's ``score_block``.
    """
    model.eval()
    image_chunk = image_chunk or model.score_block[0]
    caption_chunk = caption_chunk or model.score_block[1]
    cap_img = torch.as_tensor(caption_image, dtype=torch.long)
    ni, nt = next(iter(img.values())).size(0), cap_img.numel()
    order = torch.argsort(cap_img, stable=True)
    gt = None  # each caption's score with its own image, in the model's score dtype (no false ties)
    diag = min(image_chunk, DIAGONAL_BLOCK)
    for s in range(0, ni, diag):  # diagonal blocks: each caption with its own image
        e = min(ni, s + diag)
        cols = order[(cap_img[order] >= s) & (cap_img[order] < e)]
        block = score_rows(model, take(img, slice(s, e)), take(txt, cols), caption_chunk)
        if gt is None:
            gt = torch.empty(nt, dtype=block.dtype)
        gt[cols] = block[cap_img[cols] - s, torch.arange(cols.numel())]
    gt = finite_or_last(gt)
    best = torch.full((ni,), float("-inf"), dtype=gt.dtype).scatter_reduce(0, cap_img, gt, "amax")
    i2t = torch.zeros(ni, dtype=torch.long)
    t2i = torch.zeros(nt, dtype=torch.long)
    bar = tqdm(total=ni * nt, desc="score pairs", unit="pair", unit_scale=True, disable=not progress)
    for s in range(0, ni, image_chunk):
        e = min(ni, s + image_chunk)
        im = take(img, slice(s, e))
        for c in range(0, nt, caption_chunk):
            d = min(nt, c + caption_chunk)
            block = model.similarity(im, take(txt, slice(c, d)))
            if not torch.isfinite(block).all():
                block = finite_or_last(block)
            i2t[s:e] += (block >= best[s:e, None]).sum(1)
            t2i[c:d] += (block >= gt[None, c:d]).sum(0)
            own = cap_img[c:d]
            gt_cols = torch.nonzero((own >= s) & (own < e)).squeeze(1)  # ground-truth pairs in the block
            pair = block[own[gt_cols] - s, gt_cols]
            i2t.index_add_(0, own[gt_cols], -(pair >= best[own[gt_cols]]).long())
            t2i.index_add_(0, c + gt_cols, -(pair >= gt[c + gt_cols]).long())
        bar.update((e - s) * nt)
    bar.close()
    return i2t.numpy(), t2i.numpy()


def evaluate(model: RetrievalModel, data: PairData, folds: int = 1, progress: bool = False,
             image_chunk: int | None = None, caption_chunk: int | None = None) -> dict:
    """R@1/5/10, medr, meanr both ways, rsum, mR on the whole split (``folds=1``, e.g. Flickr 1K
    test or COCO 5K) or as the mean over ``folds`` equal image folds (COCO 1K: ``folds=5``)."""
    check_folds(data.n_images, folds)
    t0 = time.perf_counter()
    img, txt = encode(model, data, progress=progress)
    t_encode = time.perf_counter() - t0
    if data.n_images % folds:
        raise ValueError(f"{data.n_images} images do not split into {folds} equal folds")
    size = data.n_images // folds
    per_fold = []
    for f in range(folds):
        lo, hi = f * size, (f + 1) * size
        cols = np.flatnonzero((data.caption_image >= lo) & (data.caption_image < hi))
        r_i2t, r_t2i = ranks(model, take(img, slice(lo, hi)), take(txt, torch.as_tensor(cols)),
                             data.caption_image[cols] - lo, image_chunk, caption_chunk, progress)
        res = summarize(r_i2t, r_t2i)
        res["ranks"] = {"i2t": r_i2t.tolist(), "t2i": r_t2i.tolist()}
        per_fold.append(res)
    out = per_fold[0] if folds == 1 else mean_over_folds(per_fold)
    if folds > 1:
        out["per_fold"] = [{k: v for k, v in r.items() if k != "ranks"} for r in per_fold]
    out["seconds"] = {"encode": t_encode, "total": time.perf_counter() - t0}
    bad = non_finite_count(img) + non_finite_count(txt)
    if bad:  # ranked last (xmr.eval.recall), and reported: such a result is never a model's best
        out["non_finite"] = bad
        import sys

        print(f"warning: {bad} non-finite (NaN/inf) values in the encoded images/captions; their "
              "scores rank last", file=sys.stderr)
    return out


def check_folds(n_images: int, folds: int) -> None:
    """A clear error for a fold count that cannot split ``n_images`` (0, negative, too many)."""
    if not isinstance(folds, int) or folds < 1:
        raise ValueError(f"--folds {folds}: need a whole number >= 1 (5 for COCO 1K)")
    if n_images == 0:
        raise ValueError("the split has no images to evaluate")
    if folds > n_images:
        raise ValueError(f"--folds {folds}: more folds than the split's {n_images} images")


def non_finite_count(reps: Reps) -> int:
    """How many NaN/inf values a model's encoded parts hold (floating tensors only)."""
    return int(sum((~torch.isfinite(v)).sum() for v in reps.values() if v.is_floating_point()))


def format_table(result: dict) -> str:
    """The R@K table a person reads."""
    a, b = result["i2t"], result["t2i"]
    head = f"{'':14s}{'R@1':>7s}{'R@5':>7s}{'R@10':>7s}{'medr':>7s}{'meanr':>8s}"
    rows = [f"{name:14s}{d['r1']:7.1f}{d['r5']:7.1f}{d['r10']:7.1f}{d['medr']:7.0f}{d['meanr']:8.1f}"
            for name, d in (("image->text", a), ("text->image", b))]
    tail = f"rsum {result['rsum']:.1f}   mR {result['mR']:.1f}   ({result['n_images']} images, " \
           f"{result['n_captions']} captions)"
    return "\n".join([head, *rows, tail])
