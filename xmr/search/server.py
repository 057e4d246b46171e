"""``xmr serve``: an HTTP API and a web page over one index (FastAPI).

Endpoints (all answers JSON unless noted; errors are 4xx with ``{"detail": message}``):

- ``GET  /api/health``                       model, collection and counts
- ``GET  /api/search?q=...&k=10``             images for a sentence (k in 1..100, q <= 300 chars;
                                              ``binary=true``: Hamming search on hash codes, CMMN);
                                              ``match`` (and each hit's): strong / weak / none, does
                                              anything match (``xmr.search.calibration``)
- ``POST /api/search/image`` (form: file, k, binary)  sentences for an uploaded image (JPEG/PNG/WebP/GIF/BMP,
                                              at most 10 MB and 64 megapixels)
- ``GET  /api/items/{image_id}?k=5``          an image's own captions and the index's best sentences
- ``GET  /api/attention/{image_id}?q=...``    the model's attention grid for a sentence (404 if none)
- ``GET  /images/{image_id}``                 the image (PNG), only from the index's own collection
- ``GET  /``                                  the search page (text/html)

Every status an endpoint can answer is declared in the OpenAPI spec (``/openapi.json``) and the
suite fuzzes the API against it (``tests/test_api_fuzz.py``). Model work (text and image encoding,
re-ranking, image decoding) runs in a worker thread, never on the event loop.

Text and image searches are micro-batched (``xmr.search.batching``): queries that arrive within
``batch_window_ms`` (``xmr serve --batch-window-ms``, default 5; at most 32 a batch) are encoded in
one pass and searched together by one worker thread, with answers identical to one-at-a-time
search. ``batch_window_ms=0`` is the unbatched path: each request searches alone in the thread
pool. Queries are checked before they are batched, so a bad one gets its 400 alone.
"""
from __future__ import annotations

import io
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, Response
from PIL import Image, UnidentifiedImageError

from xmr.data.base import DataError
from xmr.data.images import MAX_PIXELS
from xmr.features.store import DEFAULT_CACHE
from xmr.search.batching import WINDOW_MS, MicroBatcher
from xmr.search.engine import MAX_K, MAX_QUERY_CHARS, TEXT_RUNTIME, Searcher
from xmr.search.index import SearchError

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
STATIC = Path(__file__).parent / "static"


def _errors(*codes: int) -> dict:
    """OpenAPI ``responses=`` entries for these error statuses (all ``{"detail": message}``)."""
    what = {400: "bad query (message says why)", 404: "no such image / no attention map",
            413: "upload too large (bytes or pixels)", 415: "not a readable image",
            422: "request does not match the schema", 500: "never (a bug)"}
    return {c: {"description": what[c], "content": {"application/json": {"schema": {
        "type": "object", "properties": {"detail": {}}, "required": ["detail"]}}}} for c in codes}


def _top_match(hits) -> str | None:
    """The answer's verdict: the best hit's ``match`` (None without match levels)."""
    return hits[0].match if hits else None


def decode_upload(data: bytes, filename: str):
    """An uploaded image as RGB, or the HTTP error for it (413 over the pixel limit or a
    decompression bomb, 415 unreadable)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:
                raise HTTPException(413, f"image is {im.width}x{im.height}, over {MAX_PIXELS} pixels")
            return im.convert("RGB")
    except Image.DecompressionBombError as e:
        raise HTTPException(413, f"{filename} is over {MAX_PIXELS} pixels (decompression bomb)") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise HTTPException(415, f"{filename} is not a readable image ({e.__class__.__name__})") from e


@contextmanager
def http_errors():
    """The engine's errors as HTTP errors: bad query 400, unknown or unavailable image 404."""
    try:
        yield
    except SearchError as e:
        raise HTTPException(400, str(e)) from e
    except KeyError as e:
        raise HTTPException(404, e.args[0]) from e
    except DataError as e:  # an indexed image file that is gone or corrupt
        raise HTTPException(404, f"image file unavailable: {e}") from e


def guard(fn, *args):
    with http_errors():
        return fn(*args)


