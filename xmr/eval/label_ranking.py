"""Label-based retrieval metrics (the cross-modal hashing protocol: DCMH, DPSH, ... and CMMN).

A database item is *relevant* to a query when the two share at least one class label. Labels
are multi-hot ``(N, C)`` arrays (bool or 0/1; any nonzero counts); a single-label set is one-hot.
The database is ranked by distance to each query, smallest first:

- ``"euclidean"``: squared Euclidean distance between real-valued features;
- ``"hamming"``: Hamming distance between 0/1 hash codes.

Metrics (fractions in [0, 1], not percent), each averaged over *all* queries:

- ``AP = (1/R) * sum_k P(k) * rel(k)`` over the ranked list, where ``P(k)`` is the precision
  of the top ``k`` and ``R`` the number of relevant items in the list considered;
- ``mAP@n``: the same over the top ``n`` only, with ``R`` = relevant items *within* the top n
  (DPSH's ``CalcTopMap``; DCMH-style ``calc_map_k`` instead takes the first ``min(n, R_total)``
  relevant positions anywhere in the list, which differs when fewer than that lie in the top n);
- ``P@n``: the fraction of relevant items among the top ``n``.

Conventions (pinned, since published code differs):

- A query with ``R = 0`` has AP 0 and still counts in the mean (as DCMH's ``calc_map`` does: it
  skips the query but divides by the number of all queries).
- Ties are broken by database index: the ranking is a *stable* sort of the distances. Hamming
  distances tie a lot, so this matters (reference code's ``np.argsort`` default is not stable,
  which leaves tied items in an unspecified order).
- ``n`` larger than the database is clipped to its size, as slicing ``ranked[:n]`` would.

Work is done ``chunk`` queries at a time, so memory is a few ``chunk x N`` arrays.
"""
from __future__ import annotations

import numpy as np

P_AT = (1, 5, 10, 100)
METRICS = ("euclidean", "hamming")


