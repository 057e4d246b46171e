"""How much of an encoded caption survives the frozen ImageNet prefix of Revisiting's trunk?

For each (resolution, text layout, frozen depth): Flickr8k training captions are drawn as pictures
(``SentenceRenderer``, the model's own renderer), passed through the first ``depth`` blocks of the
ImageNet EfficientNet-Lite0, and a ridge regression from the flattened activation map predicts
the caption's bag-of-words (the mean of its words' GloVe vectors); the held-out R² says how
readable the text still is for the trainable blocks after the cut (a linear lower bound). The
same probe on the pictures' pixels is the reference.

    .venv/bin/python experiments/revisiting_text_probe.py OUT.json [--captions 3000] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from xmr.data import open_split
from xmr.data.text import Vocab, glove_vectors
from xmr.interface import IMAGENET_MEAN, IMAGENET_STD
from xmr.machine import machine_info
from xmr.models.revisiting import LiteTrunk, SentenceRenderer

SETTINGS = [  # (resolution, grid or None for the 256²-scaled layout, frozen blocks)
    (96, None, 11), (96, 4, 11), (96, 4, 8), (96, 4, 5), (128, 4, 11), (128, 4, 8), (160, 4, 11)]


def ridge_r2(x: np.ndarray, y: np.ndarray, n_fit: int, alpha: float) -> float:
    mu, sd = x[:n_fit].mean(0), x[:n_fit].std(0) + 1e-6
    x = (x - mu) / sd
    ym = y[:n_fit].mean(0)
    a, b = x[:n_fit], y[:n_fit] - ym
    # dual form: features outnumber captions
    k = a @ a.T
    w = a.T @ np.linalg.solve(k + alpha * np.eye(len(k)), b)
    pred = x[n_fit:] @ w + ym
    res = ((y[n_fit:] - pred) ** 2).sum()
    tot = ((y[n_fit:] - y[n_fit:].mean(0)) ** 2).sum()
    return float(1 - res / tot)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--captions", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    split = open_split("flickr8k", "train")
    vocab = Vocab.build(split.captions)
    table, _ = glove_vectors(vocab, 50, 0)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(split.captions), args.captions, replace=False)
    toks, lens = vocab.encode_batch([split.captions[i] for i in pick], 50)
    toks_t, lens_t = torch.from_numpy(toks), torch.from_numpy(lens)
    mask = (toks >= 2) & (np.arange(toks.shape[1])[None] < lens[:, None])
    target = (table[toks] * mask[..., None]).sum(1) / np.maximum(1, mask.sum(1, keepdims=True))
    n_fit = int(0.7 * args.captions)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    rows = []
    for res, grid, depth in SETTINGS:
        t0 = time.time()
        renderer = SentenceRenderer(len(vocab), 50, res, table, 0.3, grid)
        pics = renderer(toks_t, lens_t)
        trunk = LiteTrunk(True, depth)
        feats = []
        with torch.no_grad():
            for s in range(0, len(pics), 256):
                z = (pics[s: s + 256].permute(0, 3, 1, 2).float() - mean) / std
                feats.append(trunk.frozen_features(z.contiguous(memory_format=torch.channels_last)).flatten(1))
        f = torch.cat(feats).numpy().astype(np.float64)
        pix = pics.flatten(1).numpy().astype(np.float64)
        row = {"resolution": res, "grid": grid, "capacity": renderer.capacity, "cell": renderer.encoder.cell,
               "frozen_blocks": depth, "map": list(trunk.frozen_features(z[:1].contiguous(
                   memory_format=torch.channels_last)).shape[1:]),
               "r2_prefix": round(max(ridge_r2(f, target, n_fit, a) for a in (1e2, 1e3, 1e4)), 4),
               "r2_pixels": round(max(ridge_r2(pix, target, n_fit, a) for a in (1e2, 1e3, 1e4)), 4),
               "seconds": round(time.time() - t0, 1)}
        print(row, flush=True)
        rows.append(row)
    with open(args.out, "w") as fh:
        json.dump({"machine": machine_info(), "captions": args.captions, "fit": n_fit, "target": "mean GloVe-50 of the caption's words",
                   "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
