"""A reference for Revisiting's text side: how far does a caption's bag of words get, mapped
linearly onto the ImageNet trunk's photo features, at the photo resolutions the model may use?

Each Flickr8k training caption's mean GloVe-50 vector (the words Revisiting draws) is mapped by
ridge regression onto its photo's standardised EfficientNet-Lite0 pooled features (the ImageNet
trunk, no training), at 96² (the ``cpu`` presets' side) and 224²; dev retrieval ranks by the
cosine between the mapped captions and the photos (1K images, 5K captions). No CNN reads any
caption here: it bounds what the photos' features offer a bag-of-words text side.

    .venv/bin/python experiments/revisiting_bag_reference.py OUT.json [--threads 2]
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from xmr.data import open_split
from xmr.data.text import Vocab, glove_vectors
from xmr.eval.recall import ranks_from_scores, summarize
from xmr.features.store import split_with_features
from xmr.interface import IMAGENET_MEAN, IMAGENET_STD
from xmr.machine import machine_info
from xmr.models.revisiting import LiteTrunk

RESOLUTIONS = (96, 224)
ALPHAS = (0.1, 1.0, 10.0)


def bag(split, vocab: Vocab, table: np.ndarray) -> np.ndarray:
    toks, lens = vocab.encode_batch(split.captions, 50)
    keep = (toks >= 2) & (np.arange(toks.shape[1])[None] < lens[:, None])
    return (table[toks] * keep[..., None]).sum(1) / np.maximum(1, keep.sum(1, keepdims=True))


def pooled(trunk: LiteTrunk, pixels: np.ndarray) -> np.ndarray:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    out = []
    with torch.no_grad():
        for s in range(0, len(pixels), 128):
            x = (torch.from_numpy(np.array(pixels[s: s + 128])).permute(0, 3, 1, 2).float() - mean) / std
            out.append(trunk(x.contiguous(memory_format=torch.channels_last)))
    return torch.cat(out).numpy().astype(np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train, dev = open_split("flickr8k", "train"), open_split("flickr8k", "dev")
    vocab = Vocab.build(train.captions)
    table, _ = glove_vectors(vocab, 50, 0)
    x, xd = bag(train, vocab, table), bag(dev, vocab, table)
    x1, xd1 = np.c_[x, np.ones(len(x))], np.c_[xd, np.ones(len(xd))]
    trunk = LiteTrunk(pretrained=True, freeze_blocks=0).eval()
    rows = []
    for res in RESOLUTIONS:
        f = {s.name: pooled(trunk, split_with_features("flickr8k", s.name, "pixels", progress=False,
                                                       resolution=res).features) for s in (train, dev)}
        mu, sd = f["train"].mean(0), f["train"].std(0) + 1e-6
        y = (f["train"][train.caption_image] - mu) / sd
        photos = (f["dev"] - mu) / sd
        photos /= np.linalg.norm(photos, axis=1, keepdims=True)
        best = None
        for alpha in ALPHAS:
            w = np.linalg.solve(x1.T @ x1 + alpha * np.eye(x1.shape[1]), x1.T @ y)
            mapped = xd1 @ w
            mapped /= np.linalg.norm(mapped, axis=1, keepdims=True)
            r = summarize(*ranks_from_scores(torch.from_numpy(photos @ mapped.T).float(), dev.caption_image))
            row = {"resolution": res, "alpha": alpha, "rsum": round(r["rsum"], 2), "i2t_r1": round(r["i2t"]["r1"], 2),
                   "t2i_r1": round(r["t2i"]["r1"], 2)}
            print(row, flush=True)
            best = row if best is None or row["rsum"] > best["rsum"] else best
        rows.append(best)
    json.dump({"machine": machine_info(), "text": "mean GloVe-50 of the caption's words",
               "images": "EfficientNet-Lite0 (ImageNet) pooled features of the photo resized to R²",
               "split": "dev (1K images, 5K captions)", "best_alpha_per_resolution": rows},
              open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
