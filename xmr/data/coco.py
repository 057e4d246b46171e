"""COCO captions JSON (``annotations/captions_{train,val}{2014,2017}.json``) plus an image folder.

Split names are the files' own (``train2017``, ``val2014``, ...); ``train`` resolves to the train
file and ``dev``/``test`` to the val file, since COCO publishes no test captions.
"""
from __future__ import annotations

import json
from pathlib import Path

from xmr.data.base import CAPTIONS_PER_IMAGE, DataError, Split, group_captions
from xmr.data.text import check_caption

ALIASES = {"train": ("train2017", "train2014"), "dev": ("val2017", "val2014"), "test": ("val2017", "val2014")}


def _find_annotation(root: Path, split: str) -> tuple[str, Path]:
    for name in (split, *ALIASES.get(split, ())):
        for f in (root / f"captions_{name}.json", root / "annotations" / f"captions_{name}.json"):
            if f.is_file():
                return name, f
    raise DataError(f"{root}: no captions_{split}.json (or its aliases {ALIASES.get(split, ())})")


def read_coco(root: str | Path, split: str, images: str | Path | None = None,
              captions_per_image: int = CAPTIONS_PER_IMAGE) -> Split:
    root = Path(root)
    name, ann_file = _find_annotation(root, split)
    try:
        data = json.loads(ann_file.read_text(encoding="utf-8"))
        image_entries, annotations = data["images"], data["annotations"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{ann_file}: not a COCO captions file ({e})") from e
    image_root = Path(images) if images is not None else root / name
    file_of = {str(im["id"]): im["file_name"] for im in image_entries}
    pairs = [(str(a["image_id"]), check_caption(a["caption"], f"{ann_file}: annotation {a.get('id')}"))
             for a in annotations]
    # COCO images have 5-7 captions; keep images with at least k, in image-list order.
    counts: dict[str, int] = {}
    for image_id, _ in pairs:
        counts[image_id] = counts.get(image_id, 0) + 1
    order = [i for i in file_of if counts.get(i, 0) >= captions_per_image]
    if not order:
        raise DataError(f"{ann_file}: no image has {captions_per_image} captions")
    captions = group_captions(pairs, order, captions_per_image, str(ann_file))
    return Split(split, order, captions, captions_per_image,
                 image_paths=[image_root / file_of[i] for i in order])
