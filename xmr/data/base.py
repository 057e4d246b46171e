"""One reader interface for every dataset: splits -> images with ids, their captions, labels.

A reader returns a :class:`Split`; everything downstream (feature extraction, training,
evaluation, indexing) consumes only this type, so a new dataset is one new reader.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

CAPTIONS_PER_IMAGE = 5

SPLITS = ("train", "dev", "test")


class DataError(ValueError):
    """Bad or missing input data; the message names the file (and line) at fault."""


@dataclass
class Split:
    """One split of an image-sentence dataset.

    ``captions[k]`` belongs to image ``caption_image[k]``; readers keep exactly
    ``captions_per_image`` captions per image, in image order, so that
    ``caption_image == arange(n_captions) // captions_per_image`` (the VSE++ convention).
    ``image_paths`` is None for precomputed-feature datasets (features come from ``features``).
    ``labels`` is an (n_images, n_classes) 0/1 matrix where the dataset has class labels.
    """

    name: str
    image_ids: list[str]
    captions: list[str]
    captions_per_image: int = CAPTIONS_PER_IMAGE
    image_paths: list[Path] | None = None
    labels: np.ndarray | None = None
    label_names: list[str] | None = None
    features: np.ndarray | None = None  # precomputed image features, (N, D) or (N, R, D)
    images: Callable[[int], "object"] | None = field(default=None, repr=False)  # in-memory PIL images (synthetic)

    def __post_init__(self) -> None:
        n, k = len(self.image_ids), self.captions_per_image
        if len(self.captions) != n * k:
            raise DataError(
                f"split {self.name!r}: {len(self.captions)} captions for {n} images; "
                f"expected exactly {k} per image ({n * k})"
            )
        check_unique_ids(self.name, self.image_ids)
        if self.labels is not None and len(self.labels) != n:
            raise DataError(f"split {self.name!r}: {len(self.labels)} label rows for {n} images")
        if self.features is not None and len(self.features) != n:
            raise DataError(f"split {self.name!r}: {len(self.features)} feature rows for {n} images")

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    @property
    def caption_image(self) -> np.ndarray:
        return np.arange(len(self.captions)) // self.captions_per_image

    def without_images(self, drop: list[int]) -> "Split":
        """This split minus the images ``drop`` (indices) and their captions; named apart from the
        whole split (``train-minus-3``) so that caches keyed by split name do not mix them."""
        keep = np.setdiff1d(np.arange(self.n_images), np.asarray(drop, dtype=np.int64))
        return self._keep(keep, f"{self.name}-minus-{self.n_images - len(keep)}")

    def rows(self, part: slice) -> "Split":
        """The contiguous images ``part`` (a slice of image indices) and their captions, named apart
        from the whole split (``test-rows32-60``) so that caches keyed by split name do not mix them."""
        start, stop, _ = part.indices(self.n_images)
        return self._keep(np.arange(start, stop), f"{self.name}-rows{start}-{stop}")

    def _keep(self, keep: np.ndarray, name: str) -> "Split":
        k = self.captions_per_image
        return replace(self, name=name,
                       image_ids=[self.image_ids[i] for i in keep],
                       captions=[self.captions[i * k + j] for i in keep for j in range(k)],
                       image_paths=None if self.image_paths is None else [self.image_paths[i] for i in keep],
                       labels=None if self.labels is None else self.labels[keep],
                       features=None if self.features is None else self.features[keep],
                       images=None if self.images is None else (lambda i, f=self.images: f(int(keep[i]))))

    def load_image(self, i: int):
        """The i-th image as an RGB PIL image."""
        if self.images is not None:
            return self.images(i)
        if self.image_paths is None:
            raise DataError(f"split {self.name!r} has precomputed features only, no images")
        from xmr.data.images import load_rgb

        return load_rgb(self.image_paths[i])


def check_unique_ids(name: str, image_ids: list[str]) -> None:
    """A split lists each image once: a repeated id would pair its captions twice (or with another file)."""
    if len(set(image_ids)) != len(image_ids):
        seen: dict[str, int] = {}
        for i, image_id in enumerate(image_ids):
            if image_id in seen:
                raise DataError(f"split {name!r}: image {image_id!r} is listed twice (positions {seen[image_id]} "
                                f"and {i}); list each image once")
            seen[image_id] = i


def check_disjoint(a: "Split", b: "Split", what: str = "") -> None:
    """Refuse two splits that share images (training on test images inflates every result)."""
    shared = set(a.image_ids) & set(b.image_ids)
    if shared:
        first = sorted(shared)[0]
        raise DataError(f"splits {a.name!r} and {b.name!r} share {len(shared)} image(s), e.g. {first!r}"
                        f"{what}; a split's images must not appear in another")


def group_captions(
    pairs: list[tuple[str, str]], order: list[str], k: int, source: str
) -> list[str]:
    """Captions of each image in ``order``: the first ``k`` of its (image_id, caption) pairs.

    Raises DataError naming ``source`` if an image has fewer than ``k`` captions.
    """
    by_image: dict[str, list[str]] = {i: [] for i in order}
    for image_id, caption in pairs:
        if image_id in by_image:
            by_image[image_id].append(caption)
    out: list[str] = []
    for image_id in order:
        caps = by_image[image_id]
        if len(caps) < k:
            raise DataError(f"{source}: image {image_id!r} has {len(caps)} captions, needs {k}")
        out.extend(caps[:k])
    return out
