"""Label-based retrieval metrics (mAP, mAP@n, P@n) against a brute-force reference, ties included."""
from __future__ import annotations

import numpy as np
import pytest

from xmr.eval.label_ranking import (hamming_distance, label_retrieval_metrics, ranking_metrics, relevance,
                              squared_euclidean)


# --------------------------------------------------------------------------------------------
# Brute-force reference of the protocol, written as plainly as possible.
# --------------------------------------------------------------------------------------------
def ref_distance(a, b, metric: str) -> float:
    if metric == "hamming":
        return sum(1 for x, y in zip(a, b) if x != y)
    return sum((float(x) - float(y)) ** 2 for x, y in zip(a, b))


def ref_metrics(q_feats, db_feats, q_labels, db_labels, metric, map_at, p_at) -> dict[str, float]:
    """Loops over queries and ranked items. ``sorted`` is stable, so ties go by database index;
    n past the database end is clipped by slicing; a query without relevant items has AP 0."""
    def ap(rel_list):
        hits, total = 0, 0.0
        for k, r in enumerate(rel_list, start=1):
            if r:
                hits += 1
                total += hits / k  # precision at k, counted at relevant positions
        return total / hits if hits else 0.0

    sums: dict[str, float] = {}
    for q, ql in zip(q_feats, q_labels):
        dists = [ref_distance(q, d, metric) for d in db_feats]
        order = sorted(range(len(db_feats)), key=lambda j: dists[j])
        rel = [any(a and b for a, b in zip(ql, db_labels[j])) for j in order]
        values = {"mAP": ap(rel)}
        if map_at is not None:
            values[f"mAP@{map_at}"] = ap(rel[:map_at])
        for n in p_at:
            top = rel[:n]
            values[f"P@{n}"] = sum(top) / len(top)
        for key, v in values.items():
            sums[key] = sums.get(key, 0.0) + v
    return {key: v / len(q_feats) for key, v in sums.items()}


def multi_hot(rng, n: int, c: int, p: float = 0.3) -> np.ndarray:
    return rng.random((n, c)) < p


def one_hot(rng, n: int, c: int) -> np.ndarray:
    return np.eye(c, dtype=np.int64)[rng.integers(0, c, n)]


def data(seed: int, metric: str, labels: str, q: int = 9, n: int = 40, c: int = 5):
    """Small features with many exact ties: 4-bit codes, or tiny integer vectors."""
    rng = np.random.default_rng(seed)
    if metric == "hamming":
        qf, dbf = rng.integers(0, 2, (q, 4)), rng.integers(0, 2, (n, 4))
    else:
        qf, dbf = rng.integers(0, 3, (q, 2)).astype(np.float32), rng.integers(0, 3, (n, 2)).astype(np.float32)
    make = multi_hot if labels == "multi" else one_hot
    ql, dbl = make(rng, q, c), make(rng, n, c)
    ql[0] = 0  # one query with nothing relevant: AP 0, still in the mean
    return qf, dbf, ql, dbl


# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels", ["multi", "single"])
@pytest.mark.parametrize("metric", ["hamming", "euclidean"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_reference(seed, metric, labels):
    qf, dbf, ql, dbl = data(seed, metric, labels)
    p_at = (1, 3, 10, 50)  # 50 > N: clipped
    for map_at in (None, 5, 40, 100):
        got = label_retrieval_metrics(qf, dbf, ql, dbl, metric=metric, map_at=map_at, p_at=p_at)
        want = ref_metrics(qf, dbf, ql, dbl, metric, map_at, p_at)
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], abs=1e-12), key
            assert 0.0 <= got[key] <= 1.0
    # the building blocks too
    rel = relevance(ql, dbl)
    assert rel.dtype == bool
    assert rel.tolist() == [[bool(np.any(a & b)) for b in dbl != 0] for a in ql != 0]
    if metric == "hamming":
        d = hamming_distance(qf, dbf)
        assert d.dtype == np.int64
        assert d.tolist() == [[ref_distance(a, b, "hamming") for b in dbf] for a in qf]


def test_single_label_relevance_is_same_class():
    rng = np.random.default_rng(5)
    ids_q, ids_db = rng.integers(0, 4, 6), rng.integers(0, 4, 30)
    eye = np.eye(4, dtype=bool)
    assert np.array_equal(relevance(eye[ids_q], eye[ids_db]), ids_q[:, None] == ids_db[None, :])


