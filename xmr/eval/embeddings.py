"""Evaluation of any model's embeddings: image and caption vectors from files, xmr's protocol.

The vectors are ranked by exactly the code that evaluates xmr's own models
(``xmr.eval.evaluate.evaluate``: the same bounded-memory blocks, pessimistic tie rule, R@1/5/10,
medr, meanr, rsum, mR, and COCO 1K as the mean over 5 folds). The embeddings stand in for a model
whose encoders are the identity and whose similarity is the chosen score:

- ``ip``: inner product (what CLIP-style models and VSE++ use on normalised vectors);
- ``cosine``: inner product of the L2-normalised vectors;
- ``l2``: negative squared Euclidean distance (closer is higher).

The caption->image assignment is an array of image indices, one per caption (captions may come
in any order and images may have different numbers of captions), or ``captions_per_image`` N
(caption ``j`` belongs to image ``j // N``, the VSE++/Karpathy layout).

The result carries xmr's keys and, under ``"metrics"``, CLIP_benchmark's zero-shot retrieval
keys (``image_retrieval_recall@K`` = text->image R@K, ``text_retrieval_recall@K`` = image->text
R@K, as fractions in [0, 1]), so dashboards that read CLIP_benchmark's JSON read this one.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from xmr.data.base import DataError
from xmr.data.precomputed import load_feature_array
from xmr.eval.evaluate import evaluate
from xmr.eval.recall import RECALL_KS

SCORES = ("ip", "cosine", "l2")


def load_vectors(path: str | Path, what: str) -> np.ndarray:
    """An (N, D) float embedding file, checked (readable .npy, 2-d, float, finite); errors name it."""
    path = Path(path)
    arr = load_feature_array(path)  # readable, float, non-empty, finite
    if arr.ndim != 2:
        raise DataError(f"{path}: {what} embeddings must be a 2-d array (N, D), got shape {arr.shape}")
    return np.asarray(arr)


def load_assignment(path: str | Path, n_captions: int, n_images: int) -> np.ndarray:
    """Each caption's image index (int64, (n_captions,)) from a .npy array or a text file with
    one integer per line; errors name the file (and line) and say what does not fit."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: caption->image assignment file not found")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{path}: not a readable .npy file ({' '.join(str(e).split())[:120]})") from None
        if arr.ndim != 1 or not (arr.dtype.kind in "iu" or (arr.dtype.kind == "f" and np.all(arr == np.round(arr)))):
            raise DataError(f"{path}: the assignment must be a 1-d array of image indices (integers), "
                            f"got {arr.dtype} of shape {arr.shape}")
        caption_image = arr.astype(np.int64)
    else:
        values = []
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                text = raw.strip()
                if not text:
                    continue
                try:
                    values.append(int(text))
                except ValueError:
                    raise DataError(f"{path}:{lineno}: expected an image index (a whole number), got "
                                    f"{text[:40].decode('utf-8', 'replace')!r}") from None
        caption_image = np.asarray(values, dtype=np.int64)
    check_assignment(caption_image, n_captions, n_images, str(path))
    return caption_image


def assignment_from_count(n_images: int, n_captions: int, captions_per_image: int) -> np.ndarray:
    """Caption ``j`` -> image ``j // captions_per_image``, refusing counts that do not fit."""
    if captions_per_image < 1:
        raise DataError(f"--captions-per-image {captions_per_image}: need a whole number >= 1")
    if n_images * captions_per_image != n_captions:
        raise DataError(f"{n_images} images x {captions_per_image} captions per image is "
                        f"{n_images * captions_per_image} captions, but the caption file has {n_captions}; "
                        "give the caption->image assignment (--caption-image FILE) if images have different counts")
    return np.arange(n_captions, dtype=np.int64) // captions_per_image


def check_assignment(caption_image: np.ndarray, n_captions: int, n_images: int, source: str) -> None:
    """One entry per caption, every entry a valid image, every image with at least one caption."""
    if len(caption_image) != n_captions:
        raise DataError(f"{source}: {len(caption_image)} image indices for {n_captions} captions; "
                        "give one per caption, in the caption file's order")
    bad = np.flatnonzero((caption_image < 0) | (caption_image >= n_images))
    if len(bad):
        raise DataError(f"{source}: caption {bad[0]} names image {caption_image[bad[0]]}, outside 0..{n_images - 1} "
                        f"({len(bad)} such captions)")
    owned = np.bincount(caption_image, minlength=n_images)
    if (owned == 0).any():
        lonely = np.flatnonzero(owned == 0)
        raise DataError(f"{source}: image {lonely[0]} has no caption ({len(lonely)} such images); every image "
                        "needs one to be ranked (drop those rows from the image file)")


