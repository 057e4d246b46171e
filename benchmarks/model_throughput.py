"""Training and scoring throughput of each model preset on Flickr8k features, this machine.

Training: forward + backward + clipping + optimiser step on ``--batches`` real training batches (after one warm-up
batch), reported as samples/s and, for pairwise models, in-batch pairs/s (B x B per batch: MMCA
scores all of them, JGCAR's bi-rank loss B (1 + 2 M') of them).
Scoring: ``model.similarity`` of ``--images`` test images against all 5,000 test captions in the
model's own ``score_block`` chunks, reported as pairs/s. Writes results/model-throughput.json.
The data path (building a batch from the feature caches) is timed apart from the step; then
``--batches`` more batches run through xmr's own training loop (``xmr.train.train_epoch``: data path,
step and logging as a training run has them), reported as ``loop_samples_per_s``. With
``--profile N``, N more steps run under the PyTorch profiler and each row gets the operators that
take the most CPU time (ms per step and share of the profiled time): where a step spends its time.
    .venv/bin/python benchmarks/model_throughput.py --models vsepp:cpu-bert mmca:cpu mmca:cpu,d=64
With ``--baseline REF``, each spec is measured twice, each time in a fresh process: with this
checkout's xmr and with xmr as of git commit REF (extracted beside the checkout), in alternating
order, and the row gives both and their ratio (the old path and the new side by side).
A spec is ``model:preset`` with an optional ``@extractor`` and ``,key=value`` model or recipe
overrides, e.g. ``jgcar:cpu@efficientnet-lite2-260`` (the extractor its runs use).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xmr.data import open_split
from xmr.data.text import Vocab
from xmr.eval.evaluate import encode, score_rows, take
from xmr.features.store import pair_data
from xmr.machine import machine_info
from xmr.models import get_entry
from xmr.train import EpochSums, TrainConfig, build, train_epoch


def parse_spec(spec: str) -> TrainConfig:
    head, *pairs = spec.split(",")
    head, _, extractor = head.partition("@")
    model, preset = head.split(":")
    overrides = {k: json.loads(v) for k, v in (p.split("=", 1) for p in pairs)}
    return TrainConfig(model=model, preset=preset, data="flickr8k", overrides=overrides, progress=False,
                       **({"extractor": extractor} if extractor else {}))


def top_operators(prof, steps: int, n: int = 12) -> list[dict]:
    """The ``n`` operators with the most self CPU time in a profile of ``steps`` training steps."""
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "ms_per_step": e.self_cpu_time_total / 1e3 / steps, "share": e.self_cpu_time_total / total,
             "calls_per_step": e.count / steps} for e in events[:n]]


class _First:
    """The first ``n`` training batches of ``data``: a batch source for ``train_epoch``."""

    def __init__(self, data, n: int):
        self.data, self.n = data, n

    def n_train_batches(self, batch_size: int) -> int:
        return self.n

    def train_batches(self, batch_size: int, rng: np.random.Generator):
        return itertools.islice(self.data.train_batches(batch_size, rng), self.n)


def measure(cfg: TrainConfig, batches: int, n_images: int, profile_steps: int = 0) -> dict:
    model_kw, recipe = cfg.resolved()
    inputs = get_entry(cfg.model).cls.inputs_for(**model_kw)
    vocab = Vocab.build(open_split(cfg.data, "train").captions, recipe["min_word_count"])
    data = {s: pair_data(cfg.data, s, inputs, vocab, recipe["max_len"], cfg.extractor, progress=False)
            for s in ("train", "test")}
    torch.manual_seed(0)
    model, _ = build(cfg, vocab, data["train"], word_vectors=False)
    optimizers = model.build_optimizers(model.stages[0], recipe)
    bs = recipe["batch_size"]
    it = data["train"].train_batches(bs, np.random.default_rng(0))
    model.train()

    def step(batch: dict) -> None:
        loss = model.loss(model.encode_images(batch), model.encode_texts(batch), batch)["loss"]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        if recipe["grad_clip"]:  # as xmr.train does
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
        for opt in optimizers:
            opt.step()

    times, data_times = [], []
    for i in range(batches + 1):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        step(batch)
        if i:  # the first batch warms up allocators and kernels
            times.append(time.perf_counter() - t1)
            data_times.append(t1 - t0)
    train_s = float(np.sum(times))
    loop = train_epoch(model, model.stages[0], _First(data["train"], batches), optimizers, model, recipe,
                       np.random.default_rng(1), EpochSums(), "loop", False, None)
    operators = []
    if profile_steps:
        from torch.profiler import ProfilerActivity, profile

        todo = [next(it) for _ in range(profile_steps)]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for batch in todo:
                step(batch)
        operators = top_operators(prof, profile_steps)
    model.eval()
    test = data["test"].head(n_images) if n_images else data["test"]
    with torch.no_grad():
        t0 = time.perf_counter()
        img, _ = encode(model, test)
        _, txt = encode(model, data["test"])
        encode_s = time.perf_counter() - t0
        image_chunk, caption_chunk = model.score_block
        t0 = time.perf_counter()
        for s in range(0, test.n_images, image_chunk):
            score_rows(model, take(img, slice(s, s + image_chunk)), txt, caption_chunk)
        score_s = time.perf_counter() - t0
    pairs = test.n_images * data["test"].n_captions
    return {"model": cfg.model, "preset": cfg.preset, "extractor": cfg.extractor, "overrides": cfg.overrides,
            "batch_size": bs, "step_ms": 1e3 * train_s / batches, "data_ms": 1e3 * float(np.mean(data_times)),
            "params_M": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
            "train_samples_per_s": batches * bs / train_s, "loop_samples_per_s": batches * bs / loop.seconds,
            "train_pairs_per_s": batches * bs * bs / train_s if model.pairwise else None,
            "train_epoch_min_est": data["train"].n_captions / (batches * bs / train_s) / 60,
            "score_images": test.n_images, "score_captions": data["test"].n_captions,
            "encode_s": encode_s, "score_pairs_per_s": pairs / score_s,
            "full_test_score_min_est": 1000 * data["test"].n_captions / (pairs / score_s) / 60,
            **({"top_operators": operators} if operators else {})}


def extract(ref: str) -> Path:
    """The ``xmr`` package as of git commit ``ref``, extracted once beside this checkout (xmr finds
    ``shared/`` from where its package lies) as ``../xmr-baseline-SHA/``."""
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], check=True,
                         capture_output=True, text=True).stdout.strip()
    root = Path(__file__).resolve().parents[2] / f"xmr-baseline-{sha[:12]}"
    if not (root / "xmr").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha, "xmr"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root


def measure_in(package_root: Path, spec: str, args: argparse.Namespace) -> dict:
    """One spec measured by this script in a fresh process that imports xmr from ``package_root``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, __file__, "--models", spec, "--batches", str(args.batches), "--images",
               str(args.images), "--threads", str(args.threads), "--profile", str(args.profile), "--out", str(out)]
        env = {**os.environ, "PYTHONPATH": str(package_root.resolve())}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())["results"][0]


