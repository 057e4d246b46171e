"""Text -> images end to end over a 1M-image index, one client: the latency a user waits for, query
encoding included, the recall of the approximate index against exact search, and its memory.

The path timed is ``Searcher.search_text`` of an index built by ``xmr index build`` with the
shipped model (MiniLM on the default text runtime, the model's text head, the faiss index kind that
``choose_kind`` picks for the size, hits as the server returns them), with the index's image side
grown to ``--n`` vectors. There are no 1M photos here, so the vectors beyond the index's real
image embeddings are synthetic: each a random convex mixture (Dirichlet(1, 1, 1) weights) of three
real ones plus Gaussian noise (``--noise`` per dimension), l2-normalised, so they spread between
the real images rather than around a few centres. Queries: Flickr8k test captions, sent one after
another. Recall@10: the approximate index's top 10 against an exact (flat) search over the same
vectors; for an IVF index at the default ``nprobe`` and at each of ``--nprobe``. Writes
results/search-scale.json.

    .venv/bin/xmr index build pretrained --data flickr8k --split train --out runs/f8k-train-index
    .venv/bin/python benchmarks/search_scale.py runs/f8k-train-index [--n 1000000 --queries 1000]
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from xmr.data import open_split
from xmr.machine import machine_info
from xmr.search.engine import Searcher
from xmr.search.index import choose_kind, make_faiss


def grown(real: np.ndarray, n: int, noise: float, rng: np.random.Generator, chunk: int = 100_000) -> np.ndarray:
    """``real`` (m, d) unit vectors followed by n - m synthetic ones (module docstring), float32."""
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    out[: len(real)] = real
    for s in range(len(real), n, chunk):
        e = min(n, s + chunk)
        w = rng.dirichlet(np.ones(3), size=e - s).astype(np.float32)
        picks = real[rng.integers(len(real), size=(e - s, 3))]  # (c, 3, d)
        x = np.einsum("cj,cjd->cd", w, picks) + noise * rng.standard_normal((e - s, real.shape[1]), dtype=np.float32)
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("index", help="an index folder built by xmr index build (its images are the real vectors)")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--noise", type=float, default=0.02)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--nprobe", type=int, nargs="*", default=[32, 64],
                   help="IVF lists probed, besides the index's default (the first row)")
    p.add_argument("--out", default="results/search-scale.json")
    args = p.parse_args()
    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    searcher = Searcher(args.index)
    searcher.warm_up()
    small = searcher.indexes["images"]
    real = small.reconstruct_n(0, small.ntotal)
    vectors = grown(real, args.n, args.noise, np.random.default_rng(0))
    kind = choose_kind(args.n)
    t0 = time.perf_counter()
    index = make_faiss(vectors, kind)
    build_s = time.perf_counter() - t0
    searcher.indexes["images"] = index
    searcher.items["image_ids"] = searcher.items["image_ids"] + [f"synthetic-{i}" for i in range(len(real), args.n)]

    captions = open_split("flickr8k", "test").captions[:: max(1, 5000 // args.queries)][: args.queries]
    # Exact top k of the same query vectors, batched (the reference, not a timed path).
    with torch.no_grad():
        emb = searcher.model.embed(searcher.model.encode_texts(searcher.text_batch(captions))).float().numpy()
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(np.ascontiguousarray(emb), args.k)
    del exact

    default_probe = getattr(index, "nprobe", None)
    rows = []
    for nprobe in ([default_probe] + [p for p in args.nprobe if p != default_probe]) if default_probe else [None]:
        if nprobe:
            index.nprobe = nprobe
        for q in captions[:20]:  # warm caches and the runtime's first calls
            searcher.search_text(q, args.k)
        times, found = [], []
        for q in captions:
            t = time.perf_counter()
            hits = searcher.search_text(q, args.k)
            times.append(time.perf_counter() - t)
            found.append([h.image_index for h in hits])
        times = np.asarray(times)
        recall = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(found, truth.tolist())]))
        rows.append({"nprobe": nprobe, "default": nprobe == default_probe,
                     "p50_ms": 1e3 * float(np.percentile(times, 50)), "p99_ms": 1e3 * float(np.percentile(times, 99)),
                     "mean_ms": 1e3 * float(times.mean()), f"recall_at_{args.k}_vs_exact": recall})
        print(json.dumps(rows[-1]), flush=True)
    index_bytes = int(faiss.serialize_index(index).nbytes)
    result = {"vectors": args.n, "real_vectors": int(len(real)), "dim": int(vectors.shape[1]), "kind": kind,
              "nlist": getattr(index, "nlist", None), "build_s": build_s, "queries": len(captions), "k": args.k,
              "index_bytes": index_bytes, "index_bytes_per_vector": index_bytes / args.n,
              "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
              "text_runtime": searcher.text_runtime, "model_run": searcher.meta["run"], "rows": rows}
    command = (f"python benchmarks/search_scale.py {args.index} --n {args.n} --queries {args.queries} "
               f"--noise {args.noise:g} --threads {args.threads} --nprobe {' '.join(map(str, args.nprobe))}")
    Path(args.out).write_text(json.dumps({"command": command, "machine": machine_info(), "result": result}, indent=1))


if __name__ == "__main__":
    main()
