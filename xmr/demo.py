"""``xmr demo``: the whole pipeline on the built-in synthetic set in a few minutes."""
from __future__ import annotations

import time
from pathlib import Path

from xmr.eval.evaluate import evaluate, format_table
from xmr.search.engine import Searcher
from xmr.runs import open_run
from xmr.search.index import Collection, build_index
from xmr.train import TrainConfig, train


def run_demo(out: Path, cache: Path, quiet: bool = False) -> int:
    t0 = time.perf_counter()
    cfg = TrainConfig(model="vsepp", preset="tiny", data="synthetic", out=str(out), cache=str(cache),
                      progress=not quiet)
    train(cfg)
    trained = open_run(out)
    test = trained.data("test", cache=cache, progress=not quiet)
    result = evaluate(trained.model, test)
    chance = 100 * test.split.captions_per_image / test.n_captions, 100 / test.n_images
    print(f"\nVSE++ (tiny) on the synthetic test split, best dev checkpoint:\n{format_table(result)}")
    print(f"chance R@1: image->text {chance[0]:.1f}, text->image {chance[1]:.1f}")
    print(f"run folder: {out} (curve.png, metrics.jsonl, best.safetensors)")

    # The trained model as a search engine over the test images.
    index = out.parent / f"{out.name}-index"
    build_index(out, Collection("split", cfg.data, "test"), index, cache=cache, progress=not quiet)
    query = "a red circle"
    hits = Searcher(index).search_text(query, k=3)
    print(f"\nsearch index: {index}; top 3 images for {query!r}:")
    for h in hits:
        print(f"  {h.score:.3f}  {h.image_id}: {test.split.captions[test.split.captions_per_image * h.image_index]}")
    print(f"try:  xmr search {index} \"two blue squares\"   |   xmr serve {index}  (then open "
          f"http://127.0.0.1:8000)\n{time.perf_counter() - t0:.0f}s in all")
    return 0