def side_by_side(spec: str, baseline: Path, args: argparse.Namespace, first_new: bool) -> dict:
    here = Path(__file__).resolve().parents[1]
    runs = [("new", here), ("baseline", baseline)]
    rows = {name: measure_in(root, spec, args) for name, root in (runs if first_new else runs[::-1])}
    return {"spec": spec, **rows,
            "train_ratio": rows["new"]["train_samples_per_s"] / rows["baseline"]["train_samples_per_s"],
            "loop_ratio": rows["new"]["loop_samples_per_s"] / rows["baseline"]["loop_samples_per_s"],
            "score_ratio": rows["new"]["score_pairs_per_s"] / rows["baseline"]["score_pairs_per_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vsepp:cpu-bert", "mmca:cpu"])
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--images", type=int, default=32, help="test images scored against all test captions")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", type=int, default=0, metavar="N", help="profile N more training steps")
    p.add_argument("--baseline", metavar="REF", help="also measure every spec with xmr as of git commit REF")
    p.add_argument("--out", default="results/model-throughput.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    baseline = extract(args.baseline) if args.baseline else None
    rows = []
    for i, spec in enumerate(args.models):
        if baseline is None:
            rows.append(measure(parse_spec(spec), args.batches, args.images, args.profile))
        else:
            rows.append(side_by_side(spec, baseline, args, first_new=i % 2 == 0))
        print(json.dumps(rows[-1]), flush=True)
    command = " ".join(["python benchmarks/model_throughput.py --models", *args.models,
                        *(["--batches", str(args.batches)] if args.batches != 5 else []),
                        *(["--profile", str(args.profile)] if args.profile else []),
                        *(["--baseline", args.baseline] if args.baseline else [])])
    Path(args.out).write_text(json.dumps({"command": command, "machine": machine_info(),
                                          **({"baseline": baseline.name} if baseline else {}),
                                          "results": rows}, indent=1))


if __name__ == "__main__":
    main()
