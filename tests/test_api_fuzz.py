"""The HTTP API against its own OpenAPI spec: schemathesis generates requests for every endpoint
(bounded budget) and checks no 5xx, every status and content type documented, and responses that
match the declared schemas. Plus the cases the fuzzer cannot reach: a decompression-bomb upload
(413), an indexed image file that is missing or corrupt (404), and model work off the event loop."""
from __future__ import annotations

import asyncio
import io
import struct
import time
import zlib

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from xmr.search.engine import Searcher
from xmr.search.server import create_app

from bad_input_data import tiny_train_args, write_precomputed

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 40  # per operation and mode: 7 operations x 2 modes x 40, well under a minute


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory):
    """A VSE++ run on 1280-d precomputed features (the extractor's width, so uploads work) and an
    index of its test split: seconds to build, unlike the EfficientNet-extracted session index."""
    from xmr.cli import main

    tmp = tmp_path_factory.mktemp("api")
    data = "precomputed:" + str(write_precomputed(tmp / "d", {"train": 16, "dev": 4, "test": 6}, dim=1280))
    assert main(tiny_train_args(data, tmp / "run", tmp / "cache")) == 0
    assert main(["index", "build", str(tmp / "run"), "--data", data, "--split", "test", "--out", str(tmp / "ix"),
                 "--cache", str(tmp / "cache"), "--quiet"]) == 0
    return tmp / "run", tmp / "ix"


@pytest.fixture(scope="module")
def app(tiny_index):
    return create_app(Searcher(tiny_index[1]))


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_matches_its_spec(app, mode):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/api/search", "/api/search/image", "/images/{image_id}", "/"}
    for op in operations:
        @given(case=op.as_strategy(mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        def fuzz(case):
            case.call_and_validate(checks=CHECKS)

        try:
            fuzz()
        except Unsatisfiable:  # negative mode: no invalid input exists
            assert mode == GenerationMode.NEGATIVE, op.path  # (e.g. /, or a path taking any string)


def bomb_png(side: int = 20000) -> bytes:
    """A valid PNG header for a side x side image (400 megapixels) with a tiny compressed body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" + b"\0" * side
    body = zlib.compress(row * 16, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_decompression_bomb_is_413_not_500(app):
    from fastapi.testclient import TestClient

    client = TestClient(app, raise_server_exceptions=False)
    for side in (9000, 20000):  # over xmr's 64 MP limit; over PIL's own bomb limit
        r = client.post("/api/search/image", files={"file": ("bomb.png", bomb_png(side), "image/png")})
        assert r.status_code == 413, (side, r.text)
        assert "pixels" in r.json()["detail"]


def test_missing_or_corrupt_indexed_image_is_404(tiny_index, tmp_path):
    from fastapi.testclient import TestClient

    from xmr.data import open_split
    from xmr.search.index import Collection, build_index

    run, _ = tiny_index
    feature_cache = tmp_path / "cache"
    split = open_split("synthetic,seed=3,n_train=300,n_dev=60,n_test=60", "test")
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        split.load_image(i).save(folder / f"p{i}.png")
    build_index(run, Collection("images", str(folder)), tmp_path / "ix", cache=feature_cache, progress=False)
    client = TestClient(create_app(Searcher(tmp_path / "ix")), raise_server_exceptions=False)
    ids = client.get("/api/search", params={"q": "a red circle", "k": 3}).json()["results"]
    names = sorted(h["image_id"] for h in ids)
    assert client.get(f"/images/{names[0]}").status_code == 200
    (folder / "p0.png").unlink()
    (folder / "p1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    for name in ("p0.png", "p1.png"):
        r = client.get(f"/images/{name}")
        assert r.status_code == 404 and "image file unavailable" in r.json()["detail"], r.text


@pytest.mark.parametrize("window_ms", [0, 5])  # unbatched, micro-batched
def test_model_work_does_not_block_the_event_loop(tiny_index, monkeypatch, window_ms):
    searcher_calls = []

    def slow_search(images, k=10, binary=False):
        searcher_calls.append(1)
        time.sleep(1.0)  # stands for the CNN
        return [[] for _ in images]

    searcher = Searcher(tiny_index[1])
    monkeypatch.setattr(searcher, "search_images", slow_search)
    monkeypatch.setattr(searcher, "search_image", lambda image, k=10, binary=False: slow_search([image])[0])
    app = create_app(searcher, batch_window_ms=window_ms)
    png = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(png, format="PNG")

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            slow = asyncio.create_task(client.post("/api/search/image",
                                                   files={"file": ("x.png", png.getvalue(), "image/png")}))
            await asyncio.sleep(0.2)
            t0 = time.perf_counter()
            health = await client.get("/api/health")
            waited = time.perf_counter() - t0
            done = await slow
        return health.status_code, waited, done.status_code

    status, waited, slow_status = asyncio.run(run())
    assert status == 200 and slow_status == 200 and searcher_calls
    assert waited < 0.5, f"/api/health waited {waited:.2f}s behind an image query"
