"""Flickr8k as a class-labelled two-modality set, from its cached image and text features (CMMN's
input on Flickr8k), and the opener of every labelled set by its spec."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from xmr.data import DatasetSpec, open_split
from xmr.data.keyword_labels import LABEL_NAMES, keyword_labels
from xmr.data.labelled_sets import LabelledSet, Modality, open_labelled
from xmr.features.store import DEFAULT_CACHE, split_with_features
from xmr.features.text import bert_states
from xmr.interface import sentence_vectors


def flickr8k_labelled(cache: Path = DEFAULT_CACHE, extractor: str = "efficientnet-lite0-224",
                      progress: bool = True) -> LabelledSet:
    """Flickr8k as a labelled two-modality set: ``image`` = pooled CNN features, ``text`` = each
    caption's mean MiniLM token state (``sentence_vectors``), labels = the caption-keyword classes
    (xmr/data/keyword_labels.py; a caption has its image's labels). Items without any class are left out,
    as the hashing literature prunes unlabelled COCO images."""
    parts: dict[str, dict[str, list]] = {"image": {"x": [], "y": []}, "text": {"x": [], "y": []}}
    splits: dict[str, dict[str, np.ndarray]] = {"image": {}, "text": {}}
    offset = {"image": 0, "text": 0}
    for name in ("train", "dev", "test"):
        s = split_with_features("flickr8k", name, "pooled", extractor, cache, progress)
        labels = keyword_labels(open_split("flickr8k", name)).astype(bool)
        states, mask = bert_states(s.captions, Path(cache) / "text" / DatasetSpec.parse("flickr8k").key, name,
                                   progress=progress)
        text = np.concatenate([sentence_vectors(torch.from_numpy(np.asarray(states[i:i + 4096], np.float32)),
                                                torch.from_numpy(np.array(mask[i:i + 4096]))).numpy()
                               for i in range(0, len(states), 4096)])
        caption_labels = labels[s.caption_image]
        for mod, x, y in (("image", np.asarray(s.features, np.float32), labels), ("text", text, caption_labels)):
            keep = y.any(1)
            parts[mod]["x"].append(x[keep])
            parts[mod]["y"].append(y[keep])
            splits[mod][name] = np.arange(offset[mod], offset[mod] + int(keep.sum()))
            offset[mod] += int(keep.sum())
    modalities = {m: Modality(np.concatenate(p["x"]), np.concatenate(p["y"]), splits[m]) for m, p in parts.items()}
    return LabelledSet("flickr8k", modalities, list(LABEL_NAMES), aligned=False)


def labelled_set(data: str, cache: Path = DEFAULT_CACHE, extractor: str = "efficientnet-lite0-224",
                 progress: bool = True, seed: int = 0) -> LabelledSet:
    """``flickr8k`` (``flickr8k_labelled``) or any spec of ``xmr.data.labelled_sets.open_labelled``."""
    if data == "flickr8k":
        return flickr8k_labelled(cache, extractor, progress)
    return open_labelled(data, seed)
