"""Training and scoring throughput of each model preset on Flickr8k features, this machine.

Training: forward + backward + Adam step on ``--batches`` real training batches (after one warm-up
batch), reported as samples/s and, for pairwise models, in-batch pairs/s (B x B per batch: MMCA
scores all of them, JGCAR's bi-rank loss B (1 + 2 M') of them).
Scoring: ``model.similarity`` of ``--images`` test images against all 5,000 test captions in the
model's own ``score_block`` chunks, reported as pairs/s. Writes results/model-throughput.json.
    .venv/bin/python benchmarks/model_throughput.py --models vsepp:cpu-bert mmca:cpu mmca:cpu,d=64
A spec is ``model:preset`` with optional ``,key=value`` model or recipe overrides.
"""
from __future__ import annotations

import argparse
import json
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
from xmr.train import TrainConfig, build


def parse_spec(spec: str) -> TrainConfig:
    head, *pairs = spec.split(",")
    model, preset = head.split(":")
    overrides = {k: json.loads(v) for k, v in (p.split("=", 1) for p in pairs)}
    return TrainConfig(model=model, preset=preset, data="flickr8k", overrides=overrides, progress=False)


def measure(cfg: TrainConfig, batches: int, n_images: int) -> dict:
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
    times = []
    for step in range(batches + 1):
        batch = next(it)
        t0 = time.perf_counter()
        loss = model.loss(model.encode_images(batch), model.encode_texts(batch), batch)["loss"]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers:
            opt.step()
        if step:  # the first batch warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    train_s = float(np.sum(times))
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
    return {"model": cfg.model, "preset": cfg.preset, "overrides": cfg.overrides, "batch_size": bs,
            "params_M": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
            "train_samples_per_s": batches * bs / train_s,
            "train_pairs_per_s": batches * bs * bs / train_s if model.pairwise else None,
            "train_epoch_min_est": data["train"].n_captions / (batches * bs / train_s) / 60,
            "score_images": test.n_images, "score_captions": data["test"].n_captions,
            "encode_s": encode_s, "score_pairs_per_s": pairs / score_s,
            "full_test_score_min_est": 1000 * data["test"].n_captions / (pairs / score_s) / 60}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vsepp:cpu-bert", "mmca:cpu"])
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--images", type=int, default=32, help="test images scored against all test captions")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="results/model-throughput.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for spec in args.models:
        rows.append(measure(parse_spec(spec), args.batches, args.images))
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(json.dumps({"command": "python benchmarks/model_throughput.py --models "
                                          + " ".join(args.models), "machine": machine_info(),
                                          "results": rows}, indent=1))


if __name__ == "__main__":
    main()
