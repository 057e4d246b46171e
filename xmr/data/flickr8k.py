"""Flickr8k in its official layout (Hodosh et al. 2013): token file plus split lists."""
from __future__ import annotations

from pathlib import Path

from xmr.data.base import CAPTIONS_PER_IMAGE, DataError, Split, group_captions
from xmr.data.text import read_caption_line

SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt",
               "test": "Flickr_8k.testImages.txt"}


def read_flickr8k(root: str | Path, split: str, captions_per_image: int = CAPTIONS_PER_IMAGE) -> Split:
    root = Path(root)
    text_dir, image_dir = root / "Flickr8k_text", root / "Flicker8k_Dataset"
    if split not in SPLIT_FILES:
        raise DataError(f"flickr8k has splits {sorted(SPLIT_FILES)}, not {split!r}")
    split_file = text_dir / SPLIT_FILES[split]
    token_file = text_dir / "Flickr8k.token.txt"
    for f in (split_file, token_file):
        if not f.is_file():
            raise DataError(f"{f}: missing (expected the official Flickr8k layout under {root})")
    listed = []  # (line number, image id)
    with open(split_file, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if raw.strip():
                listed.append((lineno, read_caption_line(raw, split_file, lineno)[1]))
    if not listed:
        raise DataError(f"{split_file}: lists no images (expected one image file name per line, "
                        "as in the official Flickr8k split lists)")
    pairs = []
    with open(token_file, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if raw.strip():
                key, caption = read_caption_line(raw, token_file, lineno, sep="\t")
                pairs.append((key.rsplit("#", 1)[0], caption))
    known = {p[0] for p in pairs}
    for lineno, image_id in listed:
        if image_id not in known:
            raise DataError(f"{split_file}:{lineno}: image {image_id!r} has no captions in {token_file.name}")
    order = [image_id for _, image_id in listed]
    captions = group_captions(pairs, order, captions_per_image, str(token_file))
    return Split(split, order, captions, captions_per_image, image_paths=[image_dir / i for i in order])
