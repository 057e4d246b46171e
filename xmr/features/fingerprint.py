"""Content keys for cached per-split arrays: a cache is reused only for the split it was made from.

A cache folder is named by the dataset spec and options, which say nothing about the split's
*contents*: edit a split list, or point the same spec at another folder, and an old cache would be
misaligned row for row. So each cached array is stored with ``<name>.key.json`` holding a SHA-256
of what it was computed from, in order (the image ids and paths, or the captions, plus the
extractor and its settings); a reader compares it with the split at hand and, on a mismatch,
computes the array again (saying so on stderr) instead of trusting the cache.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path


def content_key(*parts) -> str:
    """SHA-256 of ``parts`` (JSON-serialisable; paths as strings), order-sensitive."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, default=str, ensure_ascii=False).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def image_key(split, *settings) -> str:
    """The content key of a split's images, in order: ids, file paths (None for in-memory or
    precomputed images), the image count, and ``settings`` (extractor name, resolution)."""
    paths = None if split.image_paths is None else [str(Path(p).resolve()) for p in split.image_paths]
    return content_key("images", split.n_images, list(split.image_ids), paths, *settings)


def key_file(path: Path) -> Path:
    return path.with_name(path.name + ".key.json")


def matches(path: Path, key: str) -> bool:
    """Whether the cache at ``path`` was made from content with this key."""
    try:
        return json.loads(key_file(path).read_text()).get("key") == key
    except (OSError, ValueError, AttributeError):
        return False


def write_key(path: Path, key: str, **info) -> None:
    key_file(path).write_text(json.dumps({"key": key, **info}))


def stale(path: Path, what: str) -> None:
    print(f"{path}: cached {what} were made from a different split (its image/caption list or order "
          "changed); computing them again", file=sys.stderr)
