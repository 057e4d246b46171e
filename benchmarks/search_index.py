"""Search-index benchmark: build time, query latency p50/p99, queries/s and recall@10 of the
approximate index against exact search, for 10k, 100k and 1M vectors.

Vectors are synthetic (sizes matter here, not meaning): unit-norm 256-d points around 1,000
Gaussian cluster centres with per-dimension noise as large as the centres (``--noise 1``), so
clusters overlap as real embeddings do (well-separated clusters make every approximate index look
perfect; uniform random vectors make them all look bad). Queries are 1,000 further points from the
same distribution, sent one at a time as a search server does. Writes results/search-index.json.
    .venv/bin/python benchmarks/search_index.py [--sizes 10000 100000 1000000]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from xmr.machine import machine_info
from xmr.search.index import choose_kind, make_faiss


def clustered(n: int, d: int, rng: np.random.Generator, centres: np.ndarray, noise: float) -> np.ndarray:
    x = centres[rng.integers(len(centres), size=n)] + noise * rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def latency(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    times, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        _, idx = index.search(q[None], k)
        times.append(time.perf_counter() - t0)
        found.append(idx[0])
    return np.array(times), np.array(found)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--noise", type=float, default=1.0, help="per-dimension noise around the unit-variance centres")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="results/search-index.json")
    args = p.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, args.dim), dtype=np.float32)
    queries = clustered(args.queries, args.dim, rng, centres, args.noise)
    rows = []
    for n in args.sizes:
        base = clustered(n, args.dim, rng, centres, args.noise)
        exact_kind = "flat"
        approx_kind = choose_kind(n) if choose_kind(n) != "flat" else "hnsw"
        results = {}
        for kind in (exact_kind, approx_kind):
            t0 = time.perf_counter()
            index = make_faiss(base, kind)
            build = time.perf_counter() - t0
            times, found = latency(index, queries, args.k)
            results[kind] = found
            rows.append({"vectors": n, "dim": args.dim, "kind": kind, "auto_choice": choose_kind(n) == kind,
                         "build_s": build, "p50_ms": 1e3 * float(np.percentile(times, 50)),
                         "p99_ms": 1e3 * float(np.percentile(times, 99)), "queries_per_s": len(times) / times.sum()})
            del index
        hit = [len(set(a) & set(b)) / args.k for a, b in zip(results[approx_kind], results[exact_kind])]
        rows[-1]["recall_at_10_vs_exact"] = float(np.mean(hit))
        print(json.dumps(rows[-2]), json.dumps(rows[-1]), sep="\n", flush=True)
    command = f"python benchmarks/search_index.py --noise {args.noise:g} --sizes " + " ".join(map(str, args.sizes))
    Path(args.out).write_text(json.dumps({"command": command, "machine": machine_info(), "results": rows}, indent=1))


if __name__ == "__main__":
    main()