def test_hamming_equals_euclidean_on_pm1_codes():
    rng = np.random.default_rng(3)
    qb, dbb = rng.integers(0, 2, (20, 8)), rng.integers(0, 2, (60, 8))
    ql, dbl = multi_hot(rng, 20, 6), multi_hot(rng, 60, 6)
    dh = hamming_distance(qb, dbb)
    de = squared_euclidean(2 * qb - 1, 2 * dbb - 1)
    assert np.array_equal(de, 4 * dh)  # |x - y|^2 = 4 d_H, exactly
    assert np.array_equal(np.argsort(dh, axis=1, kind="stable"), np.argsort(de, axis=1, kind="stable"))
    got_h = label_retrieval_metrics(qb, dbb, ql, dbl, metric="hamming", map_at=10, p_at=(1, 5, 10))
    got_e = label_retrieval_metrics(2 * qb - 1, 2 * dbb - 1, ql, dbl, metric="euclidean", map_at=10,
                                    p_at=(1, 5, 10))
    assert got_h == got_e


@pytest.mark.parametrize("metric", ["hamming", "euclidean"])
def test_chunk_size_does_not_change_results(metric):
    qf, dbf, ql, dbl = data(7, metric, "multi", q=25, n=50)
    kw = dict(metric=metric, map_at=7, p_at=(1, 5, 10))
    big = label_retrieval_metrics(qf, dbf, ql, dbl, chunk=1024, **kw)
    for chunk in (1, 3, 24):
        small = label_retrieval_metrics(qf, dbf, ql, dbl, chunk=chunk, **kw)
        assert small.keys() == big.keys()
        for key in big:
            assert small[key] == pytest.approx(big[key], abs=1e-12), (chunk, key)


def test_hand_computed_example():
    # db squared distances 0, 1, 4, 9, 16; relevance pattern [1, 0, 1, 0, 0]
    q_feats, db_feats = np.array([[0.0]]), np.arange(5.0)[:, None]
    q_labels = np.array([[1, 0]])
    db_labels = np.array([[1, 0], [0, 1], [1, 1], [0, 1], [0, 1]])
    out = label_retrieval_metrics(q_feats, db_feats, q_labels, db_labels, map_at=2, p_at=(1, 2, 5))
    assert out["mAP"] == pytest.approx(0.5 * (1 / 1 + 2 / 3))
    assert out["mAP@2"] == pytest.approx(1.0)  # R = 1 relevant within the top 2
    assert out["P@1"] == 1.0 and out["P@2"] == 0.5 and out["P@5"] == pytest.approx(0.4)

    # a second query with no labels has AP 0 and halves the mean
    two = label_retrieval_metrics(np.array([[0.0], [0.0]]), db_feats, np.array([[1, 0], [0, 0]]), db_labels,
                                  p_at=(1,))
    assert two["mAP"] == pytest.approx(0.5 * out["mAP"]) and two["P@1"] == 0.5

    # a tie is broken by database index: item 0 (irrelevant) ranks above item 1 (relevant)
    per_query = ranking_metrics(np.array([[0, 0, 1]]), np.array([[False, True, False]]), p_at=(1,))
    assert per_query["mAP"].tolist() == [0.5] and per_query["P@1"].tolist() == [0.0]
    swapped = ranking_metrics(np.array([[0, 0, 1]]), np.array([[True, False, False]]), p_at=(1,))
    assert swapped["mAP"].tolist() == [1.0] and swapped["P@1"].tolist() == [1.0]


def test_clear_errors():
    f, lab = np.zeros((3, 4)), np.eye(3)
    with pytest.raises(ValueError, match="label columns differ"):
        label_retrieval_metrics(f, f, lab, np.eye(3, 5))
    with pytest.raises(ValueError, match="label columns differ"):
        relevance(lab, np.eye(3, 5))
    with pytest.raises(ValueError, match="same D"):
        label_retrieval_metrics(f, np.zeros((3, 5)), lab, lab)
    with pytest.raises(ValueError, match="code lengths differ"):
        hamming_distance(np.zeros((2, 4)), np.zeros((2, 8)))
    with pytest.raises(ValueError, match="unknown metric"):
        label_retrieval_metrics(f, f, lab, lab, metric="cosine")
    with pytest.raises(ValueError, match="number of items"):
        label_retrieval_metrics(f, f, np.eye(4, 3), lab)
    with pytest.raises(ValueError, match="multi-hot"):
        label_retrieval_metrics(f, f, np.arange(3), lab)
    with pytest.raises(ValueError, match="0/1"):
        label_retrieval_metrics(-np.ones((3, 4)), f, lab, lab, metric="hamming")
    with pytest.raises(ValueError, match="positive integers"):
        label_retrieval_metrics(f, f, lab, lab, p_at=(0,))
