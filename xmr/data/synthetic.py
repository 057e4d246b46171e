"""Built-in synthetic image-sentence dataset: generated deterministically, no files needed.

Each image shows 1-3 coloured shapes on a tinted background; its 5 captions describe the
objects' colour, shape, size and position in varied wording (synonyms, templates, order).
Shapes and colours follow a long-tailed (Zipf) frequency, so some words are rare in training,
which the few-shot (k-shot) protocol needs. Labels: which shape classes an image contains.

Everything derives from ``(seed, split, index)``, so any image can be re-rendered on demand.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageColor, ImageDraw

from xmr.data.base import CAPTIONS_PER_IMAGE, Split

SIZE = 224
# (name, RGB, synonyms) - ordered from common to rare (Zipf sampling).
COLOURS = [
    ("red", (220, 30, 30), ["red"]), ("blue", (30, 60, 220), ["blue"]),
    ("green", (30, 170, 50), ["green"]), ("yellow", (240, 220, 30), ["yellow"]),
    ("white", (245, 245, 245), ["white"]), ("black", (15, 15, 15), ["black", "dark"]),
    ("orange", (250, 140, 0), ["orange"]), ("purple", (130, 40, 170), ["purple", "violet"]),
    ("pink", (250, 150, 200), ["pink"]), ("brown", (120, 70, 20), ["brown"]),
    ("cyan", (0, 220, 230), ["cyan", "turquoise"]), ("grey", (128, 128, 128), ["grey", "gray"]),
]
# Rare colours (one name each, RGB from PIL's CSS table) share RARE_MASS of all objects, so each
# appears in only a couple of training images: the long tail the k-shot protocol needs.
RARE_COLOURS = [
    "navy", "lime", "maroon", "olive", "magenta", "gold", "teal", "lavender", "salmon", "indigo",
    "beige", "crimson", "azure", "bisque", "chartreuse", "chocolate", "coral", "cornsilk", "firebrick",
    "fuchsia", "gainsboro", "honeydew", "ivory", "khaki", "linen", "moccasin", "orchid", "peru", "plum",
    "sienna", "tan", "thistle", "tomato", "wheat",
]
COLOURS += [(name, ImageColor.getrgb(name), [name]) for name in RARE_COLOURS]
RARE_MASS = 0.02
SHAPES = [
    ("circle", ["circle", "disc", "ball", "round shape"]), ("square", ["square", "box", "block"]),
    ("triangle", ["triangle", "wedge"]), ("star", ["star"]), ("cross", ["cross", "plus sign"]),
    ("ring", ["ring", "donut", "hoop"]), ("diamond", ["diamond", "rhombus"]),
    ("hexagon", ["hexagon"]), ("heart", ["heart"]), ("crescent", ["crescent", "moon"]),
]
SIZES = {"small": ["small", "little", "tiny"], "large": ["large", "big", "huge"]}
PLACES = {"left": ["on the left", "at the left side", "to the left"],
          "right": ["on the right", "at the right side", "to the right"],
          "top": ["at the top", "near the top", "in the upper part"],
          "bottom": ["at the bottom", "near the bottom", "in the lower part"],
          "center": ["in the middle", "in the center", "at the centre"]}
PLACE_XY = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75),
            "center": (0.5, 0.5)}
OPENERS = ["", "there is ", "a picture of ", "an image showing ", "we see ", "this shows "]
JOINERS = [" and ", " next to ", " with ", " beside "]
SPLIT_OFFSET = {"train": 0, "dev": 1, "test": 2}
DEFAULT_SIZES = {"train": 2000, "dev": 250, "test": 500}


def _zipf(n: int, s: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** s
    return p / p.sum()


def _colour_probs() -> np.ndarray:
    n_rare = len(RARE_COLOURS)
    common = _zipf(len(COLOURS) - n_rare, 1.1) * (1 - RARE_MASS)
    return np.concatenate([common, np.full(n_rare, RARE_MASS / n_rare)])


def scene(seed: int, split: str, index: int) -> list[dict]:
    """The objects of one image: colour, shape, size, place (distinct places)."""
    rng = np.random.default_rng([seed, SPLIT_OFFSET.get(split, 3), index])
    n_obj = int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]))
    places = rng.choice(list(PLACES), size=n_obj, replace=False)
    colours = rng.choice(len(COLOURS), size=n_obj, p=_colour_probs())
    shapes = rng.choice(len(SHAPES), size=n_obj, p=_zipf(len(SHAPES), 1.6))
    sizes = rng.choice(list(SIZES), size=n_obj)
    return [{"colour": int(c), "shape": int(s), "size": str(z), "place": str(p)}
            for c, s, z, p in zip(colours, shapes, sizes, places)]


def render(objects: list[dict], seed: int, split: str, index: int) -> Image.Image:
    rng = np.random.default_rng([seed, SPLIT_OFFSET.get(split, 3), index, 1])
    tint = tuple(int(v) for v in rng.integers(150, 215, size=3))
    im = Image.new("RGB", (SIZE, SIZE), tint)
    draw = ImageDraw.Draw(im)
    for obj in sorted(objects, key=lambda o: o["size"] == "small"):  # small ones drawn on top
        cx, cy = PLACE_XY[obj["place"]]
        cx, cy = (cx + rng.uniform(-0.05, 0.05)) * SIZE, (cy + rng.uniform(-0.05, 0.05)) * SIZE
        r = SIZE * (0.19 if obj["size"] == "large" else 0.09) * rng.uniform(0.9, 1.1)
        _draw_shape(draw, SHAPES[obj["shape"]][0], cx, cy, r, COLOURS[obj["colour"]][1])
    return im


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle((cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=fill)
    elif shape == "star":
        pts = [(cx + (r if k % 2 == 0 else 0.45 * r) * np.sin(np.pi * k / 5),
                cy - (r if k % 2 == 0 else 0.45 * r) * np.cos(np.pi * k / 5)) for k in range(10)]
        draw.polygon(pts, fill=fill)
    elif shape == "cross":
        w = 0.3 * r
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(0.35 * r)))
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)], fill=fill)
    elif shape == "hexagon":
        draw.regular_polygon((cx, cy, r), 6, fill=fill)
    elif shape == "heart":
        draw.ellipse((cx - r, cy - 0.8 * r, cx, cy + 0.2 * r), fill=fill)
        draw.ellipse((cx, cy - 0.8 * r, cx + r, cy + 0.2 * r), fill=fill)
        draw.polygon([(cx - 0.97 * r, cy - 0.1 * r), (cx + 0.97 * r, cy - 0.1 * r), (cx, cy + r)], fill=fill)
    elif shape == "crescent":
        draw.ellipse(box, fill=fill)
        draw.ellipse((cx - 0.4 * r, cy - r, cx + 1.4 * r, cy + r), fill=draw.im.getpixel((0, 0)))
    else:
        raise ValueError(shape)


def _phrase(obj: dict, rng: np.random.Generator, with_place: bool) -> str:
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    words = [pick(SIZES[obj["size"]])] if rng.random() < 0.7 else []
    words += [pick(COLOURS[obj["colour"]][2]), pick(SHAPES[obj["shape"]][1])]
    text = " ".join(words)
    text = ("an " if text[0] in "aeiou" else "a ") + text
    return text + " " + pick(PLACES[obj["place"]]) if with_place else text


def captions(objects: list[dict], seed: int, split: str, index: int, k: int) -> list[str]:
    """k different descriptions of one scene: varied openers, synonyms, object order, detail."""
    rng = np.random.default_rng([seed, SPLIT_OFFSET.get(split, 3), index, 2])
    out = []
    for _ in range(k):
        order = rng.permutation(len(objects))
        mentioned = [objects[i] for i in order[: max(1, int(rng.integers(1, len(objects) + 1)))]]
        parts = [_phrase(o, rng, with_place=rng.random() < 0.75) for o in mentioned]
        text = parts[0]
        for p in parts[1:]:
            text += JOINERS[int(rng.integers(len(JOINERS)))] + p
        out.append(OPENERS[int(rng.integers(len(OPENERS)))] + text)
    return out


def read_synthetic(split: str, seed: int = 0, n_images: int | None = None,
                   captions_per_image: int = CAPTIONS_PER_IMAGE) -> Split:
    n = n_images if n_images is not None else DEFAULT_SIZES.get(split, 250)
    scenes = [scene(seed, split, i) for i in range(n)]
    caps = [c for i, s in enumerate(scenes) for c in captions(s, seed, split, i, captions_per_image)]
    labels = np.zeros((n, len(SHAPES)), dtype=np.int8)
    for i, s in enumerate(scenes):
        labels[i, [o["shape"] for o in s]] = 1
    return Split(split, [f"synthetic-{split}-{i:05d}" for i in range(n)], caps, captions_per_image,
                 labels=labels, label_names=[s[0] for s in SHAPES],
                 images=lambda i: render(scenes[i], seed, split, i))
