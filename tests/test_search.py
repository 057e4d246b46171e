"""Search: index build (split, image folder, sentence file), atomic publishing, the engine's
results against brute force and two-step re-ranking, stale checkpoints, and every API endpoint
including bad requests."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SYNTHETIC_SMALL as DATA
from xmr.data import open_split
from xmr.search import index as index_mod
from xmr.search.engine import Searcher
from xmr.search.index import Collection, SearchError, build_index, describe, read_meta

pytestmark = pytest.mark.slow  # trains, extracts features or starts processes


def test_build_describes_the_index(vsepp_index):
    run, out = vsepp_index
    meta = read_meta(out)
    assert out.is_symlink() and meta["model"] == "vsepp" and not meta["pairwise"]
    assert meta["counts"] == {"images": 60, "captions": 300} and meta["index_kinds"]["images"] == "flat"
    text = describe(out)
    assert "vsepp" in text and "60 vectors" in text and "300 vectors" in text


def test_text_search_equals_brute_force(vsepp_index, feature_cache):
    run, out = vsepp_index
    s = Searcher(out)
    hits = s.search_text("a red circle", k=5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    # The same top 5 from the model directly.
    with torch.no_grad():
        q = s.model.embed(s.model.encode_texts(s.text_batch(["a red circle"])))
        from xmr.features.store import pair_data

        data = pair_data(DATA, "test", s.model.inputs, s.vocab, s.meta["max_len"], cache=feature_cache, progress=False)
        imgs = s.model.embed(s.model.encode_images(data.image_batch(np.arange(60))))
    want = torch.topk((imgs @ q.T).squeeze(1), 5)
    assert [h.image_index for h in hits] == want.indices.tolist()
    np.testing.assert_allclose([h.score for h in hits], want.values.numpy(), rtol=1e-5)


def test_image_search_finds_its_own_captions_first(vsepp_index):
    run, out = vsepp_index
    s = Searcher(out)
    split = open_split(DATA, "test")
    hits = s.search_image(split.load_image(3), k=10)
    assert len(hits) == 10 and all(h.caption for h in hits)
    # Image 3 queried as a new upload: its stored features and a fresh extraction agree, so the
    # scores equal those of the stored-image path.
    stored = s.sentences_for_item(split.image_ids[3], k=10)
    assert [h.caption_index for h in hits] == [h.caption_index for h in stored]


def test_pairwise_model_reranks_its_shortlist(jgcar_index):
    run, out = jgcar_index
    s = Searcher(out, shortlist=20)
    hits = s.search_text("a blue square", k=5)
    assert all(h.first_stage_score is not None for h in hits)
    # Re-ranked scores are the model's pair score of (image, query).
    img = s.model.encode_images(s.image_batch_stored(np.array([h.image_index for h in hits])))
    txt = s.model.encode_texts(s.text_batch(["a blue square"] * 5))
    with torch.no_grad():
        want = s.model.pair_similarity(img, txt).numpy()
    np.testing.assert_allclose([h.score for h in hits], want, rtol=1e-4, atol=1e-5)
    assert s.attention(hits[0].image_id, "a blue square")["grid"] ** 2 == s.image_features.shape[1]


def test_failed_build_leaves_the_previous_index_usable(vsepp_index, monkeypatch, feature_cache):
    run, out = vsepp_index
    before = out.resolve()

    def crash(*a, **k):
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(index_mod, "embed_all", crash)
    with pytest.raises(RuntimeError):
        build_index(run, Collection("split", DATA, "test"), out, cache=feature_cache, progress=False)
    assert out.resolve() == before and Searcher(out).search_text("a circle", k=1)
    assert not [p for p in before.parent.iterdir() if p.name.startswith(".building")]


def test_changed_checkpoint_or_format_is_refused(vsepp_index, tmp_path):
    run, out = vsepp_index
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out.resolve(), copy)
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**meta, "checkpoint_sha256": "0" * 16}))
    with pytest.raises(SearchError, match="has changed since"):
        Searcher(copy)
    (copy / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(SearchError, match="index format 99"):
        Searcher(copy)
    with pytest.raises(SearchError, match="not an xmr index"):
        Searcher(tmp_path)


def test_folder_and_sentence_collections(vsepp_index, tmp_path, feature_cache):
    run, _ = vsepp_index
    split = open_split(DATA, "test")
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(4):
        split.load_image(i).save(folder / ("sub" if i % 2 else "") / f"p{i}.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "album.jpg").mkdir()  # a folder with an image's name is walked, not read as an image
    out = tmp_path / "photos-index"
    info = build_index(run, Collection("images", str(folder)), out, cache=feature_cache, progress=False)
    assert info["counts"] == {"images": 4}
    s = Searcher(out)
    assert {h.image_id for h in s.search_text("a shape", k=4)} == {"p0.png", "sub/p1.png", "p2.png", "sub/p3.png"}
    with pytest.raises(SearchError, match="holds no captions"):
        s.search_image(split.load_image(0))

    sentences = tmp_path / "s.txt"
    sentences.write_text("a red circle\n\na green triangle on the left\nthree blue squares\n")
    out2 = tmp_path / "sentences-index"
    build_index(run, Collection("sentences", str(sentences)), out2, cache=feature_cache, progress=False)
    hits = Searcher(out2).search_image(split.load_image(0), k=3)
    assert sorted(h.caption for h in hits) == ["a green triangle on the left", "a red circle", "three blue squares"]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe broken\n")
    with pytest.raises(SearchError, match="bad.txt:2: invalid UTF-8"):
        build_index(run, Collection("sentences", str(bad)), tmp_path / "x", cache=feature_cache, progress=False)


# ---------------------------------------------------------------------------------- HTTP API
@pytest.fixture(scope="module")
def client(vsepp_index):
    from fastapi.testclient import TestClient

    from xmr.search.server import create_app

    return TestClient(create_app(Searcher(vsepp_index[1])))


def png_bytes(colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_api_health_search_item_image(client):
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["counts"] == {"images": 60, "captions": 300} and not h["attention"]
    r = client.get("/api/search", params={"q": "a red circle", "k": 4}).json()
    assert len(r["results"]) == 4 and r["results"][0]["rank"] == 1
    first = r["results"][0]["image_id"]
    item = client.get(f"/api/items/{first}").json()
    assert len(item["captions"]) == 5 and len(item["best_sentences"]) == 5
    img = client.get(f"/images/{first}")
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(img.content)).size[0] > 0
    up = client.post("/api/search/image", files={"file": ("x.png", png_bytes(), "image/png")}, data={"k": "3"})
    assert up.status_code == 200 and len(up.json()["results"]) == 3
    page = client.get("/")
    assert page.status_code == 200 and "xmr search" in page.text


@pytest.mark.parametrize("params, status, message", [
    ({"q": ""}, 422, "at least 1 character"),  # the limits are in the OpenAPI schema (422)
    ({"q": "   "}, 422, "string_pattern_mismatch"),
    ({"q": "dog " * 100}, 422, "at most 300 characters"),
    ({"q": "a dog", "k": 0}, 422, "greater than or equal to 1"),
    ({"q": "a dog", "k": 101}, 422, "less than or equal to 100"),
    ({"q": "a dog", "k": "many"}, 422, "int"),
])
def test_api_bad_searches(client, params, status, message):
    r = client.get("/api/search", params=params)
    assert r.status_code == status and message in json.dumps(r.json()["detail"])


def test_api_bad_uploads_and_unknown_items(client):
    r = client.post("/api/search/image", files={"file": ("a.txt", b"hello, not an image", "text/plain")})
    assert r.status_code == 415 and "not a readable image" in r.json()["detail"]
    r = client.post("/api/search/image", files={"file": ("e.png", b"", "image/png")})
    assert r.status_code == 400 and "empty upload" in r.json()["detail"]
    r = client.post("/api/search/image", files={"file": ("x.png", png_bytes(), "image/png")}, data={"k": "500"})
    assert r.status_code == 422
    for url in ("/api/items/no-such-image", "/images/no-such-image", "/images/../../etc/passwd",
                "/api/attention/no-such-image?q=a"):
        r = client.get(url)
        assert r.status_code == 404, url
    assert "no image 'no-such-image'" in client.get("/api/items/no-such-image").json()["detail"]
    r = client.get("/api/attention/synthetic-test-00000", params={"q": "a dog"})
    assert r.status_code == 404 and "no attention map" in r.json()["detail"]
