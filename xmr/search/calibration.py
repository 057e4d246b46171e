"""Does anything match? Reading a hit's score against what top hits score in the model's own domain.

A raw score means little to a person: it depends on the model and the direction of search, and a
collection unlike the training data (or an uploaded photo unlike it) still has a best item. So an
index stores the model's *match levels*: searching its run's dev split with the dev split's own
queries, the first-stage score of each query's top hit, at two percentiles (the 5th and the 25th),
per searched side ("images": sentence queries; "captions": image queries). A hit then reads

- ``strong``: at least the 25th percentile: scores like a top hit in the model's own domain;
- ``weak``: between the 5th and the 25th;
- ``none``: below what 95 % of in-domain top hits score: nothing in the collection may match.

The levels are first-stage (embedding) scores, so a pairwise model's verdict is that of the
shortlist score it re-ranked from; Hamming search has none. A top hit of a small collection scores
lower than one of the dev split (fewer chances of a close match), so a verdict says whether a match
like the model's usual ones is there, not how a result ranks. ``benchmarks/match_signal.py`` measures
the verdicts on in-domain and out-of-domain collections (``results/match-signal/``).
"""
from __future__ import annotations

import numpy as np

PERCENTILES = (5, 25)
VERDICTS = ("none", "weak", "strong")


def top_scores(queries: np.ndarray, items: np.ndarray, metric: str = "ip", chunk: int = 1024) -> np.ndarray:
    """Each query's best score over ``items`` (inner product, or minus the squared distance for
    ``metric="l2"``), in row chunks so memory stays at ``chunk`` x len(items)."""
    best = np.empty(len(queries), dtype=np.float32)
    sq = (items * items).sum(1) if metric == "l2" else None
    for s in range(0, len(queries), chunk):
        q = queries[s: s + chunk]
        scores = q @ items.T
        if metric == "l2":
            scores = 2 * scores - sq[None] - (q * q).sum(1, keepdims=True)
        best[s: s + len(q)] = scores.max(1)
    return best


def match_levels(images: np.ndarray, captions: np.ndarray, metric: str = "ip", source: str = "") -> dict:
    """The match levels of a model from its embeddings of a reference split (float32, (n, d))."""
    levels = {"percentiles": list(PERCENTILES), "source": source,
              "n_images": int(len(images)), "n_captions": int(len(captions))}
    for side, queries, items in (("images", captions, images), ("captions", images, captions)):
        levels[side] = [float(v) for v in np.percentile(top_scores(queries, items, metric), PERCENTILES)]
    return levels


def verdict(score: float, levels: list[float]) -> str:
    """``none`` / ``weak`` / ``strong`` for a first-stage ``score`` against a side's two levels."""
    return VERDICTS[int(np.searchsorted(levels, score, side="right"))]
