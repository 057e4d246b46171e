"""Datasets behind one reader interface: ``open_split(spec, split) -> Split``.

A dataset spec is ``kind[:path][,key=value...]``:

- ``synthetic`` or ``synthetic,seed=1,n_train=500`` - the built-in generated set;
- ``flickr8k:../shared/datasets/flickr8k`` - the official Flickr8k layout;
- ``karpathy:dataset_flickr30k.json,images=flickr30k-images`` - Karpathy-split JSON;
- ``coco:annotations[,images=DIR]`` - COCO ``captions_*.json``: the path is the folder holding them
  (or ``annotations/`` under it) or one ``captions_<name>.json`` file; ``images=DIR`` is one folder
  of images or a folder with ``train2017/``, ``val2017/``, ... (default: beside ``annotations/``);
  ``dev`` and ``test`` are both COCO's val file (a warning says so; see ``xmr/data/coco.py``);
- ``precomputed:data/f30k_precomp`` - VSE++/SCAN ``{split}_ims.npy`` + ``{split}_caps.txt``;
- ``csv:DIR[,images=DIR,sep=tab|comma,img_key=filepath,caption_key=caption]`` - open_clip's CSV,
  one row per caption, ``DIR/{train,dev,test}.csv`` (or one of those files; ``xmr/data/csv_reader.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from xmr.data.base import CAPTIONS_PER_IMAGE, SPLITS, DataError, Split
from xmr.data.coco import read_coco
from xmr.data.csv_reader import read_csv
from xmr.data.flickr8k import read_flickr8k
from xmr.data.karpathy import read_karpathy
from xmr.data.precomputed import read_precomputed
from xmr.data.synthetic import read_synthetic
from xmr.options import key_values

__all__ = ["DataError", "DatasetSpec", "Split", "SPLITS", "open_split"]

KINDS = ("synthetic", "flickr8k", "karpathy", "coco", "precomputed", "csv")
# The checkout sits beside shared/ (as in CI); override with flickr8k:PATH.
DEFAULT_FLICKR8K = str(Path(__file__).resolve().parents[3] / "shared" / "datasets" / "flickr8k")


@dataclass(frozen=True)
class DatasetSpec:
    kind: str
    path: str | None = None
    options: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> "DatasetSpec":
        head, *opts = spec.split(",")
        kind, _, path = head.partition(":")
        if kind not in KINDS:
            raise DataError(f"unknown dataset kind {kind!r} in {spec!r}; choose one of {', '.join(KINDS)}")
        options = key_values(opts, lambda opt: DataError(f"dataset option {opt!r} in {spec!r} is not key=value"),
                             typed=False)
        if kind == "flickr8k" and not path:
            path = DEFAULT_FLICKR8K
        if kind in ("karpathy", "coco", "precomputed", "csv") and not path:
            raise DataError(f"dataset {kind!r} needs a path: {kind}:PATH")
        check_options(kind, options, spec)
        return cls(kind, path or None, options)

    @classmethod
    def of(cls, spec: "str | DatasetSpec") -> "DatasetSpec":
        """``spec`` parsed, or as it is if it already is one: parse a spec once, pass the result on."""
        return spec if isinstance(spec, DatasetSpec) else cls.parse(spec)

    @property
    def key(self) -> str:
        """A filesystem-safe name for caches of this dataset."""
        from hashlib import sha1

        if self.kind == "synthetic":
            return "synthetic-" + "-".join(f"{k}{v}" for k, v in sorted(self.options.items()))
        path = str(Path(self.path).resolve()) if self.path else None  # one cache however it is spelled
        digest = sha1(repr((path, sorted(self.options.items()))).encode()).hexdigest()[:8]
        return f"{self.kind}-{digest}"


OPTIONS = {"synthetic": ("seed", "n_<split>"), "flickr8k": (), "karpathy": ("images",), "coco": ("images",),
           "precomputed": (), "csv": ("images", "sep", "img_key", "caption_key")}
INT_OPTIONS = ("captions_per_image", "seed")


def check_options(kind: str, options: dict, spec: str) -> None:
    """Refuse an option the dataset kind does not read (a typo would otherwise be ignored) and
    non-integer counts, naming the option."""
    allowed = ("captions_per_image", *OPTIONS[kind])
    for key, value in options.items():
        if key not in allowed and not (kind == "synthetic" and key.startswith("n_")):
            raise DataError(f"dataset option {key!r} in {spec!r}: {kind} takes {', '.join(allowed)}")
        if key in INT_OPTIONS or key.startswith("n_"):
            try:
                number = int(value)
            except ValueError:
                raise DataError(f"dataset option {key}={value!r} in {spec!r}: expected a whole number") from None
            if number < (0 if key == "seed" else 1):
                raise DataError(f"dataset option {key}={value} in {spec!r}: must be >= "
                                f"{0 if key == 'seed' else 1}")


def open_split(spec: str | DatasetSpec, split: str) -> Split:
    """Read one split of a dataset."""
    s = DatasetSpec.of(spec)
    k = int(s.options.get("captions_per_image", CAPTIONS_PER_IMAGE))
    if s.kind == "synthetic":
        n = s.options.get(f"n_{split}")
        return read_synthetic(split, seed=int(s.options.get("seed", 0)),
                              n_images=int(n) if n else None, captions_per_image=k)
    if s.kind == "flickr8k":
        return read_flickr8k(s.path, split, k)
    if s.kind == "karpathy":
        return read_karpathy(s.path, split, s.options.get("images"), k)
    if s.kind == "coco":
        return read_coco(s.path, split, s.options.get("images"), k)
    if s.kind == "csv":
        return read_csv(s.path, split, s.options.get("images"), k, s.options.get("sep"),
                        s.options.get("img_key", "filepath"), s.options.get("caption_key", "caption"))
    return read_precomputed(s.path, split, k)
