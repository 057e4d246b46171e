"""Class labels for datasets that have none (Flickr8k), derived from the captions by keywords.

JGCAR's intra-modal triplets (J2, J3) and CMMN learn from object/scene labels; Flickr30K/COCO give
them from annotations, Flickr8k does not. Here an image gets class ``c`` when at least
``min_captions`` of its captions contain one of ``KEYWORDS[c]`` (whole tokens, see ``tokenize``);
its captions share the image's labels. The vote keeps one annotator's passing mention from
labelling an image. Images without any class have no positives (they are everyone's negative).
"""
from __future__ import annotations

import numpy as np

from xmr.data.base import Split
from xmr.data.text import tokenize

# Frequent, visually grounded Flickr8k concepts: animals, vehicles/objects, scenes, people groups.
KEYWORDS: dict[str, tuple[str, ...]] = {
    "dog": ("dog", "dogs", "puppy", "puppies"),
    "horse": ("horse", "horses", "pony"),
    "bird": ("bird", "birds", "duck", "ducks", "seagull"),
    "cat": ("cat", "cats", "kitten"),
    "ball": ("ball", "balls", "football", "soccer", "basketball", "baseball", "volleyball", "tennis"),
    "bicycle": ("bike", "bikes", "bicycle", "bicycles", "biker", "bikers", "cyclist", "bmx"),
    "motor vehicle": ("car", "cars", "truck", "bus", "motorcycle", "motorbike", "jeep", "vehicle"),
    "skateboard": ("skateboard", "skateboarder", "skateboarding", "skater", "skateboards"),
    "boat": ("boat", "boats", "canoe", "kayak", "raft", "surfboard", "surfer", "surfing"),
    "water": ("water", "pool", "lake", "river", "ocean", "sea", "waves", "wave", "stream", "swimming"),
    "beach": ("beach", "sand", "sandy", "shore"),
    "snow": ("snow", "snowy", "ski", "skier", "skiing", "snowboard", "snowboarder", "sled"),
    "grass": ("grass", "grassy", "field", "lawn", "meadow", "park"),
    "street": ("street", "road", "sidewalk", "city", "crosswalk", "traffic"),
    "mountain": ("mountain", "mountains", "hill", "hillside", "cliff", "rock", "rocks", "rocky", "climbing", "climber"),
    "building": ("building", "buildings", "house", "store", "shop", "restaurant", "wall", "stage"),
    "child": ("child", "children", "kid", "kids", "boy", "boys", "girl", "girls", "baby", "toddler"),
    "man": ("man", "men", "guy", "guys"),
    "woman": ("woman", "women", "lady", "ladies"),
    "crowd": ("crowd", "group", "people", "team", "audience", "players"),
}
LABEL_NAMES = list(KEYWORDS)


def caption_keyword_labels(captions: list[str]) -> np.ndarray:
    """(n_captions, n_classes) 0/1: which classes each caption mentions."""
    word_class = {w: c for c, words in enumerate(KEYWORDS.values()) for w in words}
    out = np.zeros((len(captions), len(KEYWORDS)), dtype=np.int8)
    for k, caption in enumerate(captions):
        hits = [word_class[w] for w in tokenize(caption) if w in word_class]
        out[k, hits] = 1
    return out


def keyword_labels(split: Split, min_captions: int = 2) -> np.ndarray:
    """(n_images, n_classes) 0/1 image labels by caption vote (see the module docstring)."""
    per_caption = caption_keyword_labels(split.captions)
    votes = per_caption.reshape(split.n_images, split.captions_per_image, -1).sum(1)
    return (votes >= min(min_captions, split.captions_per_image)).astype(np.int8)


def with_labels(split: Split) -> Split:
    """The split with ``labels`` set: its own where it has them, else keyword labels."""
    if split.labels is None:
        split.labels = keyword_labels(split)
        split.label_names = LABEL_NAMES
    return split
