"""Where features live and how a model's image input is served from them.

Extracted features are cached under ``<cache>/features/<dataset key>/<extractor>/`` and reused;
precomputed-feature datasets bring their own. A joined extractor (``a+b``) reads each part's folder and
serves their features side by side. A model asks for ``pooled`` (N, D) or ``regions``
(N, R, D) input; pooled input from a region file is the region mean, and region input from a
pooled file is a single region. A model that runs its own CNN asks for ``pixels``: the images
resized to R x R, uint8, cached under ``<cache>/pixels/<dataset key>/<R>/``. Text read through
MiniLM (``"bert"`` in ``Inputs.text``) is served as ``bert``/``bert_mask`` from
``<cache>/text/<dataset key>/``, at the layer ``Inputs.bert_tail`` asks for.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from xmr.data import DatasetSpec, Split, open_split
from xmr.data.base import DataError
from xmr.data.pairs import PairData
from xmr.data.precomputed import read_precomputed
from xmr.data.text import Vocab
from xmr.features.image import JOIN, extract_parts, join_features
from xmr.interface import Inputs

DEFAULT_CACHE = Path(os.environ.get("XMR_CACHE", "runs/cache"))
IMAGE_INPUTS = ("pooled", "regions", "trunk")


def feature_root(spec: DatasetSpec, extractor: str, cache: Path = DEFAULT_CACHE) -> Path:
    """The cache folder of one extractor's features (a joined extractor's parts have one each)."""
    return Path(cache) / "features" / spec.key / extractor


def split_with_features(data: str | DatasetSpec, split: str, image_input: str,
                        extractor: str = "efficientnet-lite0-224", cache: Path = DEFAULT_CACHE,
                        progress: bool = True, on_bad_input: str = "fail", resolution: int = 0,
                        rows: Callable[[int], slice] | None = None) -> Split:
    """The split with ``features`` set to what ``image_input`` asks for, extracting on first use.

    ``rows`` (given the split's image count, a slice of it) keeps only those images and their
    captions, before anything is extracted: one process's share of a sharded build
    (``Split.rows``; the share is cached under its own name).

    ``image_input="pixels"`` gives the raw images instead, uint8 (N, R, R, 3) at ``resolution``
    R, cached under ``<cache>/pixels/`` (``xmr/features/pixels.py``; ``extractor`` is not used).
    Unreadable images stop with a DataError naming the file (``on_bad_input="fail"``) or are left
    out with their captions, counted on stderr (``"skip"``).
    """
    spec = DatasetSpec.of(data)
    if image_input not in IMAGE_INPUTS + ("pixels",):
        raise ValueError(f"image input must be one of {IMAGE_INPUTS} or pixels, not {image_input!r}")
    raw = open_split(spec, split)
    if rows is not None:
        raw = raw.rows(rows(raw.n_images))
    split = raw.name
    if image_input == "pixels":
        from xmr.features.pixels import split_with_pixels

        return split_with_pixels(raw, spec.key, resolution, cache, progress, on_bad_input)
    if raw.features is None:
        kind = {"regions": "grid", "pooled": "pooled", "trunk": "trunk"}[image_input]
        folders, skipped, _ = extract_parts(raw, lambda name: feature_root(spec, name, cache), extractor, kind,
                                            progress=progress, on_bad_input=on_bad_input)
        raw.features = join_features([read_precomputed(d, split, raw.captions_per_image, maps=kind == "trunk").features
                                      for d in folders], extractor.split(JOIN))
        if skipped and on_bad_input == "fail":
            first = skipped[0]
            raise DataError(f"{len(skipped)} image(s) of split {split!r} could not be read when its features "
                            f"were extracted, first {first['id']}: {first['reason']}; use --on-bad-input skip "
                            "to leave them out")
        if skipped:
            print(f"{split}: left out {len(skipped)} unreadable image(s) and their captions "
                  f"({folders[0].parent / (split + '.skipped.json')})", file=sys.stderr)
            raw = raw.without_images([r["index"] for r in skipped])
    feats = raw.features
    if image_input == "trunk" and feats.ndim != 4:
        raise DataError(f"image input 'trunk' needs cached activation maps; {spec.key} brings "
                        f"precomputed features of shape {feats.shape[1:]}")
    if image_input == "pooled" and feats.ndim == 3:
        raw.features = np.asarray(feats, dtype=np.float32).mean(1)
    elif image_input == "regions" and feats.ndim == 2:
        raw.features = feats[:, None, :]
    return raw


def pair_data(data: str | DatasetSpec, split: str, inputs: Inputs, vocab: Vocab, max_len: int,
              extractor: str = "efficientnet-lite0-224", cache: Path = DEFAULT_CACHE,
              progress: bool = True, on_bad_input: str = "fail",
              rows: Callable[[int], slice] | None = None) -> PairData:
    """Everything a model with these ``inputs`` reads from one split (or its ``rows``, as
    ``split_with_features`` takes them), ready for batching."""
    spec = DatasetSpec.of(data)
    s = split_with_features(spec, split, inputs.image, extractor, cache, progress, on_bad_input,
                            resolution=inputs.pixels, rows=rows)
    if inputs.labels:
        from xmr.data.keyword_labels import with_labels

        with_labels(s)
    extra = {}
    if "bert" in inputs.text:
        from xmr.features.text import bert_states

        states, mask = bert_states(s.captions, Path(cache) / "text" / spec.key, s.name, progress=progress,
                                   tail_layers=inputs.bert_tail)
        extra = {"bert": states, "bert_mask": mask}
    return PairData(s, vocab, max_len, extra)
