"""Precomputed-feature folders in the VSE++/SCAN release format.

``{split}_ims.npy``: (N, D) or (N, R, D) image features, memory-mapped;
``{split}_caps.txt``: one caption per line, ``captions_per_image`` per image in order.
Optional ``{split}_ids.txt`` names the images (xmr writes it; the public releases do not).
The public releases call the dev split ``dev`` (f30k/coco precomp) and COCO's 5K test ``testall``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from xmr.data.base import CAPTIONS_PER_IMAGE, DataError, Split
from xmr.data.text import read_caption_line


def load_feature_array(path: Path, maps: bool = False) -> np.ndarray:
    """Memory-map a feature .npy and check it: 2 or 3 dims, float dtype, finite values. ``maps``:
    xmr's own cache of CNN activation maps (N, C, g, g) (image input "trunk"), 4 dims; a dataset's
    precomputed features never have 4."""
    if not path.is_file():
        raise DataError(f"{path}: feature file not found")
    arr = _open_npy(path)
    if maps and arr.ndim != 4:
        raise DataError(f"{path}: activation maps must be (N, C, g, g), got shape {arr.shape}")
    if not maps and arr.ndim not in (2, 3):
        raise DataError(f"{path}: features must be (N, D) or (N, R, D), got shape {arr.shape}")
    if 0 in arr.shape:
        raise DataError(f"{path}: features have shape {arr.shape}: no {'rows' if arr.shape[0] == 0 else 'feature values'}"
                        "; every dimension must be > 0 (re-extract or re-export the features)")
    if arr.dtype.kind != "f":
        raise DataError(f"{path}: features must be float16/32/64, got {arr.dtype}")
    # Check finiteness in chunks so a huge file is never loaded whole.
    step = max(1, 2**24 // max(1, int(np.prod(arr.shape[1:]))))
    for s in range(0, len(arr), step):
        bad = ~np.isfinite(arr[s:s + step])
        if bad.any():
            row = s + int(np.argwhere(bad)[0][0])
            raise DataError(f"{path}: row {row} has NaN or inf features")
    return arr


def _open_npy(path: Path) -> np.ndarray:
    """Memory-map a .npy file; a zero-byte, truncated or non-.npy file gets a DataError saying which."""
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: not a readable .npy file (empty, 0 bytes); re-extract or re-export the features")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic != b"\x93NUMPY":
        raise DataError(f"{path}: not a readable .npy file (no NPY header; {size} bytes); write it with numpy.save")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        reason = "truncated (shorter than its header says)" if "length" in str(e) or isinstance(e, EOFError) \
            else "an object (pickled) array or a corrupt header; features must be a float array"
        raise DataError(f"{path}: not a readable .npy file ({reason})") from None


def _nonblank_tail(lines: list[str]) -> list[str]:
    """Drop trailing blank lines (an editor's final newlines); blank lines inside still fail."""
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def read_precomputed(root: str | Path, split: str, captions_per_image: int = CAPTIONS_PER_IMAGE,
                     maps: bool = False) -> Split:
    """A split of a precomputed-feature folder (``maps``: xmr's cache of trunk activation maps)."""
    root = Path(root)
    feats = load_feature_array(root / f"{split}_ims.npy", maps)
    caps_file = root / f"{split}_caps.txt"
    if not caps_file.is_file():
        raise DataError(f"{caps_file}: caption file not found")
    with open(caps_file, "rb") as fh:
        raw_lines = _nonblank_tail(fh.read().split(b"\n"))
    captions = [read_caption_line(raw, caps_file, n)[1] for n, raw in enumerate(raw_lines, 1)]
    k = captions_per_image
    if len(feats) * k != len(captions) and len(feats) == len(captions) and len(feats) % k == 0:
        # Some releases repeat each image's row once per caption (VSE++'s im_div = 1 case).
        head = np.asarray(feats[: min(len(feats), 50 * k)])
        if not np.array_equal(head, np.repeat(head[::k], k, axis=0)):
            raise DataError(f"{root}: {split}_ims.npy has one row per caption ({len(feats)}) but the rows "
                            f"are not repeated per image; expected {len(captions) // k} image rows")
        feats = feats[::k]
    n = len(feats)
    if len(captions) != n * k:
        raise DataError(f"{root}: {split}_ims.npy has {n} rows but {split}_caps.txt has {len(captions)} "
                        f"captions; expected {k} per image ({n * k})")
    ids_file = root / f"{split}_ids.txt"
    if ids_file.is_file():
        with open(ids_file, "rb") as fh:
            ids = [read_caption_line(raw, ids_file, i)[1] for i, raw in enumerate(fh, 1) if raw.strip()]
        if len(ids) != n:
            raise DataError(f"{ids_file}: {len(ids)} image ids for {n} feature rows")
    else:
        ids = [f"{split}-{i}" for i in range(n)]
    return Split(split, ids, captions, captions_per_image, features=feats)
