"""What ACMM's memory does on a split. For a run with memory and alignment: each term of the score
(Eq. 1), the memory term mean_j cos(r^V_j, r^S_j) and the alignment term mean_j cos(v_j, s_j), on
its own and combined, with their spread over pairs. For every run with a memory: the reads of the
matching pairs (read strength beta^r, entropy of the read weights against uniform, mean pairwise
cosine of the reads r = w M, per side) and the items' mean pairwise cosine and norms.

A memory term that is nearly the same for every pair cannot change a ranking, whatever lam is
(then ACMM* equals ACMM); reads with near-uniform weights are all about the same mixture of the
items. Writes OUT (JSON).
    .venv/bin/python experiments/acmm_memory_terms.py RUN OUT [--split test] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from xmr.eval.evaluate import encode
from xmr.eval.recall import ranks_from_scores, summarize
from xmr.runs import open_run


def spread(x: torch.Tensor) -> dict:
    """Mean and std over all pairs, and the std within an image's row (what ranking captions sees)."""
    return {"mean": float(x.mean()), "std": float(x.std()), "row_std": float(x.std(1).mean()),
            "min": float(x.min()), "max": float(x.max())}


def read_stats(model, img: dict, txt: dict, caption_image, pairs: int = 500, sample: int = 4000) -> dict:
    """Reads of the first ``pairs`` matching (image, caption) pairs, per side (region: the aligned
    v_j, or the regions for a "mem" run; word: s_j); the pairwise cosine over ``sample`` reads."""
    idx = torch.arange(min(pairs, len(caption_image)))
    rw = model.read_weights({k: v[caption_image[idx]] for k, v in img.items()}, {k: v[idx] for k, v in txt.items()})
    gen = torch.Generator().manual_seed(0)
    out = {}
    for side, bank in (("region", model.memory[0]), ("word", model.memory[-1])):
        mask = rw[f"{side}_mask"]
        w, strength = rw[side][mask], rw[f"{side}_strength"][mask]
        reads = F.normalize(w @ bank, dim=-1)
        reads = reads[torch.randperm(len(reads), generator=gen)[:sample]]
        n = len(reads)
        out[side] = {"reads": len(w), "strength_mean": float(strength.mean()), "strength_max": float(strength.max()),
                     "entropy_mean": float(-(w * w.clamp(min=1e-12).log()).sum(-1).mean()),
                     "entropy_uniform": math.log(bank.size(0)), "max_weight_mean": float(w.max(-1).values.mean()),
                     "reads_mean_pairwise_cosine": float(((reads @ reads.T).sum() - n) / (n * n - n))}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("out")
    p.add_argument("--split", default="test")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    trained = open_run(args.run)
    model = trained.model
    if not model.use_memory:
        raise SystemExit("needs a run with a memory")
    data = trained.data(args.split, progress=False)
    caption_image = torch.as_tensor(data.caption_image)
    result = {"run": args.run, "split": args.split, "n_images": data.n_images, "n_captions": data.n_captions}
    with torch.no_grad():
        img, txt = encode(model, data)
        if model.use_alignment:
            mem, align = model.score_terms(img, txt)
            terms = {"memory": mem, "alignment": align, f"combined (lam = {model.lam})": model.combine(mem, align)}
            result["terms"] = {name: {**spread(s), "rsum": summarize(*ranks_from_scores(s, data.caption_image))["rsum"]}
                               for name, s in terms.items()}
        result["reads"] = read_stats(model, img, txt, caption_image)
    items = [F.normalize(bank, dim=-1) for bank in model.memory]
    gram = [u @ u.T for u in items]
    n = model.memory.size(1)
    result.update({
        "items_mean_pairwise_cosine": [float((g.sum() - n) / (n * n - n)) for g in gram],
        "item_norms": [{"min": float(b.norm(dim=-1).min()), "median": float(b.norm(dim=-1).median()),
                        "max": float(b.norm(dim=-1).max())} for b in model.memory]})
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
