"""Raw image pixels as a model input (``Inputs(image="pixels", pixels=R)``), cached once per split.

Models that train their own CNN end to end (Revisiting: one network for images and encoded
sentences) read the images themselves rather than extracted features. Every image of a split is
decoded once, resized to ``R x R`` exactly as ``xmr.data.images.to_tensor_array`` does for the
feature extractor (bicubic, aspect ratio not kept) but left un-normalised, and stored as uint8
``(N, R, R, 3)`` in ``<cache>/pixels/<dataset key>/<R>/<split>.npy``, read back memory-mapped
(6000 Flickr8k training images take 1.2 GB at 256², 0.3 GB at 128²). The model normalises.

The file is written under a per-process ``.partial`` name and moved into place with
``os.replace``, so a reader never sees half a file and two processes filling the same cache at
once do not interfere (the last finished copy wins; both are identical). Unreadable images follow
``on_bad_input`` as feature extraction does: stop with a DataError naming the file, or (``skip``)
leave them out with their captions, listed in ``<split>.skipped.json`` beside the array.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from xmr.data.base import DataError, Split
from xmr.features.fingerprint import image_key, matches, stale, write_key


def pixel_root(dataset_key: str, resolution: int, cache: str | Path) -> Path:
    return Path(cache) / "pixels" / dataset_key / str(int(resolution))


def resized_pixels(im: Image.Image, size: int) -> np.ndarray:
    """``to_tensor_array``'s resize (bicubic to size x size) without the normalisation: uint8 (size, size, 3)."""
    return np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.uint8)


def cache_pixels(split: Split, root: str | Path, resolution: int, progress: bool = True,
                 on_bad_input: str = "fail") -> tuple[np.ndarray, list[dict]]:
    """The split's images as uint8 (N, R, R, 3), memory-mapped, decoding them on first use.

    Returns the array and the images that could not be read (``on_bad_input="skip"``; their rows
    are black). With ``"fail"`` the first unreadable image raises a DataError naming it.
    """
    if on_bad_input not in ("fail", "skip"):
        raise ValueError(f"on_bad_input must be 'fail' or 'skip', not {on_bad_input!r}")
    if resolution < 1:
        raise ValueError(f"pixel input needs a resolution >= 1, got {resolution}")
    if split.image_paths is None and split.images is None:
        raise DataError(f"split {split.name!r} has precomputed features only; a model reading raw "
                        "pixels needs the images")
    root = Path(root)
    path, skipped_file = root / f"{split.name}.npy", root / f"{split.name}.skipped.json"
    key = image_key(split, "pixels", int(resolution))
    if path.is_file():
        arr = np.load(path, mmap_mode="r")
        if arr.shape == (split.n_images, resolution, resolution, 3) and arr.dtype == np.uint8 \
                and matches(path, key):
            skipped = json.loads(skipped_file.read_text()) if skipped_file.is_file() else []
            return arr, skipped
        stale(path, "pixels")  # a stale file (the split's images changed): rebuild it
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{split.name}.npy.{os.getpid()}.partial"
    n = split.n_images
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, resolution, resolution, 3))
    skipped: list[dict] = []
    try:
        for i in tqdm(range(n), desc=f"pixels {split.name} {resolution}²", unit="img", disable=not progress):
            try:
                out[i] = resized_pixels(split.load_image(i), resolution)
            except DataError as e:
                if on_bad_input == "fail":
                    raise
                out[i] = 0
                skipped.append({"index": i, "id": split.image_ids[i], "reason": str(e)})
        out.flush()
        del out
        if skipped:
            skipped_file.write_text(json.dumps(skipped, indent=1))
        else:
            skipped_file.unlink(missing_ok=True)
        os.replace(tmp, path)
        write_key(path, key, images=n, resolution=int(resolution))
    finally:
        tmp.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r"), skipped


def split_with_pixels(split: Split, dataset_key: str, resolution: int, cache: str | Path,
                      progress: bool = True, on_bad_input: str = "fail") -> Split:
    """``split`` with ``features`` = its uint8 (N, R, R, 3) pixels (see the module docstring)."""
    root = pixel_root(dataset_key, resolution, cache)
    pixels, skipped = cache_pixels(split, root, resolution, progress, on_bad_input)
    if skipped and on_bad_input == "fail":
        first = skipped[0]
        raise DataError(f"{len(skipped)} image(s) of split {split.name!r} could not be read when its pixels "
                        f"were cached, first {first['id']}: {first['reason']}; use --on-bad-input skip "
                        "to leave them out")
    split.features = pixels
    if skipped:
        print(f"{split.name}: left out {len(skipped)} unreadable image(s) and their captions "
              f"({root / (split.name + '.skipped.json')})", file=sys.stderr)
        split = split.without_images([r["index"] for r in skipped])
    return split
