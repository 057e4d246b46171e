"""faiss IVF-PQ at the scale of docs/search-scale.md, measured small on one thread: training, adding
and searching throughput, recall@10 against exact search, and a two-shard index searched with merged
top-k (one trained quantizer and codebook, half the vectors in each shard) against the one index.

Vectors are synthetic, as in benchmarks/search_index.py: unit-norm 512-d points around 1,000
Gaussian centres with per-dimension noise as large as the centres. The index is
``IVF<nlist>,PQ<m>x8`` under inner product, trained on ``--train-per-list`` points per list; each
cost is reported per unit of the work it scales with (training: point x list x iteration; adding:
vector x list for the coarse assignment plus the PQ encoding; search: probed code), so that
docs/search-scale.md can extrapolate it linearly. Writes results/ivfpq-scale.json.
    .venv/bin/python benchmarks/ivfpq_scale.py [--n 200000 --nlists 256 1024]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from xmr.machine import machine_info


def clustered(n: int, rng: np.random.Generator, centres: np.ndarray, noise: float) -> np.ndarray:
    x = centres[rng.integers(len(centres), size=n)] + noise * rng.standard_normal((n, centres.shape[1]),
                                                                                 dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def merged_topk(results: list[tuple[np.ndarray, np.ndarray]], k: int) -> np.ndarray:
    """The ``k`` best ids (largest scores) over every shard's (scores, ids), per query."""
    scores = np.concatenate([s for s, _ in results], axis=1)
    ids = np.concatenate([i for _, i in results], axis=1)
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, best, axis=1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth)]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--nlists", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--m", type=int, default=64, help="PQ sub-quantizers (bytes per vector at 8 bits)")
    p.add_argument("--train-per-list", type=int, default=39, help="faiss's minimum is 39")
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--out", default="results/ivfpq-scale.json")
    args = p.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, args.dim), dtype=np.float32)
    base = clustered(args.n, rng, centres, args.noise)
    queries = clustered(args.queries, rng, centres, args.noise)
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(base)
    t0 = time.perf_counter()
    _, truth = flat.search(queries, args.k)
    exact_s = time.perf_counter() - t0
    del flat
    rows = []
    for nlist in args.nlists:
        index = faiss.index_factory(args.dim, f"IVF{nlist},PQ{args.m}x8", faiss.METRIC_INNER_PRODUCT)
        n_train = min(args.n, args.train_per_list * nlist)
        # faiss's k-means runs a fixed number of iterations, so training scales with points x lists.
        iterations = faiss.extract_index_ivf(index).cp.niter
        t0 = time.perf_counter()
        index.train(base[rng.choice(args.n, n_train, replace=False)])
        train_s = time.perf_counter() - t0
        trained = faiss.serialize_index(index)  # the empty trained index every shard starts from
        t0 = time.perf_counter()
        index.add(base)
        add_s = time.perf_counter() - t0
        faiss.extract_index_ivf(index).nprobe = args.nprobe
        t0 = time.perf_counter()
        for q in queries:  # one at a time, as a search server sends them
            index.search(q[None], args.k)
        search_s = time.perf_counter() - t0
        _, found = index.search(queries, args.k)
        # Two shards from the one trained index, half the vectors each (ids kept global), merged top-k.
        shards = []
        for part in np.array_split(np.arange(args.n), 2):
            shard = faiss.deserialize_index(trained)
            shard.add_with_ids(base[part], part.astype(np.int64))
            faiss.extract_index_ivf(shard).nprobe = args.nprobe
            shards.append(shard)
        merged = merged_topk([s.search(queries, args.k) for s in shards], args.k)
        row = {"index": f"IVF{nlist},PQ{args.m}x8", "vectors": args.n, "dim": args.dim, "nlist": nlist,
               "train_points": n_train, "kmeans_iterations": iterations, "train_s": train_s,
               "train_ns_per_point_list_iter": 1e9 * train_s / (n_train * nlist * iterations),
               "add_s": add_s, "add_vectors_per_s": args.n / add_s,
               "add_ns_per_vector_list": 1e9 * add_s / (args.n * nlist),
               "nprobe": args.nprobe, "search_ms_per_query": 1e3 * search_s / args.queries,
               "search_ns_per_probed_code": 1e9 * search_s / (args.queries * args.n * args.nprobe / nlist),
               "recall_at_10_vs_exact": recall(found, truth),
               "two_shards_merged_equal_one_index": float(np.mean(merged == found)),
               "bytes_per_vector_codes_and_id": args.m + 8}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del index, shards
    command = (f"python benchmarks/ivfpq_scale.py --n {args.n} --dim {args.dim} --m {args.m} --nlists "
               + " ".join(map(str, args.nlists)))
    out = {"command": command, "machine": {**machine_info(), "faiss_threads": 1, "faiss": faiss.__version__},
           "exact_search_ms_per_query_batched": 1e3 * exact_s / args.queries, "results": rows}
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
