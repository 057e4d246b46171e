"""Flickr8k as a class-labelled two-modality set, from its cached image and text features (CMMN's
input on Flickr8k), and the opener of every labelled set by its spec."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from xmr.data import DatasetSpec
from xmr.data.keyword_labels import LABEL_NAMES, keyword_labels
from xmr.data.labelled_sets import LabelledSet, Modality, open_labelled
from xmr.features.store import DEFAULT_CACHE, split_with_features
from xmr.features.text import bert_states
from xmr.interface import sentence_vectors

# The label-model specs of Flickr8k (``labelled_set``): unaligned (one text item per caption) and
# aligned (one item per image, in both modalities).
FLICKR8K_SETS = ("flickr8k", "flickr8k-aligned")


def _flickr8k_splits(data: str, cache: Path, extractor: str, progress: bool
                     ) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per split of ``data`` (a flickr8k dataset spec): name, pooled image features (n_images, D),
    caption vectors (n_captions, 384, ``sentence_vectors``), each caption's image index and the
    images' caption-keyword labels (n_images, n_classes, bool)."""
    for name in ("train", "dev", "test"):
        s = split_with_features(data, name, "pooled", extractor, cache, progress)
        labels = keyword_labels(s).astype(bool)
        states, mask = bert_states(s.captions, Path(cache) / "text" / DatasetSpec.parse(data).key, name,
                                   progress=progress)
        text = np.concatenate([sentence_vectors(torch.from_numpy(np.asarray(states[i:i + 4096], np.float32)),
                                                torch.from_numpy(np.array(mask[i:i + 4096]))).numpy()
                               for i in range(0, len(states), 4096)])
        yield name, np.asarray(s.features, np.float32), text, np.asarray(s.caption_image, np.int64), labels


def per_image_mean(text: np.ndarray, caption_image: np.ndarray, n_images: int) -> np.ndarray:
    """(n_images, D) float32: the mean of each image's caption vectors (``caption_image[j]`` is
    caption j's image); every image must have a caption."""
    counts = np.bincount(caption_image, minlength=n_images)
    if (counts == 0).any():
        raise ValueError(f"images without captions: {np.flatnonzero(counts == 0)[:5].tolist()}")
    sums = torch.zeros(n_images, text.shape[1], dtype=torch.float64).index_add_(
        0, torch.from_numpy(caption_image), torch.from_numpy(text).double())
    return (sums / torch.from_numpy(counts).double()[:, None]).float().numpy()


def flickr8k_labelled(cache: Path = DEFAULT_CACHE, extractor: str = "efficientnet-lite0-224",
                      progress: bool = True, aligned: bool = False, data: str = "flickr8k") -> LabelledSet:
    """Flickr8k as a labelled two-modality set: ``image`` = pooled CNN features, ``text`` = each
    caption's mean MiniLM token state (``sentence_vectors``), labels = the caption-keyword classes
    (xmr/data/keyword_labels.py; a caption has its image's labels). Items without any class are left out,
    as the hashing literature prunes unlabelled COCO images.

    ``aligned=False`` (spec ``flickr8k``): one text item per caption, 5 per image, so the modalities
    have unrelated rows that only share labels. ``aligned=True`` (spec and set name
    ``flickr8k-aligned``): one item per image, row i of both modalities is image i and its text is
    the mean of its 5 caption vectors, so the fused-code protocol of the paper's COCO experiment
    (one code ``b = (h_img + h_txt > 1)`` per database item, ``xmr.eval.labelled.fused_codes``)
    applies. One item per image rather than one per (image, caption) pair: pairs would repeat every
    image 5 times, so the database would hold 5 identical image codes per training image (and
    every fused code would share its image side with 4 others) and training would weigh images 5
    times over; the paper's COCO set is one pair per image too (82,081 pairs from 82,783 images).
    Labels and the dropped unlabelled images are the same either way. ``data``: the flickr8k dataset spec (``flickr8k:PATH`` for another copy)."""
    parts: dict[str, dict[str, list]] = {"image": {"x": [], "y": []}, "text": {"x": [], "y": []}}
    splits: dict[str, dict[str, np.ndarray]] = {"image": {}, "text": {}}
    offset = {"image": 0, "text": 0}
    for name, images, text, caption_image, labels in _flickr8k_splits(data, cache, extractor, progress):
        if aligned:
            text, text_labels = per_image_mean(text, caption_image, len(images)), labels
        else:
            text_labels = labels[caption_image]
        for mod, x, y in (("image", images, labels), ("text", text, text_labels)):
            keep = y.any(1)
            parts[mod]["x"].append(x[keep])
            parts[mod]["y"].append(y[keep])
            splits[mod][name] = np.arange(offset[mod], offset[mod] + int(keep.sum()))
            offset[mod] += int(keep.sum())
    modalities = {m: Modality(np.concatenate(p["x"]), np.concatenate(p["y"]), splits[m]) for m, p in parts.items()}
    return LabelledSet("flickr8k-aligned" if aligned else "flickr8k", modalities, list(LABEL_NAMES), aligned=aligned)


def labelled_set(data: str, cache: Path = DEFAULT_CACHE, extractor: str = "efficientnet-lite0-224",
                 progress: bool = True, seed: int = 0) -> LabelledSet:
    """``flickr8k`` / ``flickr8k-aligned`` (``flickr8k_labelled``) or any spec of
    ``xmr.data.labelled_sets.open_labelled``."""
    if data in FLICKR8K_SETS:
        return flickr8k_labelled(cache, extractor, progress, aligned=data == "flickr8k-aligned")
    return open_labelled(data, seed)
