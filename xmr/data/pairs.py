"""A split's image features and tokenised captions, served as the batches models consume."""
from __future__ import annotations

import copy
from typing import Iterator

import numpy as np
import torch

from xmr.data.base import Split
from xmr.data.text import Vocab


AUGMENTS = ("none", "crop", "flip", "crop-flip")


def augment_maps(maps: torch.Tensor, augment: str, rng: np.random.Generator) -> torch.Tensor:
    """Random crops and/or horizontal flips of activation maps (B, C, g, g), as VSE++'s random-crop
    augmentation ("RC") but on the cached trunk: one crop side per batch, drawn from g-2..g (so
    every row stacks), a random offset and a flip with probability 1/2 per row. uint8 pixels
    (B, R, R, 3) are cropped to a side of 7/8 R..R instead (the CNN pools whatever size it gets)."""
    if maps.dtype == torch.uint8:
        r = maps.shape[1]
        low = r - r // 8
        return _crop_flip(maps.permute(0, 3, 1, 2), augment, rng, low).permute(0, 2, 3, 1).contiguous()
    return _crop_flip(maps, augment, rng, maps.shape[-1] - 2)


def _crop_flip(maps: torch.Tensor, augment: str, rng: np.random.Generator, low: int) -> torch.Tensor:
    b, _, g, _ = maps.shape
    side = int(rng.integers(max(1, low), g + 1)) if "crop" in augment else g
    oy, ox = rng.integers(0, g - side + 1, size=(2, b))
    flip = rng.random(b) < 0.5 if "flip" in augment else np.zeros(b, dtype=bool)
    offs = np.arange(side)
    rows = oy[:, None] + offs  # (B, side)
    cols = np.where(flip[:, None], ox[:, None] + side - 1 - offs, ox[:, None] + offs)
    bi = torch.arange(b)[:, None, None]
    out = maps.permute(0, 2, 3, 1)[bi, torch.from_numpy(rows)[:, :, None], torch.from_numpy(cols)[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


class PairData:
    """Image features (N, D) / (N, R, D) plus the split's captions as padded token ids
    (and any per-caption text features a model reads, such as frozen BERT states).

    Training batches are built per caption (each caption with its image), as VSE++ does; a
    batch's ``same_image`` (B, B) marks pairs of rows that share an image, which must not be
    used as each other's negatives, and ``image_index`` (B,) is each row's image in the split.
    Raw-pixel inputs (uint8 features, ``Inputs(image="pixels")``) are served as uint8.
    """

    def __init__(self, split: Split, vocab: Vocab, max_len: int = 50,
                 text_features: dict[str, np.ndarray] | None = None):
        self.split = split
        self.features = split.features
        self.tokens, self.lengths = vocab.encode_batch(split.captions, max_len)
        self.caption_image = split.caption_image
        self.labels = split.labels  # (n_images, n_classes) 0/1 or None
        self.text_features = text_features or {}  # per-caption arrays, e.g. frozen BERT states
        self.augment = "none"

    def head(self, n_images: int) -> "PairData":
        """The first ``n_images`` images with their captions (e.g. a cheaper dev check)."""
        sub = copy.copy(self)
        keep = self.caption_image < n_images
        sub.features = None if self.features is None else self.features[:n_images]
        sub.labels = None if self.labels is None else self.labels[:n_images]
        sub.tokens, sub.lengths, sub.caption_image = self.tokens[keep], self.lengths[keep], self.caption_image[keep]
        sub.text_features = {k: v[: int(keep.sum())] for k, v in self.text_features.items()}
        return sub

    @property
    def n_images(self) -> int:
        return len(self.features) if self.features is not None else self.split.n_images

    @property
    def n_captions(self) -> int:
        return len(self.tokens)

    @property
    def image_dim(self) -> int:
        return int(self.features.shape[-1])

    def image_batch(self, idx: np.ndarray) -> dict:
        if self.features is None:
            raise ValueError(f"split {self.split.name!r} has no image features; extract them first")
        if self.features.dtype == np.uint8:  # raw pixels (N, R, R, 3), normalised by the model
            return {"image": torch.from_numpy(np.ascontiguousarray(self.features[idx]))}
        return {"image": torch.from_numpy(np.asarray(self.features[idx], dtype=np.float32))}

    def text_batch(self, idx: np.ndarray, trim: bool = False) -> dict:
        """Token ids cut to the longest caption of ``idx``, with the per-caption text features.
        ``trim``: per-word features ``X`` with a mask ``X_mask`` cut so too (training batches):
        cached states are padded to their full width (32 MiniLM positions, far more than most
        captions need) and every model masks padding, so all-padding columns change no result,
        only cost. Without it they keep the full width, so that encoded chunks of a split stack."""
        lengths = self.lengths[idx]
        width = int(lengths.max())
        batch = {"tokens": torch.from_numpy(self.tokens[idx, :width]), "lengths": torch.from_numpy(lengths)}
        widths = {}
        for name in self.text_features if trim else ():
            if name.endswith("_mask") and name[: -len("_mask")] in self.text_features:
                mask = np.asarray(self.text_features[name][idx])
                widths[name] = widths[name[: -len("_mask")]] = int(mask.any(0).nonzero()[0].max(initial=0)) + 1
        for name, values in self.text_features.items():
            rows = values[idx] if name not in widths else values[idx, : widths[name]]
            batch[name] = torch.from_numpy(np.ascontiguousarray(rows))
        return batch

    def pair_batch(self, caption_idx: np.ndarray, augment: str = "none",
                   rng: np.random.Generator | None = None) -> dict:
        images = self.caption_image[caption_idx]
        batch = {**self.image_batch(images), **self.text_batch(caption_idx, trim=True)}
        if augment != "none":
            batch["image"] = augment_maps(batch["image"], augment, rng)
        same = torch.from_numpy(images[:, None] == images[None, :])
        batch["same_image"] = same & ~torch.eye(len(images), dtype=torch.bool)
        batch["image_index"] = torch.from_numpy(images)  # each row's image in the split (its class, Revisiting)
        if self.labels is not None:  # each row's image labels (a caption shares its image's)
            batch["labels"] = torch.from_numpy(np.asarray(self.labels[images], dtype=np.int8))
        return batch

    def set_augment(self, augment: str) -> None:
        """Augment training batches: crops and/or flips of cached activation maps (image input
        ``trunk``) or of uint8 pixels (``pixels``), drawn from the epoch's ``rng``."""
        if augment not in AUGMENTS:
            raise ValueError(f"augment={augment!r}: use one of {', '.join(AUGMENTS)}")
        if augment != "none" and (self.features is None or self.features.ndim != 4):
            raise ValueError(f"augment={augment!r} needs image input 'trunk' or 'pixels' (maps or images)")
        self.augment = augment

    def caption_batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """One epoch's caption ids per batch, in ``rng``'s order (the ragged last batch dropped)."""
        order = rng.permutation(self.n_captions)
        for s in range(0, len(order) - batch_size + 1, batch_size):
            yield order[s: s + batch_size]

    def train_batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[dict]:
        """One epoch of training batches in ``rng``'s order, augmented as ``set_augment`` says."""
        for caps in self.caption_batches(batch_size, rng):
            yield self.pair_batch(caps, self.augment, rng)

    def n_train_batches(self, batch_size: int) -> int:
        return self.n_captions // batch_size

    def by_image(self) -> "ImageBatches":
        """The same data batched per image: every caption of an image in one batch."""
        return ImageBatches(self)


class ImageBatches:
    """Training batches of whole images: each batch is ``k`` images with *all* their captions
    (Revisiting, Sec. 4.2: 45 images x 5 captions), so an epoch shows every image once and every
    caption once. ``batch_size`` counts captions, as for per-caption batches: ``k = batch_size //
    c`` images, ``c`` the split's mean captions per image (5 for Flickr8k and COCO). Rows are
    caption rows as in ``PairData.pair_batch`` (an image repeats once per caption; ``image_index``
    names it, so a model can encode each image once).
    """

    def __init__(self, data: PairData):
        self.data = data
        order = np.argsort(data.caption_image, kind="stable")
        counts = np.bincount(data.caption_image, minlength=data.n_images)
        self.captions_of = np.split(order, np.cumsum(counts)[:-1])  # caption ids of each image
        self.per_image = max(1, round(data.n_captions / max(1, int((counts > 0).sum()))))
        self.images = np.flatnonzero(counts > 0)

    def images_per_batch(self, batch_size: int) -> int:
        return max(1, batch_size // self.per_image)

    def n_train_batches(self, batch_size: int) -> int:
        return len(self.images) // self.images_per_batch(batch_size)

    def caption_batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """One epoch's caption ids per batch: k whole images in ``rng``'s order (ragged end dropped)."""
        k = self.images_per_batch(batch_size)
        order = rng.permutation(self.images)
        for s in range(0, len(order) - k + 1, k):
            yield np.concatenate([self.captions_of[i] for i in order[s: s + k]])

    def train_batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[dict]:
        for caps in self.caption_batches(batch_size, rng):
            yield self.data.pair_batch(caps, self.data.augment, rng)
