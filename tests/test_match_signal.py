"""The search's match signal: levels measured on a reference split, verdicts of hits, and the
path through index build, the engine, the CLI and the API."""
from __future__ import annotations

import json

import numpy as np
import pytest

from xmr.search.calibration import PERCENTILES, match_levels, top_scores, verdict


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_top_scores_equal_brute_force_in_any_chunking(metric):
    rng = np.random.default_rng(0)
    q, items = rng.normal(size=(37, 8)).astype(np.float32), rng.normal(size=(11, 8)).astype(np.float32)
    full = q @ items.T if metric == "ip" else -((q[:, None] - items[None]) ** 2).sum(-1)
    for chunk in (1, 5, 1024):
        np.testing.assert_allclose(top_scores(q, items, metric, chunk), full.max(1), rtol=1e-5, atol=1e-5)


def test_levels_are_the_percentiles_of_reference_top_hits():
    rng = np.random.default_rng(1)
    images = _unit(rng.normal(size=(40, 16)))
    captions = _unit(np.repeat(images, 5, axis=0) + 0.3 * rng.normal(size=(200, 16)))
    levels = match_levels(images, captions, source="toy dev")
    assert levels["n_images"] == 40 and levels["n_captions"] == 200 and levels["source"] == "toy dev"
    np.testing.assert_allclose(levels["images"], np.percentile((captions @ images.T).max(1), PERCENTILES))
    np.testing.assert_allclose(levels["captions"], np.percentile((images @ captions.T).max(1), PERCENTILES))
    assert levels["images"][0] <= levels["images"][1]


def test_verdict_boundaries():
    levels = [0.2, 0.3]
    assert [verdict(s, levels) for s in (0.1, 0.2, 0.25, 0.3, 0.9)] == ["none", "weak", "weak", "strong", "strong"]


def test_an_unrelated_collection_reads_none_and_the_own_domain_strong():
    """Captions near their images (the model's domain) vs a collection of unrelated directions."""
    rng = np.random.default_rng(2)
    images = _unit(rng.normal(size=(60, 32)))
    captions = _unit(np.repeat(images, 5, axis=0) + 0.15 * rng.normal(size=(300, 32)))
    levels = match_levels(images[:30], captions[:150])["images"]  # reference: the first half
    own = top_scores(captions[150:], images[30:])  # new queries, their images in the collection
    unrelated = top_scores(captions[150:], _unit(rng.normal(size=(30, 32))))
    assert np.mean([verdict(s, levels) == "strong" for s in own]) > 0.6
    assert np.mean([verdict(s, levels) == "none" for s in unrelated]) > 0.9



@pytest.mark.slow
def test_index_build_stores_levels_and_hits_carry_a_verdict(vsepp_index, capsys):
    from xmr.cli import main
    from xmr.search.engine import Searcher
    from xmr.search.index import read_meta

    run, out = vsepp_index
    meta = read_meta(out)
    levels = meta["match_levels"]
    assert set(levels) >= {"images", "captions", "percentiles", "source"} and levels["source"].endswith(" dev")
    s = Searcher(out)
    hits = s.search_text("a red circle", k=5)
    assert all(h.match == verdict(h.score, levels["images"]) for h in hits)  # VSE++: score = first stage
    capsys.readouterr()
    assert main(["search", str(out), "a red circle", "-k", "3", "--json"]) == 0
    assert {"match"} <= set(json.loads(capsys.readouterr().out)[0])


@pytest.mark.slow
def test_the_api_answers_with_the_top_verdict(vsepp_index):
    from fastapi.testclient import TestClient

    from xmr.search.engine import Searcher
    from xmr.search.server import create_app

    client = TestClient(create_app(Searcher(vsepp_index[1])))
    body = client.get("/api/search", params={"q": "a red circle", "k": 3}).json()
    assert body["match"] in ("strong", "weak", "none") and body["match"] == body["results"][0]["match"]


@pytest.mark.slow
def test_an_index_without_a_readable_dev_split_has_no_signal(tmp_path, capsys):
    """A run whose dataset is gone: the index is built, says why it has no signal, hits have none."""
    import shutil

    from bad_input_data import tiny_train_args, write_precomputed
    from xmr.cli import main
    from xmr.search.engine import Searcher

    data = write_precomputed(tmp_path / "data")
    assert main(tiny_train_args(f"precomputed:{data}", tmp_path / "run", tmp_path / "c")) == 0
    photos = shutil.copytree(data, tmp_path / "copy")
    shutil.rmtree(data)
    capsys.readouterr()
    assert main(["index", "build", str(tmp_path / "run"), "--data", f"precomputed:{photos}", "--split", "test",
                 "--out", str(tmp_path / "idx"), "--cache", str(tmp_path / "c2"), "--quiet"]) == 0
    assert "no match signal" in capsys.readouterr().err
    hit = Searcher(tmp_path / "idx").search_text("a dog", k=1)[0]
    assert hit.match is None and "match" not in hit.as_dict()
