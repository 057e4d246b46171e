"""Where faiss PQ codebook training spends its time: ``ProductQuantizer.train`` for PQ<m>x8 on n
points against m separate 256-centroid k-means on the d/m-dimensional sub-vectors (what PQ
training is), and one coarse k-means of ``--nlist`` centroids on the full vectors, each on one
thread. Writes results/pq-train-probe.json (docs/search-scale.md extrapolates from it).
    .venv/bin/python benchmarks/pq_train_probe.py [--n 10000 --dim 512 --m 64 --nlist 256]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np

from xmr.machine import machine_info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--m", type=int, default=64)
    p.add_argument("--nlist", type=int, default=256)
    p.add_argument("--out", default="results/pq-train-probe.json")
    args = p.parse_args()
    faiss.omp_set_num_threads(1)
    x = np.random.default_rng(0).standard_normal((args.n, args.dim)).astype(np.float32)
    sub, niter = args.dim // args.m, 25  # faiss's default k-means iterations
    t0 = time.perf_counter()
    for j in range(args.m):
        faiss.Kmeans(sub, 256, niter=niter, seed=j).train(np.ascontiguousarray(x[:, j * sub:(j + 1) * sub]))
    t_sub = time.perf_counter() - t0
    pq = faiss.ProductQuantizer(args.dim, args.m, 8)
    t0 = time.perf_counter()
    pq.train(x)
    t_pq = time.perf_counter() - t0
    t0 = time.perf_counter()
    faiss.Kmeans(args.dim, args.nlist, niter=niter, seed=0).train(x)
    t_coarse = time.perf_counter() - t0
    flop = lambda d, k: 2 * args.n * k * d * niter  # noqa: E731 (distance computations of one k-means)
    result = {"command": f"python benchmarks/pq_train_probe.py --n {args.n} --dim {args.dim} --m {args.m} "
                         f"--nlist {args.nlist}", "machine": {**machine_info(), "faiss": faiss.__version__},
              "points": args.n, "dim": args.dim, "m": args.m, "kmeans_iterations": niter,
              "pq_train_s": t_pq, "separate_sub_kmeans_s": t_sub,
              "sub_kmeans_gflops": args.m * flop(sub, 256) / t_sub / 1e9,
              "coarse_nlist": args.nlist, "coarse_kmeans_s": t_coarse,
              "coarse_kmeans_gflops": flop(args.dim, args.nlist) / t_coarse / 1e9}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
