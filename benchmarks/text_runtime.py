"""MiniLM alone on the two text runtimes, as the search engine calls it on query sentences
(``bert_encode`` with ``padding="longest"``, ``max_len`` 50, the bundled model's): the
``BertModel`` on torch against its ONNX export on ONNX Runtime (every graph optimisation, the
same intra-op threads), batches of 1 and 8 queries. Reports the median and p90 milliseconds per
batch (tokenizer included) and the largest state difference. Writes results/text-runtime.json.

    .venv/bin/python benchmarks/text_runtime.py [--threads 1 --repeats 200]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xmr.features.text import bert_encode, load_encoder
from xmr.machine import machine_info

QUERIES = ["a dog runs on the beach", "two children play in the snow", "a man rides a bicycle",
           "a woman in a red dress", "people walk down a city street", "a black dog jumps over a log",
           "a boy swims in a pool", "a climber on a rock face"]  # benchmarks/serve_load.py's


def timed(fn, repeats: int) -> dict:
    for _ in range(10):  # warm-up: first-call allocations, ONNX Runtime's arena
        fn()
    ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--out", default="results/text-runtime.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        tokenizer, onnx = load_encoder("onnx", 0, folder)
        export_s = time.perf_counter() - t0
        _, bert = load_encoder("torch", 0)
        results = {}
        for batch in (1, 8):
            queries = QUERIES[:batch]
            row = {"tokens": int(tokenizer(queries, padding="longest", return_tensors="np")["input_ids"].shape[1])}
            for name, model in (("torch", bert), ("onnx", onnx)):
                row[name] = timed(lambda: bert_encode(queries, tokenizer, model, args.max_len, padding="longest"),
                                  args.repeats)
            want, mask = bert_encode(queries, tokenizer, bert, args.max_len, padding="longest")
            got, _ = bert_encode(queries, tokenizer, onnx, args.max_len, padding="longest")
            row["max_abs_diff_fp16"] = float(np.abs(got.astype(np.float32) - want.astype(np.float32))[mask].max())
            row["speedup"] = row["torch"]["median_ms"] / row["onnx"]["median_ms"]
            results[f"batch_{batch}"] = row
            print(batch, json.dumps(row))
    command = f"python benchmarks/text_runtime.py --threads {args.threads} --repeats {args.repeats} --max-len {args.max_len}"
    Path(args.out).write_text(json.dumps({"command": command, "machine": machine_info(),
                                          "export_and_load_seconds": export_s, "results": results}, indent=1))


if __name__ == "__main__":
    main()