def dedupe_repeated_images(images: np.ndarray, n_captions: int, captions_per_image: int,
                           source: str) -> np.ndarray:
    """Image rows repeated once per caption (VSE++'s ``im_div`` layout) become one row per image."""
    k = captions_per_image
    if len(images) != n_captions or k == 1 or len(images) % k:
        return images
    if not np.array_equal(images, np.repeat(images[::k], k, axis=0)):
        return images  # not repeated: the count check then says what does not fit
    print(f"{source}: {len(images)} image rows repeat each image {k} times (one per caption); "
          f"evaluating the {len(images) // k} distinct images", file=sys.stderr)
    return images[::k]


class EmbeddingScorer:
    """Precomputed embeddings as a model for ``evaluate``: identity encoders, a fixed score.

    It has what ``xmr.eval.evaluate`` calls on a model (``eval``, ``score_block``,
    ``encode_images``/``encode_texts``, ``similarity``) and nothing else.
    """

    score_block = (1024, 2048)  # the same blocks an embedding model is scored in

    def __init__(self, score: str = "ip"):
        if score not in SCORES:
            raise DataError(f"--score {score!r}: choose one of {', '.join(SCORES)}")
        self.score = score

    def eval(self) -> "EmbeddingScorer":
        return self

    def encode_images(self, batch: dict) -> dict:
        return {"emb": batch["emb"]}

    def encode_texts(self, batch: dict) -> dict:
        return {"emb": batch["emb"]}

    def similarity(self, img: dict, txt: dict) -> torch.Tensor:
        a, b = img["emb"], txt["emb"]
        if self.score == "l2":  # -|a - b|^2 = 2 a.b - |a|^2 - |b|^2
            return 2 * (a @ b.T) - (a * a).sum(1, keepdim=True) - (b * b).sum(1).view(1, -1)
        return a @ b.T


class EmbeddingPairs:
    """Image and caption vectors with their assignment, as the pair data ``evaluate`` reads."""

    def __init__(self, images: np.ndarray, captions: np.ndarray, caption_image: np.ndarray, score: str = "ip"):
        if images.shape[1] != captions.shape[1]:
            raise DataError(f"image embeddings are {images.shape[1]}-d but caption embeddings "
                            f"{captions.shape[1]}-d; both must come from the same joint space")
        check_assignment(caption_image, len(captions), len(images), "the caption->image assignment")
        # float16 files are scored in float32 (CPU matmul); float32/64 keep their precision
        dtype = torch.float64 if images.dtype == np.float64 or captions.dtype == np.float64 else torch.float32
        self.images = torch.tensor(images, dtype=dtype)  # a copy: the arrays may be read-only memory maps
        self.captions = torch.tensor(captions, dtype=dtype)
        if score == "cosine":
            self.images = torch.nn.functional.normalize(self.images, dim=1)
            self.captions = torch.nn.functional.normalize(self.captions, dim=1)
        self.caption_image = np.asarray(caption_image, dtype=np.int64)
        self.n_images, self.n_captions = len(images), len(captions)

    def image_batch(self, idx: np.ndarray) -> dict:
        return {"emb": self.images[torch.as_tensor(idx)]}

    def text_batch(self, idx: np.ndarray) -> dict:
        return {"emb": self.captions[torch.as_tensor(idx)]}


def evaluate_embeddings(images: np.ndarray, captions: np.ndarray, caption_image: np.ndarray,
                        score: str = "ip", folds: int = 1, progress: bool = False) -> dict:
    """xmr's evaluation of the given embeddings, plus CLIP_benchmark's keys under ``"metrics"``."""
    scorer = EmbeddingScorer(score)
    result = evaluate(scorer, EmbeddingPairs(images, captions, caption_image, score), folds=folds,
                      progress=progress)
    result["score"] = score
    result["metrics"] = clip_benchmark_metrics(result)
    return result


def clip_benchmark_metrics(result: dict, ks: tuple[int, ...] = RECALL_KS) -> dict[str, float]:
    """CLIP_benchmark's zero-shot retrieval keys from an xmr result (fractions, not percent).

    CLIP_benchmark's "image retrieval" is a caption querying images (xmr's ``t2i``) and its "text
    retrieval" an image querying captions (``i2t``); its recall@K is 1 for a query with any ground
    truth in the top K, as xmr's R@K.
    """
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = result["t2i"][f"r{k}"] / 100.0
        out[f"text_retrieval_recall@{k}"] = result["i2t"][f"r{k}"] / 100.0
    return out
