"""Builders for the bad-input tests: a tiny, valid precomputed-feature dataset written into a
folder (train/dev/test), which a test then damages in one way. Training on it takes a second."""
from __future__ import annotations

from pathlib import Path

import numpy as np

K = 5


def write_precomputed(root: Path, n: dict | None = None, dim: int = 8, seed: int = 0,
                      feats: dict | None = None) -> Path:
    """``{split}_ims.npy`` (N, dim) float32 and ``{split}_caps.txt`` (5 captions per image) and
    ``{split}_ids.txt`` for train/dev/test; ``feats`` replaces a split's array."""
    n = {"train": 12, "dev": 4, "test": 4} if n is None else n
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    words = ["dog", "cat", "red", "blue", "ball", "tree", "car", "man", "sea", "sky"]
    for split, count in n.items():
        arr = rng.normal(size=(count, dim)).astype(np.float32) if feats is None or split not in feats \
            else feats[split]
        np.save(root / f"{split}_ims.npy", arr)
        caps = [f"a {words[i % 10]} and a {words[(i * 3 + j) % 10]} {split}" for i in range(count) for j in range(K)]
        (root / f"{split}_caps.txt").write_text("".join(c + "\n" for c in caps), encoding="utf-8")
        (root / f"{split}_ids.txt").write_text("".join(f"{split}-{i}.jpg\n" for i in range(count)),
                                               encoding="utf-8")
    return root


def tiny_train_args(data: str, out: Path, cache: Path, *extra: str) -> list[str]:
    """``xmr train`` arguments for a 1-epoch VSE++ run on ``data``."""
    return ["train", "--model", "vsepp", "--preset", "tiny", "--data", data, "--out", str(out),
            "--cache", str(cache), "--quiet", "--set", "epochs=1", "--set", "batch_size=8",
            "--set", "word_vectors=none", "--threads", "1", *extra]
