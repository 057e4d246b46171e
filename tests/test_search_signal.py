"""Saying when nothing matches: each hit's z-score against the query's scores over a stored sample
of the collection, and its verdict against what the best of N unrelated items reaches by chance."""
from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import SYNTHETIC_SMALL as DATA
from xmr.data import open_split
from xmr.search.engine import Searcher
from xmr.search.server import create_app
from xmr.search.signal import SAMPLE, chance_z, sample_rows, sample_scores, verdict, z_scores


def test_chance_z_is_the_median_best_of_n():
    assert chance_z(1) == 0.0
    assert chance_z(60) == pytest.approx(2.27, abs=0.01)
    assert chance_z(1000) == pytest.approx(3.19, abs=0.01)
    rng = np.random.default_rng(0)
    best = rng.standard_normal((2000, 500)).max(1)  # the best of 500 unrelated items, 2000 times
    assert np.median(best) == pytest.approx(chance_z(500), abs=0.05)


def test_sample_rows_bounded_and_deterministic():
    assert sample_rows(10).tolist() == list(range(10))
    rows = sample_rows(100_000)
    assert len(rows) == SAMPLE and np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(rows, sample_rows(100_000))


def test_z_scores_no_spread_or_non_finite_is_zero():
    assert z_scores(np.array([1.0, 2.0]), np.ones(50)).tolist() == [0.0, 0.0]
    z = z_scores(np.array([np.nan, 3.0]), np.array([0.0, 2.0, np.nan]))
    assert z.tolist() == [0.0, 2.0]


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_a_true_match_stands_out_and_a_random_query_does_not(metric):
    rng = np.random.default_rng(1)
    n, d = 5000, 64
    collection = rng.standard_normal((n, d)).astype(np.float32)
    collection /= np.linalg.norm(collection, axis=1, keepdims=True)
    sample = collection[sample_rows(n)]

    def top_z(query):
        scores = sample_scores(collection, query, metric)
        return float(z_scores(np.array([scores.max()]), sample_scores(sample, query, metric))[0])

    true = collection[123] + 0.3 * rng.standard_normal(d).astype(np.float32) / np.sqrt(d)
    unrelated = [rng.standard_normal(d).astype(np.float32) for _ in range(20)]
    unrelated = [u / np.linalg.norm(u) for u in unrelated]
    z_true, z_off = top_z(true), [top_z(u) for u in unrelated]
    assert verdict(z_true, n) == "strong" and z_true > 6
    assert max(z_off) < z_true - 2
    assert sum(verdict(z, n) == "strong" for z in z_off) == 0


def test_hamming_scores():
    sample = np.array([[0, 1, 1], [1, 1, 1], [0, 0, 0]], dtype=np.uint8)
    assert sample_scores(sample, np.array([0, 1, 1], np.uint8), "hamming").tolist() == [0, -1, -2]


# ------------------------------------------------------------------ through the index and the API


@pytest.fixture(scope="module")
def searcher(vsepp_index):
    return Searcher(vsepp_index[1])


def test_index_stores_the_sample(vsepp_index, searcher):
    _, out = vsepp_index
    assert set(searcher.samples) == {"images", "captions"}
    assert searcher.samples["images"].shape[0] == 60 and searcher.samples["captions"].shape[0] == 300


def test_hits_carry_z_and_match(searcher):
    hits = searcher.search_text("a red circle", k=5)
    assert all(h.z is not None and h.match in ("strong", "weak", "none") for h in hits)
    assert all(a.z >= b.z for a, b in zip(hits, hits[1:]))  # an embedding model: z follows the score
    # z is the score standardised over the sample (here the whole collection of 60 images)
    emb = searcher.model.embed(searcher.model.encode_texts(searcher.text_batch(["a red circle"]))).numpy()[0]
    ref = searcher.samples["images"] @ emb
    assert hits[0].z == pytest.approx((hits[0].score - ref.mean()) / ref.std(), abs=1e-4)


def test_a_query_with_its_match_in_the_collection_scores_higher_than_an_unrelated_one(searcher):
    """Images of the collection as queries (their own captions are indexed) against noise images;
    the collection's own captions as queries against sentences of words the model never saw."""
    split = open_split(DATA, "test")
    rng = np.random.default_rng(0)
    own = [searcher.search_image(split.load_image(i), k=1)[0].z for i in range(6)]
    noise = [searcher.search_image(Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)), k=1)[0].z
             for _ in range(3)]
    assert min(own) > max(noise) + 1, (own, noise)
    texts = [searcher.search_text(split.captions[5 * i], k=1)[0].z for i in range(6)]
    gibberish = [searcher.search_text(q, k=1)[0].z for q in ("zorp quux blib", "xylophone nebula sonata")]
    assert np.mean(texts) > max(gibberish) + 1, (texts, gibberish)


def test_api_returns_and_documents_the_signal(searcher):
    client = TestClient(create_app(searcher))
    body = client.get("/api/search", params={"q": "a red circle", "k": 3}).json()
    assert body["match"] == body["results"][0]["match"]
    assert all({"z", "match"} <= set(h) for h in body["results"])
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert {"z", "match"} <= set(schemas["HitOut"]["properties"])
    assert "match" in schemas["SearchOut"]["properties"]
    assert "match-none" in client.get("/").text  # the page shows it


def test_an_index_without_a_sample_still_searches(vsepp_index, tmp_path):
    import shutil

    copy = tmp_path / "old-index"
    shutil.copytree(vsepp_index[1].resolve(), copy)
    for f in copy.glob("sample_*.npy"):
        f.unlink()
    hits = Searcher(copy).search_text("a red circle", k=2)
    assert hits and all(h.z is None and "z" not in h.as_dict() for h in hits)
