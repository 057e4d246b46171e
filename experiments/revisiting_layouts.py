"""The caption pictures Revisiting's one network reads, at the ``cpu`` presets' 96²: Gallo's layout
scaled to the canvas (``text_grid=None``, the earlier ``cpu`` presets and the ``paper`` presets'
layout at 96²) beside the large-word layout (``text_grid=4``), for the first Flickr8k test caption,
drawn by the model's own renderer with the training vocabulary's GloVe vectors, enlarged 4 times.

    .venv/bin/python experiments/revisiting_layouts.py OUT.png
"""
from __future__ import annotations

import sys

import numpy as np
import torch
from PIL import Image, ImageDraw

from xmr.data import open_split
from xmr.data.text import Vocab, glove_vectors
from xmr.models.revisiting import SentenceRenderer

SCALE, RESOLUTION = 4, 96


def main(out: str) -> None:
    vocab = Vocab.build(open_split("flickr8k", "train").captions)
    table, _ = glove_vectors(vocab, 50, 0)
    caption = open_split("flickr8k", "test").captions[0]
    toks, lens = vocab.encode_batch([caption], 50)
    panels = []
    for grid in (None, 4):
        r = SentenceRenderer(len(vocab), 50, RESOLUTION, table, 0.3, grid)
        pic = r(torch.from_numpy(toks), torch.from_numpy(lens))[0].numpy()
        panels.append((pic.repeat(SCALE, 0).repeat(SCALE, 1),
                       f"text_grid={grid}: {r.encoder.cell}-px cells, {r.capacity} words"))
    side = RESOLUTION * SCALE
    canvas = Image.new("RGB", (2 * side + 12, side + 40), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (pic, label) in enumerate(panels):
        canvas.paste(Image.fromarray(pic, "RGB"), (k * (side + 12), 0))
        draw.text((k * (side + 12) + 4, side + 6), label, fill="black")
    draw.text((4, side + 22), caption[:90], fill="black")
    canvas.save(out)
    print(f"wrote {out} ({caption!r})")


if __name__ == "__main__":
    main(sys.argv[1])