def _labels(labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{name} must be multi-hot (N, C) (one-hot for single-label), got shape {labels.shape}")
    return labels != 0


def _codes(codes: np.ndarray, name: str) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"{name} must be 0/1 codes (N, L), got shape {codes.shape}")
    if not np.isin(codes, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0/1 (convert ±1 codes with (b + 1) // 2)")
    return codes


def relevance(q_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """Bool (Q, N): query and database item share at least one label."""
    q, db = _labels(q_labels, "q_labels"), _labels(db_labels, "db_labels")
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"label columns differ: queries have {q.shape[1]}, database {db.shape[1]}")
    # float32 counts shared labels exactly (C < 2**24) and goes through BLAS, unlike bool matmul
    return (q.astype(np.float32) @ db.T.astype(np.float32)) > 0


def hamming_distance(q_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """Int64 (Q, N) Hamming distances between 0/1 codes (Q, L) and (N, L)."""
    q, db = _codes(q_codes, "q_codes"), _codes(db_codes, "db_codes")
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"code lengths differ: queries have {q.shape[1]} bits, database {db.shape[1]}")
    # with s = 2b - 1 in {-1, +1}: d = (L - s.s') / 2. float64 BLAS is exact on these integers.
    sq, sdb = 2.0 * q - 1.0, 2.0 * db - 1.0
    return np.rint((q.shape[1] - sq @ sdb.T) / 2).astype(np.int64)


def squared_euclidean(q_feats: np.ndarray, db_feats: np.ndarray) -> np.ndarray:
    """Float64 (Q, N) squared Euclidean distances, ``|a|^2 + |b|^2 - 2 a.b`` (clipped at 0)."""
    q, db = np.asarray(q_feats, dtype=np.float64), np.asarray(db_feats, dtype=np.float64)
    if q.ndim != 2 or db.ndim != 2 or q.shape[1] != db.shape[1]:
        raise ValueError(f"features must be (Q, D) and (N, D) with the same D, got {q.shape} and {db.shape}")
    d = (q * q).sum(1)[:, None] + (db * db).sum(1)[None, :] - 2.0 * (q @ db.T)
    return np.maximum(d, 0.0)  # rounding can dip just below 0


def ranking_metrics(dist: np.ndarray, rel: np.ndarray, *, map_at: int | None = None,
                    p_at: tuple[int, ...] = P_AT) -> dict[str, np.ndarray]:
    """Per-query metrics (arrays of shape (Q,)) from distances and relevance, both (Q, N).

    Keys: ``"mAP"`` (the full-list AP), ``f"mAP@{map_at}"`` when given, and ``f"P@{n}"``.
    """
    dist, rel = np.asarray(dist), np.asarray(rel, dtype=bool)
    if dist.ndim != 2 or dist.shape != rel.shape:
        raise ValueError(f"dist and rel must be the same (Q, N) shape, got {dist.shape} and {rel.shape}")
    n_db = dist.shape[1]
    order = np.argsort(dist, axis=1, kind="stable")  # stable: ties go by database index
    ranked = np.take_along_axis(rel, order, axis=1)
    del order  # keep peak memory at a few (Q, N) arrays
    hits = np.cumsum(ranked, axis=1, dtype=np.int64)  # relevant items in the top k, k = 1..N
    gain = hits / np.arange(1, n_db + 1)  # P(k) ...
    gain[~ranked] = 0.0  # ... times rel(k)

    def ap(n: int) -> np.ndarray:
        n = min(n, n_db)
        r = hits[:, n - 1]
        return np.divide(gain[:, :n].sum(1), r, out=np.zeros(len(r)), where=r > 0)  # R = 0 -> AP 0

    out = {"mAP": ap(n_db)}
    if map_at is not None:
        out[f"mAP@{map_at}"] = ap(map_at)
    for n in p_at:
        top = min(n, n_db)
        out[f"P@{n}"] = hits[:, top - 1] / top
    return out


def label_retrieval_metrics(q_feats: np.ndarray, db_feats: np.ndarray, q_labels: np.ndarray,
                            db_labels: np.ndarray, *, metric: str = "euclidean", map_at: int | None = None,
                            p_at: tuple[int, ...] = P_AT, chunk: int = 1024) -> dict[str, float]:
    """Mean metrics over all queries: ``{"mAP", "mAP@{map_at}" (if given), "P@{n}" ...}``.

    ``metric="euclidean"`` ranks real features by squared Euclidean distance; ``"hamming"`` ranks
    0/1 codes by Hamming distance. See the module docstring for the conventions.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    q_feats, db_feats = np.asarray(q_feats), np.asarray(db_feats)
    q_labels, db_labels = _labels(q_labels, "q_labels"), _labels(db_labels, "db_labels")
    if q_feats.ndim != 2 or db_feats.ndim != 2 or q_feats.shape[1] != db_feats.shape[1]:
        raise ValueError(f"features must be (Q, D) and (N, D) with the same D, "
                         f"got {q_feats.shape} and {db_feats.shape}")
    if len(q_feats) != len(q_labels) or len(db_feats) != len(db_labels):
        raise ValueError(f"features and labels disagree on the number of items: queries {len(q_feats)} vs "
                         f"{len(q_labels)}, database {len(db_feats)} vs {len(db_labels)}")
    if q_labels.shape[1] != db_labels.shape[1]:
        raise ValueError(f"label columns differ: queries have {q_labels.shape[1]}, database {db_labels.shape[1]}")
    if len(q_feats) == 0 or len(db_feats) == 0:
        raise ValueError("need at least one query and one database item")
    for n in (*p_at, *(() if map_at is None else (map_at,))):
        if int(n) != n or n < 1:
            raise ValueError(f"cut-offs must be positive integers, got {n!r}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")

    distance = hamming_distance if metric == "hamming" else squared_euclidean
    sums: dict[str, float] = {}
    for start in range(0, len(q_feats), chunk):  # chunks of queries, not single queries
        stop = start + chunk
        per_query = ranking_metrics(distance(q_feats[start:stop], db_feats),
                                    relevance(q_labels[start:stop], db_labels), map_at=map_at, p_at=p_at)
        for key, values in per_query.items():
            sums[key] = sums.get(key, 0.0) + float(values.sum())
    return {key: total / len(q_feats) for key, total in sums.items()}
