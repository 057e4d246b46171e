"""``xmr demo``: the whole pipeline on the built-in synthetic set in a few minutes."""
from __future__ import annotations

import time
from pathlib import Path

from xmr.eval.evaluate import evaluate, format_table
from xmr.features.store import pair_data
from xmr.train import TrainConfig, load_trained, train


def run_demo(out: Path, cache: Path, quiet: bool = False) -> int:
    t0 = time.perf_counter()
    cfg = TrainConfig(model="vsepp", preset="tiny", data="synthetic", out=str(out), cache=str(cache),
                      progress=not quiet)
    train(cfg)
    model, vocab, meta = load_trained(out)
    test = pair_data(cfg.data, "test", model.inputs, vocab, meta["max_len"], cfg.extractor, cache, not quiet)
    result = evaluate(model, test)
    chance = 100 * test.split.captions_per_image / test.n_captions, 100 / test.n_images
    print(f"\nVSE++ (tiny) on the synthetic test split, best dev checkpoint:\n{format_table(result)}")
    print(f"chance R@1: image->text {chance[0]:.1f}, text->image {chance[1]:.1f}")
    print(f"run folder: {out} (curve.png, metrics.jsonl, best.safetensors); {time.perf_counter() - t0:.0f}s")
    return 0
