"""Profile of the slowest evaluation path, MMCA's two-step re-rank, before and after computing the
cross-attention's per-item parts once per distinct item (``MMCA.indexed_pair_similarity``).

Before: the shortlist's (query, candidate) rows are gathered, so each query's parts are recomputed
for every one of its K candidates (``RetrievalModel.indexed_pair_similarity``, the default). After:
MMCA's override. Both score the same pairs of a trained run's Flickr8k test shortlists (top K by
its own i0 . c0, both directions); the scores must agree. Repeats alternate the two so that load
from other processes falls on both; the median is reported, with torch.profiler's top operators of
one pass of each. Writes results/rerank-profile.json.
    .venv/bin/python benchmarks/rerank_profile.py [--run runs/mmca-f8k/full] [--queries 200] [--k 20]
The run comes from ``bash experiments/mmca_flickr8k.sh main``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from xmr.eval.evaluate import encode, take
from xmr.machine import machine_info
from xmr.models.base import RetrievalModel
from xmr.runs import open_run


def shortlist(model, img, txt, n_queries: int, k: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(image rows, caption rows) of the first n_queries queries' top-k pairs, each direction."""
    im, tx = model.embed(img), model.embed(txt)
    q = torch.arange(n_queries)
    i2t = (im[q] @ tx.T).topk(k, dim=1).indices
    t2i = (tx[q] @ im.T).topk(k, dim=1).indices
    return {"i2t": (q.repeat_interleave(k), i2t.reshape(-1)), "t2i": (t2i.reshape(-1), q.repeat_interleave(k))}


def top_ops(fn, n: int = 6) -> list[dict]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    return [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/mmca-f8k/full")
    p.add_argument("--queries", type=int, default=200, help="queries per direction")
    p.add_argument("--k", type=int, default=20, help="shortlist length")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="results/rerank-profile.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    trained = open_run(args.run)
    model, meta = trained.model, trained.meta
    if type(model).indexed_pair_similarity is RetrievalModel.indexed_pair_similarity:
        raise SystemExit(f"{meta['model']} has no indexed_pair_similarity of its own: nothing to compare")
    data = trained.data("test", progress=False)
    with torch.no_grad():
        img, txt = encode(model, data)
        pairs = shortlist(model, img, txt, args.queries, args.k)
        paths = {"before": lambda i, j: model.pair_similarity(take(img, i), take(txt, j)),
                 "after": lambda i, j: model.indexed_pair_similarity(img, txt, i, j)}
        result = {}
        for direction, (rows, cols) in pairs.items():
            scores = {name: fn(rows, cols) for name, fn in paths.items()}
            diff = float((scores["before"] - scores["after"]).abs().max())
            seconds = {name: [] for name in paths}
            for _ in range(args.repeats):
                for name, fn in paths.items():
                    t0 = time.perf_counter()
                    fn(rows, cols)
                    seconds[name].append(time.perf_counter() - t0)
            med = {name: float(np.median(s)) for name, s in seconds.items()}
            result[direction] = {
                "pairs": len(rows), "distinct_images": int(rows.unique().numel()),
                "distinct_captions": int(cols.unique().numel()), "max_abs_score_diff": diff,
                **{f"{name}_pairs_per_s": len(rows) / med[name] for name in paths},
                "speedup": med["before"] / med["after"], "seconds": seconds,
                "top_ops": {name: top_ops(lambda fn=fn: fn(rows, cols)) for name, fn in paths.items()}}
            print(direction, {k: v for k, v in result[direction].items() if k not in ("top_ops", "seconds")}, flush=True)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    Path(args.out).write_text(json.dumps({
        "command": f"python benchmarks/rerank_profile.py --run {args.run} --queries {args.queries} --k {args.k} "
                   f"--threads {args.threads}",
        "run": args.run, "model": meta["model"], "machine": machine_info(), "loadavg_at_end": load,
        "results": result}, indent=1))


if __name__ == "__main__":
    main()
