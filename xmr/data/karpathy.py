"""Karpathy-split JSON (``dataset_flickr8k.json`` / ``dataset_flickr30k.json`` / ``dataset_coco.json``)."""
from __future__ import annotations

import json
from pathlib import Path

from xmr.data.base import CAPTIONS_PER_IMAGE, DataError, Split
from xmr.data.text import check_caption

# Karpathy's split names; COCO's 'restval' is conventionally added to training.
SPLIT_NAMES = {"train": ("train", "restval"), "dev": ("val",), "test": ("test",)}


def read_karpathy(json_path: str | Path, split: str, images: str | Path | None = None,
                  captions_per_image: int = CAPTIONS_PER_IMAGE) -> Split:
    json_path = Path(json_path)
    if not json_path.is_file():
        raise DataError(f"{json_path}: Karpathy split JSON not found")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        entries = data["images"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{json_path}: not a Karpathy split JSON ({e})") from e
    wanted = SPLIT_NAMES.get(split, (split,))
    image_root = Path(images) if images is not None else json_path.parent
    ids, paths, captions = [], [], []
    for n, entry in enumerate(entries):
        if entry.get("split") not in wanted:
            continue
        name = entry["filename"]
        sents = [s.get("raw") or " ".join(s["tokens"]) for s in entry.get("sentences", [])]
        if len(sents) < captions_per_image:
            raise DataError(f"{json_path}: images[{n}] ({name}) has {len(sents)} sentences, "
                            f"needs {captions_per_image}")
        ids.append(name)
        paths.append(image_root / entry.get("filepath", "") / name)
        captions.extend(check_caption(s, f"{json_path}: images[{n}]") for s in sents[:captions_per_image])
    if not ids:
        raise DataError(f"{json_path}: no images in split {split!r} (looked for split in {wanted})")
    return Split(split, ids, captions, captions_per_image, image_paths=paths)
