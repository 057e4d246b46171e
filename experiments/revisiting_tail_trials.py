"""Fast dev trials of Revisiting's training choices on the frozen prefix, cached.

Only the trunk's last blocks, the projection and the loss train in the ``cpu`` presets, and the
frozen prefix's output for a photo or a caption picture never changes: this script computes it once
for the Flickr8k training and dev items (photos and the model's own caption pictures), then trains
``Revisiting``'s tail (``LiteTrunk.tail``, ``fc``) with the model's own ``loss`` from those
activations, about twice as fast as ``xmr train``, which recomputes the prefix every step. Each
trial is a set of model keys (``--set KEY=VALUE``, as for ``xmr train``) and batching; dev rsum by
the model's ``similarity`` after each epoch. It chooses settings; the reported runs use ``xmr train``.
OUT keeps every finished trial: a rerun skips the trials it holds (same name and settings).

    .venv/bin/python experiments/revisiting_tail_trials.py OUT.json --trial NAME KEY=VALUE ... \
        [--trial ...] [--epochs 5] [--images 6000] [--threads 2] [--maps runs/revisiting-f8k/maps]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from xmr.data import open_split
from xmr.data.pairs import PairData
from xmr.data.text import Vocab, glove_vectors
from xmr.eval.recall import ranks_from_scores, summarize
from xmr.features.store import split_with_features
from xmr.machine import machine_info
from xmr.models.revisiting import Revisiting
from xmr.options import key_values


# What every trial starts from: the paper's loss, batches and layout at the ``cpu`` presets' size
# (ImageNet Lite0 at 96², 11 blocks frozen); a trial's KEY=VALUE settings go on top.
BASE = dict(resolution=96, embed_dim=128, word_dim=50, pretrained=True, freeze_blocks=11, config="standard",
            center_weight=0.01, center_alpha=0.5)


def prefix_of(model: Revisiting, u8: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.trunk.frozen_features(model.normalise(u8[s: s + chunk])).half()
                          for s in tqdm(range(0, len(u8), chunk), leave=False, desc="prefix")])


def embed(model: Revisiting, maps: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    def run(m):
        z = model.fc(model.trunk.tail(m.float().contiguous(memory_format=torch.channels_last)))
        return torch.nn.functional.normalize(z, dim=1) if model.normalize else z
    if torch.is_grad_enabled():
        return run(maps)
    return torch.cat([run(maps[s: s + chunk]) for s in range(0, len(maps), chunk)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--trial", nargs="+", action="append", required=True, metavar="NAME [KEY=VALUE]")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default="runs/cache")
    ap.add_argument("--maps", help="folder to keep the prefix activations in between invocations")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = dict(BASE)
    splits = {s: open_split("flickr8k", s) for s in ("train", "dev")}  # captions; pixels per resolution below
    vocab = Vocab.build(splits["train"].captions)
    table, _ = glove_vectors(vocab, 50, 0)
    maps: dict = {}
    done = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    if done and (done["images"], done["epochs"], done["lr"], done["batch_size"]) != \
            (args.images, args.epochs, args.lr, args.batch_size):
        raise SystemExit(f"{args.out} holds trials of another budget; choose another file")
    results = [t for t in done.get("trials", []) if [t["trial"], *t["pairs"]] in args.trial]
    for name, *pairs in args.trial:
        if any(t["trial"] == name and t["pairs"] == pairs for t in results):
            print(f"{name}: in {args.out} already", flush=True)
            continue
        kw = {**base, **key_values(pairs, lambda item: SystemExit(f"--trial {name}: {item!r} is not KEY=VALUE"))}
        torch.manual_seed(0)
        model = Revisiting(len(vocab), n_train_images=args.images, word_init=table, **kw)
        side = kw.get("image_resolution") or kw["resolution"]
        key = (kw["resolution"], kw.get("text_grid"), kw["freeze_blocks"], side)
        stored = Path(args.maps) / f"prefix-{'-'.join(map(str, key))}-{args.images}.pt" if args.maps else None
        if key not in maps and stored is not None and stored.is_file():
            maps[key] = {split: (img, txt, ci.numpy()) for split, (img, txt, ci) in torch.load(stored).items()}
        if key not in maps:  # the frozen activations of this resolution, layout and cut
            model.eval()
            maps[key] = {}
            for split, data in splits.items():
                pd = PairData(data, vocab)
                pixels = torch.from_numpy(np.ascontiguousarray(split_with_features(
                    "flickr8k", split, "pixels", cache=args.cache, progress=False, resolution=side).features))
                n = args.images if split == "train" else len(pixels)
                keep = pd.caption_image < n
                text = model.render_texts({"tokens": torch.from_numpy(pd.tokens[keep]),
                                           "lengths": torch.from_numpy(pd.lengths[keep])})
                maps[key][split] = (prefix_of(model, pixels[:n]), prefix_of(model, text), pd.caption_image[keep])
            if stored is not None:
                stored.parent.mkdir(parents=True, exist_ok=True)
                torch.save({split: (img, txt, torch.from_numpy(ci)) for split, (img, txt, ci) in maps[key].items()},
                           stored)  # tensors only: torch.load reads them back without unpickling numpy
        (tr_img, tr_txt, tr_ci), (dv_img, dv_txt, dv_ci) = maps[key]["train"], maps[key]["dev"]
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
        rows = []
        for epoch in range(args.epochs):
            model.train()
            rng = np.random.default_rng([0, epoch])
            # the model's own batch composition (PairData or its whole-image view), as ids
            train = PairData(splits["train"], vocab).head(args.images)
            batches = [(np.unique(tr_ci[c]), c) for c in
                       model.stage_batches(model.stages[0], train).caption_batches(args.batch_size, rng)]
            t0, sums = time.time(), {}
            for imgs, caps in tqdm(batches, leave=False, desc=f"{name} epoch {epoch}"):
                if tr_img.shape[1:] == tr_txt.shape[1:]:  # one trunk pass, as the model's forward
                    e = embed(model, torch.cat([tr_img[imgs], tr_txt[caps]]))
                    ei, et = e[: len(imgs)], e[len(imgs):]
                else:
                    ei, et = embed(model, tr_img[imgs]), embed(model, tr_txt[caps])
                img = {"emb": ei, "label": torch.from_numpy(imgs).long()}
                txt = {"emb": et, "label": torch.from_numpy(tr_ci[caps]).long()}
                parts = model.loss(img, txt, {})
                opt.zero_grad()
                parts["loss"].backward()
                opt.step()
                for k_, v in parts.items():
                    sums[k_] = sums.get(k_, 0.0) + float(v.detach())
            model.eval()
            with torch.no_grad():
                s = model.similarity({"emb": embed(model, dv_img)}, {"emb": embed(model, dv_txt)})
                r = summarize(*ranks_from_scores(s, dv_ci))
            row = {"epoch": epoch, "minutes": round((time.time() - t0) / 60, 2), "dev_rsum": round(r["rsum"], 2),
                   "i2t_r1": round(r["i2t"]["r1"], 2), "t2i_r1": round(r["t2i"]["r1"], 2),
                   **{f"train_{k_}": round(v / len(batches), 4) for k_, v in sums.items()}}
            print(name, row, flush=True)
            rows.append(row)
        results.append({"trial": name, "pairs": pairs, "rows": rows})
        with open(args.out, "w") as fh:
            json.dump({"machine": machine_info(), "images": args.images, "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                       "base": BASE, "trials": results}, fh, indent=1)


if __name__ == "__main__":
    main()
