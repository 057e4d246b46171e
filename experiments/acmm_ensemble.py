"""ACMM* (Huang & Wang 2019, Sec. 4.5) on a split: one trained ACMM run scored by
``xmr.models.acmm.ensemble_similarity`` (the mean of its Eq. 1 score matrices at lam = 0.5 and 0.8),
evaluated exhaustively (R@1/5/10, medr, meanr, rsum, mR) plus the k-shot table (xmr.eval.kshot).

    .venv/bin/python experiments/acmm_ensemble.py RUN OUT_JSON [--lambdas 0.5 0.8] [--kshot 0 1 5]

``xmr eval`` scores with ``model.similarity``; here a thin wrapper whose ``similarity`` is the
ensemble goes through the same ranking code (``xmr.eval.evaluate.ranks``, block by block, and
``xmr.eval.kshot``'s pair ranks). The split is encoded once and the encoding is shared by both.
The JSON has the shape of ``xmr eval --json`` (so ``experiments/ablation_table.py`` reads it) plus
``"lambdas"``. ``--lambdas 0.5`` alone reproduces the run's plain ``xmr eval`` numbers (a check).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from xmr.data import open_split
from xmr.eval.evaluate import encode, format_table, ranks
from xmr.eval.kshot import format_kshot, kshot_evaluate
from xmr.eval.recall import summarize
from xmr.models.acmm import ensemble_similarity
from xmr.runs import open_run


class Ensemble:
    """What the evaluation code asks of a model (``eval``, ``score_block``, ``similarity``), with
    the ACMM* score: ``ensemble_similarity(model, img, txt, lambdas)``."""

    def __init__(self, model, lambdas: tuple[float, ...]):
        self.model, self.lambdas = model, tuple(lambdas)
        self.score_block = model.score_block

    def eval(self) -> "Ensemble":
        self.model.eval()
        return self

    def similarity(self, img, txt) -> torch.Tensor:
        return ensemble_similarity(self.model, img, txt, self.lambdas)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a trained ACMM run folder (alignment and memory both on)")
    p.add_argument("out", help="the result JSON")
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.5, 0.8])
    p.add_argument("--kshot", type=int, nargs="*", default=[0, 1, 5], help="k-shot subsets (none: skip)")
    p.add_argument("--split", default="test")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--cache", default="runs/cache")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    trained = open_run(args.run, args.checkpoint)
    model, meta = trained.model, trained.meta
    if meta["model"] != "acmm" or not (model.use_alignment and model.use_memory):
        raise SystemExit(f"{args.run}: ACMM* needs an ACMM run with both score terms (alignment and memory)")
    data = trained.data(args.split, cache=Path(args.cache), progress=False)
    scorer = Ensemble(model, args.lambdas)

    t0 = time.perf_counter()
    reps = encode(model, data)
    t_encode = time.perf_counter() - t0
    r_i2t, r_t2i = ranks(scorer, *reps, data.caption_image, progress=True)
    result = summarize(r_i2t, r_t2i)
    result["ranks"] = {"i2t": r_i2t.tolist(), "t2i": r_t2i.tolist()}
    result["seconds"] = {"encode": t_encode, "total": time.perf_counter() - t0}
    print(f"ACMM* (lambdas {', '.join(map(str, args.lambdas))})\n{format_table(result)}")
    if args.kshot:  # word frequencies from the training split of the data the run was trained on
        t1 = time.perf_counter()
        result["kshot"] = kshot_evaluate(scorer, data, open_split(meta["data"], "train").captions,
                                         args.kshot, result, reps=reps)
        result["seconds"]["kshot"] = time.perf_counter() - t1
        print(format_kshot(result["kshot"]))
    out = {"run": str(args.run), "checkpoint": args.checkpoint, "data": meta["data"], "split": args.split,
           "folds": 1, "model": "ACMM*", "lambdas": list(args.lambdas), **result}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=_plain))
    print(f"wrote {args.out}")


def _plain(x):
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x)}")


if __name__ == "__main__":
    main()
