"""Evaluation from embeddings: xmr's bounded-memory ranking against its previous path, a
straightforward per-query NumPy argsort implementation of the same protocol, and the machine's
dense matmul bound.

For 1K x 5K (Flickr/COCO 1K) and 5K x 25K (COCO 5K) random 1024-d unit embeddings (5 captions per
image): seconds for xmr's ``ranks`` (each block reduced to counts as it is scored), for the
previous path (``previous_ranks``: rows of image blocks concatenated from caption slices, then
masked passes over them), for the per-query argsort reference (full score matrix, one
``argsort`` per query, as the VSE++ code does), the matmul alone at the measured GFLOP/s, and the
process's peak RSS after xmr's evaluation (before the others allocate). Ranks of all
implementations must agree.
Writes results/eval-protocol.json.
    .venv/bin/python benchmarks/eval_protocol.py
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from xmr.eval.evaluate import ranks, score_rows, take
from xmr.eval.recall import i2t_ranks, t2i_counts
from xmr.machine import machine_info
from xmr.models.base import RetrievalModel


class Embeddings(RetrievalModel):
    """Precomputed embeddings behind the model interface (similarity = dot product)."""


@torch.no_grad()
def previous_ranks(model, img, txt, caption_image, image_chunk=256, caption_chunk=8192):
    """xmr's evaluation before 2026-12-01, kept here to be measured against: each image block's
    full row of scores is concatenated from caption slices, then reduced by masked passes."""
    cap_img = torch.as_tensor(caption_image, dtype=torch.long)
    ni, nt = next(iter(img.values())).size(0), cap_img.numel()
    order = torch.argsort(cap_img, stable=True)
    gt = torch.empty(nt)
    for s in range(0, ni, image_chunk):
        e = min(ni, s + image_chunk)
        cols = order[(cap_img[order] >= s) & (cap_img[order] < e)]
        block = score_rows(model, take(img, slice(s, e)), take(txt, cols), caption_chunk)
        gt[cols] = block[cap_img[cols] - s, torch.arange(cols.numel())]
    i2t, t2i = torch.empty(ni, dtype=torch.long), torch.zeros(nt, dtype=torch.long)
    for s in range(0, ni, image_chunk):
        e = min(ni, s + image_chunk)
        block = score_rows(model, take(img, slice(s, e)), txt, caption_chunk)
        i2t[s:e] = i2t_ranks(block, cap_img, s)
        t2i += t2i_counts(block, gt, cap_img, s)
    return i2t.numpy(), t2i.numpy()


def reference_ranks(im: np.ndarray, tx: np.ndarray, cap_img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The VSE++ evaluation loop: per query, argsort its scores and find the ground truth."""
    d = im @ tx.T
    i2t = np.empty(len(im), dtype=np.int64)
    for i in range(len(im)):
        order = np.argsort(d[i])[::-1]
        i2t[i] = np.where(np.isin(order, np.flatnonzero(cap_img == i)))[0].min()
    t2i = np.empty(len(tx), dtype=np.int64)
    for j in range(len(tx)):
        order = np.argsort(d[:, j])[::-1]
        t2i[j] = np.where(order == cap_img[j])[0][0]
    return i2t, t2i


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000], help="numbers of images")
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="results/eval-protocol.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    a = torch.randn(4096, 4096)
    torch.mm(a, a)
    t0 = time.perf_counter()
    for _ in range(5):
        torch.mm(a, a)
    gflops = 5 * 2 * 4096 ** 3 / (time.perf_counter() - t0) / 1e9
    del a
    rows = []
    for n in args.sizes:
        im = rng.standard_normal((n, args.dim), dtype=np.float32)
        tx = np.repeat(im, 5, axis=0) + 1.5 * rng.standard_normal((5 * n, args.dim), dtype=np.float32)
        im /= np.linalg.norm(im, axis=1, keepdims=True)
        tx /= np.linalg.norm(tx, axis=1, keepdims=True)
        cap_img = np.repeat(np.arange(n), 5)
        model = Embeddings()
        rss_before = peak_rss_mb()
        t0 = time.perf_counter()
        ours = ranks(model, {"emb": torch.from_numpy(im)}, {"emb": torch.from_numpy(tx)}, cap_img)
        t_xmr = time.perf_counter() - t0
        rss = peak_rss_mb()
        t0 = time.perf_counter()
        prev = previous_ranks(model, {"emb": torch.from_numpy(im)}, {"emb": torch.from_numpy(tx)}, cap_img)
        t_prev = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = reference_ranks(im, tx, cap_img)
        t_ref = time.perf_counter() - t0
        assert all(np.array_equal(x, y) and np.array_equal(x, z) for x, y, z in zip(ours, ref, prev)), \
            "implementations disagree"
        flops = 2 * n * 5 * n * args.dim
        bound = flops / (gflops * 1e9)
        rows.append({"images": n, "captions": 5 * n, "dim": args.dim, "xmr_s": t_xmr, "previous_xmr_s": t_prev,
                     "reference_argsort_s": t_ref, "speedup": t_ref / t_xmr, "matmul_bound_s": bound,
                     "xmr_over_bound": t_xmr / bound, "previous_over_bound": t_prev / bound,
                     "peak_rss_mb_before": rss_before, "peak_rss_mb_after_xmr": rss, "score_matrix_mb": 4 * n * 5 * n / 2 ** 20})
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(json.dumps({"command": "python benchmarks/eval_protocol.py", "machine": machine_info(),
                                          "matmul_gflops": gflops, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
