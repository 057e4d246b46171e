"""Does the one network of "Revisiting Cross Modal Retrieval" learn both modalities? For a trained
run, on the first N images of the training split (with their captions) and of the dev split:

- the mean norm of each modality's 128-d embedding and the distance between the two centroids;
- rsum of Euclidean retrieval (the paper's protocol), of cosine and of centred cosine (each
  modality's mean removed) on those N images: a gap between train and dev is over-fitting, train
  near chance means the network never matched the modalities;
- training split only: how often the softmax classifier of Sec. 3.3 names the right training image
  from the image and from each of its encoded captions;
- the output of the frozen prefix of the trunk (``freeze_blocks``): its relative spread over items
  (mean distance to the mean over mean norm) and mean pairwise cosine, per modality: how much of
  what tells captions apart survives the frozen ImageNet filters; with ``--prefix-depths``, the
  same for the ImageNet trunk cut after each given number of blocks (``prefix_depths``) and for
  the normalised input pixels themselves (``pixels``).

Writes OUT (JSON).
    .venv/bin/python experiments/revisiting_diagnose.py RUN OUT [--images 300] [--prefix-depths 3 6 9 11]
        [--threads 2]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xmr.eval.evaluate import encode
from xmr.eval.recall import ranks_from_scores, summarize
from xmr.models.revisiting import LiteTrunk
from xmr.runs import open_run


def rsum(scores: torch.Tensor, caption_image: np.ndarray) -> float:
    return round(summarize(*ranks_from_scores(scores, caption_image))["rsum"], 2)


def spread(features: torch.Tensor) -> dict:
    f = features.flatten(1)
    unit = F.normalize(f, dim=1)
    n = len(f)
    return {"relative_spread": float((f - f.mean(0)).norm(dim=1).mean() / f.norm(dim=1).mean()),
            "mean_pairwise_cosine": float(((unit @ unit.T).sum() - n) / (n * n - n))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("out")
    p.add_argument("--images", type=int, default=300, help="first N images of each split, with their captions")
    p.add_argument("--prefix-depths", type=int, nargs="*", default=[],
                   help="also measure the ImageNet trunk's prefix of each of these many blocks")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    trained = open_run(args.run)
    model, meta = trained.model, trained.meta
    if meta["model"] != "revisiting":
        raise SystemExit(f"{args.run} is a {meta['model']} run; this diagnoses revisiting runs")
    result = {"run": args.run, "epoch": meta.get("epoch"), "images": args.images}
    for split in ("train", "dev"):
        data = trained.data(split, progress=False).head(args.images)
        with torch.no_grad():
            img, txt = encode(model, data)
            a, b = img["emb"], txt["emb"]
            centred = F.normalize(a - a.mean(0), dim=1) @ F.normalize(b - b.mean(0), dim=1).T
            out = {"captions": data.n_captions,
                   "norm": {"images": float(a.norm(dim=1).mean()), "captions": float(b.norm(dim=1).mean())},
                   "centroid_distance": float((a.mean(0) - b.mean(0)).norm()),
                   "rsum": {"euclidean": rsum(model.similarity(img, txt), data.caption_image),
                            "cosine": rsum(F.normalize(a, dim=1) @ F.normalize(b, dim=1).T, data.caption_image),
                            "centred_cosine": rsum(centred, data.caption_image)}}
            if split == "train":
                target = torch.as_tensor(data.caption_image)
                out["classifier_accuracy"] = {
                    "images": float((model.logits(a).argmax(1) == torch.arange(len(a))).float().mean()),
                    "captions": float((model.logits(b).argmax(1) == target).float().mean())}
                idx = np.arange(min(100, data.n_images))
                pixels = {"images": model.normalise(data.image_batch(idx)["image"]),
                          "captions": model.normalise(model.render_texts(data.text_batch(idx)))}
                if model.trunk.prefix is not None:
                    out["frozen_prefix"] = {name: spread(model.trunk.frozen_features(x)) for name, x in pixels.items()}
                out["pixels"] = {name: spread(x) for name, x in pixels.items()}  # the trunk's normalised input
                depths = {}
                for depth in args.prefix_depths:
                    trunk = LiteTrunk(pretrained=True, freeze_blocks=depth).eval()
                    depths[depth] = {name: spread(trunk.frozen_features(x)) for name, x in pixels.items()}
                if depths:
                    out["prefix_depths"] = depths
        result[split] = out
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