def create_app(searcher: Searcher, batch_window_ms: float = WINDOW_MS) -> FastAPI:
    """The API over ``searcher``; ``batch_window_ms`` > 0 micro-batches searches, 0 searches each alone."""
    if batch_window_ms < 0:
        raise ValueError(f"batch_window_ms must be >= 0, got {batch_window_ms}")
    batcher = MicroBatcher({"text": searcher.search_texts, "image": searcher.search_images},
                           batch_window_ms / 1e3) if batch_window_ms else None
    unbatched = {"text": searcher.search_text, "image": searcher.search_image}

    @asynccontextmanager
    async def lifespan(_app):
        if batcher is not None:
            batcher.start()
        yield
        if batcher is not None:
            batcher.stop()

    app = FastAPI(title="xmr search", description=__doc__, lifespan=lifespan)

    async def run_search(kind: str, query, k: int, binary: bool) -> list:
        if batcher is None:
            return await run_in_threadpool(guard, unbatched[kind], query, k, binary)
        with http_errors():
            # checked here, so that the batch holds only queries that can be searched
            query = searcher.check_query(query) if kind == "text" else query
            return await batcher.search(kind, query, searcher.check_k(k), binary)

    @app.get("/api/health", responses=_errors(422))
    def health() -> dict:
        m = searcher.meta
        return {"status": "ok", "model": m["model"], "pairwise": m["pairwise"], "collection": m["collection"],
                "counts": m["counts"], "attention": searcher.model.has_attention_maps,
                "metric": m.get("metric", "ip"), "binary_bits": m.get("binary_bits"),
                "limits": {"k": [1, MAX_K], "query_chars": MAX_QUERY_CHARS, "upload_bytes": MAX_UPLOAD_BYTES}}

    @app.get("/api/search", responses=_errors(400, 422))
    async def search(q: str = Query(..., description="the sentence", min_length=1, max_length=MAX_QUERY_CHARS,
                                    pattern=r"\S"),
                     k: int = Query(10, ge=1, le=MAX_K),
                     binary: bool = Query(False, description="Hamming search on hash codes")) -> dict:
        hits = await run_search("text", q, k, binary)
        return {"query": q, "k": k, "binary": binary, "match": _top_match(hits), "results": [h.as_dict() for h in hits]}

    @app.post("/api/search/image", responses=_errors(400, 413, 415, 422))
    async def search_image(file: UploadFile = File(...), k: int = Form(10, ge=1, le=MAX_K),
                           binary: bool = Form(False)) -> dict:
        data = await file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, f"upload is over {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
        if not data:
            raise HTTPException(400, "empty upload")
        # Decoding and the CNN run in a worker thread: the event loop keeps answering other requests.
        image = await run_in_threadpool(decode_upload, data, file.filename or "upload")
        hits = await run_search("image", image, k, binary)
        return {"k": k, "binary": binary, "match": _top_match(hits), "results": [h.as_dict() for h in hits]}

    @app.get("/api/items/{image_id:path}", responses=_errors(400, 404, 422))
    def item(image_id: str, k: int = Query(5, ge=1, le=MAX_K)) -> dict:
        own = guard(searcher.own_captions, image_id)
        best = guard(searcher.sentences_for_item, image_id, k) if "captions" in searcher.indexes else []
        return {"image_id": image_id, "captions": own, "best_sentences": [h.as_dict() for h in best]}

    @app.get("/api/attention/{image_id:path}", responses=_errors(400, 404, 422))
    def attention(image_id: str, q: str = Query(..., min_length=1, max_length=MAX_QUERY_CHARS,
                                                pattern=r"\S")) -> dict:
        out = guard(searcher.attention, image_id, q)
        if out is None:
            raise HTTPException(404, f"model {searcher.meta['model']!r} has no attention map")
        return out

    @app.get("/images/{image_id:path}", response_class=Response, responses={
        200: {"description": "the image", "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
        **_errors(404, 422)})
    def image(image_id: str) -> Response:
        picture = guard(searcher.load_image, image_id)
        buf = io.BytesIO()
        picture.save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/", response_class=HTMLResponse, responses={
        200: {"description": "the search page", "content": {"text/html": {"schema": {"type": "string"}}}}})
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    return app


def serve(index: str | Path, host: str = "127.0.0.1", port: int = 8000, batch_window_ms: float = WINDOW_MS,
          text_runtime: str = TEXT_RUNTIME, cache: str | Path = DEFAULT_CACHE) -> None:
    import uvicorn

    searcher = Searcher(index, text_runtime=text_runtime, cache=cache)
    searcher.warm_up()
    uvicorn.run(create_app(searcher, batch_window_ms), host=host, port=port, log_level="info")
