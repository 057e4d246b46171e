"""Whether a search result stands out from the collection, for this query: its z-score.

A raw score cannot say "nothing matches": its scale depends on the model, the query and the
collection (a VSE++ on photos unlike its training data gives scores in the same narrow band to
good and bad results). What a person can read is how far a result lies above what *this query*
scores against the collection at large. So the index stores, at build time, a fixed random
sample of the collection's first-stage vectors (``sample_<side>.npy``, at most ``SAMPLE`` rows,
the whole collection when it is smaller), and a query is scored against it (one matrix-vector
product, whatever the collection's size): a hit's

    z = (score - mean) / std     (mean, std of the query's scores over the sample)

Some item is always best, so the top hit's z is compared with what the best of ``N`` unrelated
items reaches by chance: for scores spread like a normal distribution, the median of the
largest of ``N`` draws is ``z_chance(N) = Phi^-1(0.5 ** (1 / N))`` (2.3 for N = 60, 3.2 for 1,000,
4.5 for 1M). A hit is a ``"strong"`` match at ``z >= z_chance(N) + MARGIN``, ``"weak"`` at
``z >= z_chance(N)`` and ``"none"`` below: it stands out no more than the best of N unrelated
items would. The z-score is of the *first-stage* score (the vectors the sample holds); a pairwise
model's re-ranked score is reported beside it, unchanged.
"""
from __future__ import annotations

from functools import lru_cache
from statistics import NormalDist

import numpy as np

SAMPLE = 4096
MARGIN = 1.0  # standard deviations beyond chance for a "strong" match


def sample_rows(n: int, size: int = SAMPLE, seed: int = 0) -> np.ndarray:
    """Sorted indices of the reference sample of an ``n``-item collection (all when ``n <= size``)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


@lru_cache(maxsize=256)
def chance_z(n: int) -> float:
    """Median z-score of the best of ``n`` items scored at random (normal scores)."""
    if n <= 1:
        return 0.0
    return NormalDist().inv_cdf(0.5 ** (1.0 / n))


def sample_scores(sample: np.ndarray, query: np.ndarray, metric: str) -> np.ndarray:
    """The query's (d,) first-stage scores against every sample row, higher = closer:
    inner product (``"ip"``), negative squared distance (``"l2"``) or negative Hamming distance of
    0/1 codes (``"hamming"``)."""
    if metric == "ip":
        return sample @ query
    if metric == "l2":
        return -((sample - query) ** 2).sum(1)
    return -(sample != query).sum(1).astype(np.float32)


def z_scores(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``scores`` in standard deviations above the reference scores' mean; 0 where the reference
    has no spread (every item scores the same: nothing stands out) or a score is not finite."""
    reference = reference[np.isfinite(reference)]
    if len(reference) < 2:
        return np.zeros(len(scores))
    mean, std = float(reference.mean()), float(reference.std())
    if not std > 0:
        return np.zeros(len(scores))
    z = (np.asarray(scores, dtype=np.float64) - mean) / std
    return np.where(np.isfinite(z), z, 0.0)


def verdict(z: float, n: int) -> str:
    """``"strong"``, ``"weak"`` or ``"none"``: how far ``z`` lies beyond the best of ``n`` at random."""
    threshold = chance_z(n)
    if z >= threshold + MARGIN:
        return "strong"
    return "weak" if z >= threshold else "none"
