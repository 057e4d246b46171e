"""The packed GRU / LSTM of ``xmr.models.rnn`` against ``nn.GRU`` / ``nn.LSTM`` on the same packed
batch, forward + backward, at the shapes of each model's ``cpu`` preset (issue 24, goal 5: is the
hand-written backward faster at every model's shapes, or only at VSE++'s?).

The two implementations are timed in alternating order within one process, ``--repeats`` times
``--steps`` steps each, so drift of the machine hits both alike; a row gives each side's median
ms per step, the ratio of the medians (nn / xmr: above 1 means xmr's is faster) and the range of
the per-repeat ratios. Caption lengths are the word counts of Flickr8k training captions (plus
``extra`` tokens, e.g. MiniLM's [CLS] and [SEP]), cut to the preset's maximum length.

    .venv/bin/python benchmarks/rnn_throughput.py --out results/rnn-throughput.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from xmr.machine import machine_info
from xmr.models.rnn import packed_gru, packed_lstm

# name: (cell, input dim, hidden, batch, max length, extra tokens) of each preset's recurrent layer
SPECS = {
    "vsepp:cpu-bert (BiGRU on MiniLM states)": ("gru", 384, 512, 128, 32, 2),
    "acmm:cpu (BiGRU on word vectors)": ("gru", 300, 256, 64, 32, 0),
    "acmm:cpu at batch 128": ("gru", 300, 256, 128, 32, 0),
    "jgcar:cpu (BiLSTM on phrases)": ("lstm", 256, 256, 128, 15, 0),
}


def caption_lengths(data: str) -> np.ndarray:
    from xmr.data import open_split

    return np.array([len(c.split()) for c in open_split(data, "train").captions])


def timed(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return 1e3 * (time.perf_counter() - start) / steps


def measure(spec: tuple, pool: np.ndarray, steps: int, repeats: int, seed: int) -> dict:
    cell, dim, hidden, batch, max_len, extra = spec
    gen = torch.Generator().manual_seed(seed)
    rnn = (nn.GRU if cell == "gru" else nn.LSTM)(dim, hidden, batch_first=True, bidirectional=True)
    lengths = torch.as_tensor(np.minimum(np.random.default_rng(seed).choice(pool, batch) + extra, max_len))
    x = torch.randn(batch, int(lengths.max()), dim, generator=gen, requires_grad=True)
    ours = packed_gru if cell == "gru" else packed_lstm

    def step(run):
        def go():
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, _ = run(packed)
            out.data.square().sum().backward()
            rnn.zero_grad(set_to_none=True)
            x.grad = None
        return go

    impls = {"xmr": step(lambda p: ours(rnn, p)), "nn": step(rnn)}
    for go in impls.values():  # warm-up
        timed(go, 2)
    ms = {name: [] for name in impls}
    for r in range(repeats):
        for name in (("xmr", "nn") if r % 2 == 0 else ("nn", "xmr")):
            ms[name].append(timed(impls[name], steps))
    ratios = [n / o for n, o in zip(ms["nn"], ms["xmr"])]
    return {"cell": cell, "input_dim": dim, "hidden": hidden, "batch": batch, "max_len": max_len,
            "mean_length": float(lengths.float().mean()), "xmr_ms": statistics.median(ms["xmr"]),
            "nn_ms": statistics.median(ms["nn"]),
            "ratio": statistics.median(ms["nn"]) / statistics.median(ms["xmr"]),
            "ratio_range": [min(ratios), max(ratios)], "repeats": repeats, "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="flickr8k", help="the captions whose lengths are drawn")
    ap.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("results/rnn-throughput.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pool = caption_lengths(args.data)
    rows = {}
    for name, spec in SPECS.items():
        rows[name] = measure(spec, pool, args.steps, args.repeats, seed=0)
        r = rows[name]
        print(f"{name:45s} xmr {r['xmr_ms']:7.1f} ms  nn {r['nn_ms']:7.1f} ms  ratio {r['ratio']:.2f} "
              f"({r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f})", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine_info(), "threads": args.threads, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
