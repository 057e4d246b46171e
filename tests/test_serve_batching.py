"""Micro-batched search (issue 24): ``Searcher.search_texts`` / ``search_images`` against one query
at a time (VSE++ and the pairwise JGCAR), the micro-batcher's grouping, error routing and shutdown,
and the batched server against the unbatched one under concurrent requests, bad queries included."""
from __future__ import annotations

import asyncio
import io
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import SYNTHETIC_SMALL as DATA
from xmr.data import open_split
from xmr.search.batching import MicroBatcher
from xmr.search.engine import Searcher
from xmr.search.server import create_app

# Different lengths, so a batch pads every query but the longest.
QUERIES = ["a red circle", "a small blue square on the left of a large green triangle", "square",
           "two yellow shapes", "a purple triangle above a circle", "circle circle", "a shape", "green"]


def assert_same_hits(got: list[dict], want: list[dict]) -> None:
    """Same hits in the same order (ids, ranks, match verdicts exactly), scores to float rounding."""
    assert [{k: v for k, v in h.items() if not isinstance(v, float)} for h in got] == \
           [{k: v for k, v in h.items() if not isinstance(v, float)} for h in want]
    for key in ("score", "first_stage_score"):
        np.testing.assert_allclose([h.get(key, 0.0) for h in got], [h.get(key, 0.0) for h in want], atol=1e-5)


def as_dicts(hits) -> list[dict]:
    return [h.as_dict() for h in hits]


# ------------------------------------------------------------------------------- the batcher
def test_batcher_groups_by_kind_k_binary_and_routes_errors():
    calls = []

    def search(queries, k, binary):
        calls.append((tuple(queries), k, binary))
        if "bad" in queries:
            raise ValueError("bad query")
        return [f"{q}/{k}/{binary}" for q in queries]

    batcher = MicroBatcher({"text": search}, window_s=0.2)
    futures = [batcher.submit("text", q, k, b) for q, k, b in
               [("a", 5, False), ("b", 5, False), ("bad", 5, False), ("c", 3, False), ("d", 5, True)]]
    assert [f.exception(5) is None for f in futures] == [True, True, False, True, True]
    assert [f.result() for i, f in enumerate(futures) if i != 2] == ["a/5/False", "b/5/False", "c/3/False",
                                                                      "d/5/True"]
    assert "bad query" in str(futures[2].exception())
    # One window, one call per (k, binary) group; the failed group again one query at a time.
    assert calls == [(("a", "b", "bad"), 5, False), (("a",), 5, False), (("b",), 5, False),
                     (("bad",), 5, False), (("c",), 3, False), (("d",), 5, True)]
    with pytest.raises(ValueError, match="unknown query kind 'image'"):
        batcher.submit("image", "x", 5)
    thread = batcher._thread
    batcher.stop()
    assert not thread.is_alive()


def test_batcher_caps_batches_and_drops_cancelled_requests():
    sizes, release = [], threading.Event()

    def search(queries, k, binary):
        release.wait(5)
        sizes.append(len(queries))
        return list(queries)

    batcher = MicroBatcher({"text": search}, window_s=0.5, max_batch=4)
    futures = [batcher.submit("text", i, 1) for i in range(10)]
    time.sleep(0.1)  # the first batch of 4 is in the search: cancel one of the next ones
    assert futures[5].cancel()
    release.set()
    assert [f.result(5) for i, f in enumerate(futures) if i != 5] == [i for i in range(10) if i != 5]
    assert sizes == [4, 3, 2]
    batcher.stop()


# ------------------------------------------------------------------------------- the engine
@pytest.fixture(scope="module", params=["vsepp", "jgcar"])
def searcher(request):
    run, out = request.getfixturevalue(f"{request.param}_index")
    return Searcher(out, shortlist=20)


def test_search_texts_equals_one_query_at_a_time(searcher):
    for k in (1, 7):
        batched = searcher.search_texts(QUERIES, k=k)
        assert len(batched) == len(QUERIES) and all(len(hits) == k for hits in batched)
        for query, hits in zip(QUERIES, batched):
            assert_same_hits(as_dicts(hits), as_dicts(searcher.search_text(query, k=k)))


def test_search_images_equals_one_image_at_a_time(searcher):
    split = open_split(DATA, "test")
    images = [split.load_image(i) for i in range(5)] + [Image.new("RGB", (50, 20), (10, 200, 10))]
    batched = searcher.search_images(images, k=6)
    for image, hits in zip(images, batched):
        assert_same_hits(as_dicts(hits), as_dicts(searcher.search_image(image, k=6)))


# ------------------------------------------------------------------------------- the server
def png_bytes(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, format="PNG")
    return buf.getvalue()


async def answers(app, requests: list[tuple]) -> list[httpx.Response]:
    """Every request sent at once (one event loop), the app started and stopped by its lifespan."""
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            def send(req):
                if req[0] == "text":
                    return client.get("/api/search", params=req[1])
                return client.post("/api/search/image", files={"file": ("x.png", req[1], "image/png")},
                                   data={"k": str(req[2])})
            return await asyncio.gather(*(send(r) for r in requests))


def test_batched_server_answers_as_the_unbatched_one(searcher, monkeypatch):
    sizes = []
    search_texts = searcher.search_texts

    def recorded(queries, k, binary):  # the batched app's searches, to see that it did batch
        sizes.append(len(queries))
        return search_texts(queries, k, binary)

    monkeypatch.setattr(searcher, "search_texts", recorded)
    batched_app = create_app(searcher, batch_window_ms=50)  # generous: the test machine may be busy
    unbatched_app = create_app(searcher, batch_window_ms=0)
    requests = [("text", {"q": q, "k": k}) for k in (10, 3) for q in QUERIES] + \
               [("text", {"q": "  a   red circle "})] + \
               [("image", png_bytes(c), k) for c, k in (((200, 30, 30), 4), ((30, 30, 200), 4), ((0, 0, 0), 9))]
    got, want = asyncio.run(answers(batched_app, requests)), asyncio.run(answers(unbatched_app, requests))
    assert max(sizes) > 1, sizes
    for req, g, w in zip(requests, got, want):
        assert g.status_code == w.status_code == 200, (req, g.text)
        g, w = g.json(), w.json()
        assert {k: v for k, v in g.items() if k != "results"} == {k: v for k, v in w.items() if k != "results"}
        assert_same_hits(g["results"], w["results"])


def test_bad_query_in_a_batch_gets_its_400_alone(vsepp_index):
    s = Searcher(vsepp_index[1])
    # "\x1f" passes the schema's pattern but is whitespace to the engine; binary needs hash codes,
    # which VSE++ has none of: both fail in the engine, the first before batching, the second in it.
    requests = [("text", {"q": q}) for q in QUERIES[:4]] + [("text", {"q": "\x1f"}),
                                                            ("text", {"q": "a circle", "binary": "true"})]
    got = asyncio.run(answers(create_app(s, batch_window_ms=50), requests))
    want = asyncio.run(answers(create_app(s, batch_window_ms=0), requests))
    assert [r.status_code for r in got] == [r.status_code for r in want] == [200] * 4 + [400, 400]
    assert "empty query" in got[4].json()["detail"] and "no hash codes" in got[5].json()["detail"]
    for g, w in zip(got[:4], want[:4]):
        assert_same_hits(g.json()["results"], w.json()["results"])


def test_negative_batch_window_is_refused(vsepp_index):
    with pytest.raises(ValueError, match="batch_window_ms must be >= 0"):
        create_app(Searcher(vsepp_index[1]), batch_window_ms=-1)
