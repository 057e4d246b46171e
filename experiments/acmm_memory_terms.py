"""What each term of ACMM's score (Eq. 1) contributes on a split: the memory term
mean_j cos(r^V_j, r^S_j) and the alignment term mean_j cos(v_j, s_j), each on its own and combined,
with their spread over pairs, and the memory items' mean pairwise cosine and norms.

A memory term that is nearly the same for every pair cannot change a ranking, whatever lam is
(then ACMM* equals ACMM). Writes OUT (JSON).
    .venv/bin/python experiments/acmm_memory_terms.py RUN OUT [--split test] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from xmr.eval.evaluate import encode
from xmr.eval.metrics import ranks_from_scores, summarize
from xmr.features.store import pair_data
from xmr.train import load_trained


def spread(x: torch.Tensor) -> dict:
    """Mean and std over all pairs, and the std within an image's row (what ranking captions sees)."""
    return {"mean": float(x.mean()), "std": float(x.std()), "row_std": float(x.std(1).mean()),
            "min": float(x.min()), "max": float(x.max())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("out")
    p.add_argument("--split", default="test")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, vocab, meta = load_trained(args.run)
    if not (model.use_memory and model.use_alignment):
        raise SystemExit("needs a run with both the memory and the alignment (the full ACMM)")
    data = pair_data(meta["data"], args.split, model.inputs, vocab, meta["max_len"], meta["extractor"], progress=False)
    with torch.no_grad():
        img, txt = encode(model, data)
        mem, align = model.score_terms(img, txt)
    terms = {"memory": mem, "alignment": align, f"combined (lam = {model.lam})": model.combine(mem, align)}
    items = [F.normalize(bank, dim=-1) for bank in model.memory]
    gram = [u @ u.T for u in items]
    n = model.memory.size(1)
    result = {
        "run": args.run, "split": args.split, "n_images": data.n_images, "n_captions": data.n_captions,
        "terms": {name: {**spread(s), "rsum": summarize(*ranks_from_scores(s, data.caption_image))["rsum"]}
                  for name, s in terms.items()},
        "items_mean_pairwise_cosine": [float((g.sum() - n) / (n * n - n)) for g in gram],
        "item_norms": [{"min": float(b.norm(dim=-1).min()), "median": float(b.norm(dim=-1).median()),
                        "max": float(b.norm(dim=-1).max())} for b in model.memory]}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
