"""``xmr index build``: encode a collection with a trained model and store it as a search index.

A collection is a dataset split (images and their captions), a folder of images, or a file of
sentences (one per line). The index folder holds:

- ``meta.json``: format version, the model run and a hash of its checkpoint (an index is only
  served with the checkpoint it was built with), the extractor and the runtime its features were
  extracted with (``feature_runtime``: query images are encoded on the same one), the collection
  and the faiss index kinds;
- ``images.faiss`` / ``captions.faiss``: the first-stage vectors (``model.embed``) under the
  model's metric (inner product, or Euclidean for CMMN): exact (``flat``) for small collections,
  HNSW or IVF for large ones (``auto`` picks by size; ``--kind`` overrides);
- ``images.bin.faiss`` / ``captions.bin.faiss``: for models with hash codes (CMMN), the codes in a
  faiss binary index (exact Hamming search);
- ``items.json``: image ids, image paths, captions, which image each caption belongs to;
- ``image_features.npy`` and (pairwise models) ``text_<name>.npy``: the model's raw inputs, so a
  pairwise model can re-rank the first stage's candidates and an indexed image can be a query.

Publishing is atomic: the index path is a symlink to a complete version folder, swapped with one
``os.replace``; a crash while building leaves the previous version in place and usable.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from xmr.errors import one_line

if TYPE_CHECKING:
    from xmr.distributed import Context
    from xmr.runs import TrainedRun

FORMAT_VERSION = 1
EXACT_LIMIT = 50_000  # auto: exact search below this many vectors
IVF_FROM = 500_000  # auto: IVF from this many vectors (HNSW between)
EXTRACT_BATCH = 32  # extract_split's default batch: sharded builds cut the collection on its multiples
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class SearchError(ValueError):
    """A problem with an index or its inputs, with a message a user can act on."""


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def choose_kind(n: int, kind: str = "auto") -> str:
    if kind not in ("auto", "flat", "hnsw", "ivf"):
        raise SearchError(f"index kind must be auto, flat, hnsw or ivf, not {kind!r}")
    if kind != "auto":
        return kind
    return "flat" if n < EXACT_LIMIT else ("hnsw" if n < IVF_FROM else "ivf")


def make_faiss(vectors: np.ndarray, kind: str, seed: int = 0, metric: str = "ip"):
    """A faiss index over ``vectors`` (float32, (n, d)) of the given kind, by inner product
    (``metric="ip"``) or squared Euclidean distance (``"l2"``)."""
    import faiss

    if metric not in ("ip", "l2"):
        raise SearchError(f"metric must be ip or l2, not {metric!r}")
    n, d = vectors.shape
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    if kind == "flat":
        index = faiss.IndexFlat(d, faiss_metric)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss_metric)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
    else:
        nlist = max(1, min(n // 39, int(4 * np.sqrt(n))))  # faiss wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlat(d, faiss_metric), d, nlist, faiss_metric)
        rng = np.random.default_rng(seed)
        index.train(vectors[rng.choice(n, min(n, 64 * nlist), replace=False)])  # 64 points per list
        # 64 of ~4,000 lists at 1M: recall@10 0.96 for text queries, 0.86 at 16, in ~the same time
        # (results/search-scale.json)
        index.nprobe = min(nlist, 64)
    index.add(vectors)
    return index


def make_binary(codes: np.ndarray):
    """A faiss binary index (exact Hamming) over 0/1 codes (n, bits), bits a multiple of 8."""
    import faiss

    bits = codes.shape[1]
    if bits % 8:
        raise SearchError(f"faiss binary indexes need a code length that is a multiple of 8, not {bits}")
    index = faiss.IndexBinaryFlat(bits)
    index.add(np.packbits(codes.astype(np.uint8), axis=1))
    return index


@dataclass
class Collection:
    """What gets indexed: ``data`` (a dataset split, via the model's inputs) or raw images / sentences."""

    kind: str  # "split" | "images" | "sentences"
    source: str
    split: str = "test"

    def describe(self) -> str:
        return f"{self.source} [{self.split}]" if self.kind == "split" else self.source


def collect(collection: Collection, trained: TrainedRun, work: Path, cache: Path, progress: bool,
            on_bad_input: str = "fail", rows: Callable[[int], slice] | None = None):
    """The collection as PairData (features and text inputs the model reads); only ``rows`` of its
    images (with their captions), or of its sentences, where given (a rank's share of a sharded build:
    given the item count, a slice of it)."""
    from xmr.data.base import DataError, Split
    from xmr.data.pairs import PairData
    from xmr.data.text import read_caption_line

    model, vocab, meta = trained.model, trained.vocab, trained.meta
    if collection.kind == "split":
        return trained.data(collection.split, collection.source, cache, progress, on_bad_input, rows)
    if collection.kind == "images":
        folder = Path(collection.source)
        if not folder.is_dir():
            raise SearchError(f"{folder}: not a folder of images")
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise SearchError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if rows is not None:
            paths = paths[rows(len(paths))]
        split = Split("images", [str(p.relative_to(folder)) for p in paths], [], 0, image_paths=paths)
        from xmr.features.image import JOIN, extract_parts, join_features

        try:
            if model.inputs.image == "pixels":  # a model with its own CNN: the resized images
                from xmr.features.pixels import cache_pixels

                split.features, skipped = cache_pixels(split, work / "extract", model.inputs.pixels, progress,
                                                       on_bad_input)
            else:
                names = meta["extractor"].split(JOIN)
                folders, skipped, _ = extract_parts(split, lambda name: extract_folder(work, meta["extractor"], name),
                                                    meta["extractor"], "grid" if model.inputs.image == "regions" else "pooled",
                                                    progress=progress, on_bad_input=on_bad_input)
                split.features = join_features([np.load(d / "images_ims.npy", mmap_mode="r") for d in folders], names)
        except DataError as e:
            raise SearchError(f"{e} (--on-bad-input skip leaves unreadable images out)") from e
        if skipped:
            print(f"left out {len(skipped)} unreadable image(s): " + "; ".join(r["reason"] for r in skipped[:3]),
                  file=sys.stderr)
            split = split.without_images([r["index"] for r in skipped])
        return PairData(split, vocab, meta["max_len"])
    path = Path(collection.source)
    if not path.is_file():
        raise SearchError(f"{path}: sentence file not found")
    sentences = []
    for lineno, raw in enumerate(path.read_bytes().splitlines(), 1):
        if raw.strip():
            try:
                sentences.append(read_caption_line(raw, path, lineno)[1])
            except DataError as e:
                raise SearchError(str(e)) from e
    if not sentences:
        raise SearchError(f"{path}: no sentences")
    part = rows(len(sentences)) if rows is not None else slice(0, len(sentences))
    sentences = sentences[part]
    split = Split("sentences", [f"sentence-{i}" for i in range(*part.indices(part.stop))], sentences, 1)
    extra = {}
    if "bert" in model.inputs.text:
        from xmr.features.text import bert_states

        states, mask = bert_states(sentences, work / "text", "sentences", progress=progress,
                                   tail_layers=model.inputs.bert_tail)
        extra = {"bert": states, "bert_mask": mask}
    return PairData(split, vocab, meta["max_len"], extra)


def feature_runtime(collection: Collection, trained: TrainedRun, folder: Path, cache: Path) -> str | None:
    """The runtime (``xmr.features.image.RUNTIMES``) the collection's image features were extracted
    with, as ``collect`` left them (a folder of images: under ``folder``); None where no features
    were extracted (sentences, a model reading pixels, a dataset's own precomputed features)."""
    from xmr.data import DatasetSpec
    from xmr.features.image import JOIN, folder_runtime
    from xmr.features.store import feature_root

    if collection.kind == "sentences" or trained.model.inputs.image == "pixels":
        return None
    first = trained.meta["extractor"].split(JOIN)[0]  # every part is extracted with the same runtime
    if collection.kind == "images":
        return folder_runtime(extract_folder(folder, trained.meta["extractor"], first))
    return folder_runtime(feature_root(DatasetSpec.of(collection.source), first, cache))


def extract_folder(work: Path, extractor: str, part: str) -> Path:
    """Where a folder of images gets the features of one part of ``extractor``: ``work/extract``
    for a single extractor (as always), one folder per part for a joined one."""
    from xmr.features.image import JOIN

    return work / "extract" if JOIN not in extractor else work / "extract" / part


@torch.no_grad()
def embed_all(model, data, side: str, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """First-stage vectors of every image (``side="images"``) or caption, float32 (n, d); a batch's
    parts are dropped once embedded, so memory holds only the vectors."""
    from xmr.eval.evaluate import encoded_batches

    out = []
    for reps in encoded_batches(model, data, side, batch_size, progress):
        vec = model.embed(reps)
        if vec is None:
            raise SearchError(f"model {model.name!r} has no embedding to index")
        out.append(vec.float().numpy())
    return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


def run_match_levels(trained, cache: Path, progress: bool = False) -> dict | None:
    """The run's match levels (``xmr.search.calibration``): a bundle's stored ones, else measured on
    the dev split of the run's dataset; None, with a note, when that split cannot be read."""
    from xmr.data.base import DataError
    from xmr.search.calibration import match_levels

    if "match_levels" in trained.meta:
        return trained.meta["match_levels"]
    try:
        dev = trained.data("dev", cache=cache, progress=progress)
    except (DataError, OSError, ValueError) as e:
        print(f"note: no match signal in this index: the run's dev split cannot be read ({e})", file=sys.stderr)
        return None
    model = trained.model
    return match_levels(embed_all(model, dev, "images"), embed_all(model, dev, "captions"), model.metric,
                        source=f"{trained.meta['data']} dev")


def build_index(run: str | Path | None, collection: Collection, out: str | Path, kind: str = "auto",
                cache: Path = Path("runs/cache"), progress: bool = True, on_bad_input: str = "fail") -> dict:
    """Encode ``collection`` with the trained model in ``run`` (None: the bundled pretrained model)
    and publish the index at ``out``.

    Under torchrun (``WORLD_SIZE`` > 1) each rank encodes a contiguous share of the collection's
    items (``distributed.part``: features, images, captions) into its own folder of the version
    being built, and rank 0 alone merges the shares in rank order, builds the faiss indexes and
    publishes them, exactly as one process would (same items, same order, same ids); the other
    ranks wait for its outcome and return the same ``meta.json`` contents."""
    from xmr import distributed

    ctx = distributed.setup()
    try:
        return _build(run, collection, Path(out), kind, cache, progress and ctx.main, on_bad_input, ctx)
    finally:
        distributed.teardown(ctx)


def _build(run, collection: Collection, out: Path, kind: str, cache: Path, progress: bool, on_bad_input: str,
           ctx: Context) -> dict:
    from xmr import distributed
    from xmr.pretrained import resolve_run
    from xmr.runs import open_run

    run = resolve_run(run).resolve()
    trained = open_run(run)
    versions = out.parent / f"{out.name}.versions"
    if out.exists() and not out.is_symlink():
        raise SearchError(f"{out} exists and is not an xmr index; choose another --out")
    if ctx.main:
        versions.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
        (versions / f".building-{stamp}").mkdir()
    work = versions / f".building-{distributed.share(stamp if ctx.main else None, ctx)}"
    t0 = time.perf_counter()
    if not ctx.active:
        try:
            data = collect(collection, trained, work, cache, progress, on_bad_input)
            runtime = feature_runtime(collection, trained, work, cache)
            sides = embed_sides(trained.model, data, collection, progress)
            save_items(work, data, sides, collection, trained.model)
            info = finish(work, sides, run, trained, collection, kind, t0, cache, progress, runtime)
            final = versions / work.name[len(".building-"):]
            os.replace(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        publish(final, out)
        return info
    # Sharded: every rank writes its share as files into the version being built rather than
    # send it through all_gather_object, which would pickle every share (image features included)
    # into rank 0's memory at once; from files rank 0 streams them into place one at a time. The
    # price: --out must lie on a filesystem every rank sees (one host, or a shared mount).
    error, runtime = None, None
    try:
        own = work / f"shard-{ctx.rank}"
        try:
            own.mkdir()
        except FileNotFoundError:
            raise SearchError(f"{work}: not found on rank {ctx.rank}; a sharded build needs --out on a "
                              "filesystem every rank sees") from None
        data = collect(collection, trained, own, cache, progress, on_bad_input,
                       rows=lambda n: distributed.part(n, ctx, EXTRACT_BATCH))
        runtime = feature_runtime(collection, trained, own, cache)  # every rank's is the same
        sides = embed_sides(trained.model, data, collection, progress)
        save_items(own, data, sides, collection, trained.model)
        for side, vectors in sides.items():
            np.save(own / f"vectors-{side}.npy", vectors)
        shutil.rmtree(own / "extract", ignore_errors=True)
        shutil.rmtree(own / "text", ignore_errors=True)
    except Exception as e:  # every rank must reach the gather below, or the others wait on it forever
        error = f"rank {ctx.rank}: {one_line(e)}"
    failed = [e for e in distributed.gather_objects(error, ctx) if e]
    outcome = None
    if ctx.main:
        try:
            if failed:
                raise SearchError(failed[0])
            sides = merge_shards(work, ctx.world)
            info = finish(work, sides, run, trained, collection, kind, t0, cache, progress, runtime)
            final = versions / work.name[len(".building-"):]
            os.replace(work, final)
            publish(final, out)
            outcome = info
        except BaseException as e:
            shutil.rmtree(work, ignore_errors=True)
            distributed.share(failed[0] if failed else f"rank 0: {one_line(e)}", ctx)
            raise
    # The other ranks wait here (a broadcast is a barrier) for rank 0's index or its error.
    outcome = distributed.share(outcome, ctx)
    if isinstance(outcome, str):
        raise SearchError(outcome)
    return outcome


def embed_sides(model, data, collection: Collection, progress: bool) -> dict[str, np.ndarray]:
    """First-stage vectors of the collection's images (unless it is sentences) and captions (if any)."""
    sides = {}
    if collection.kind != "sentences":
        sides["images"] = embed_all(model, data, "images", progress=progress)
    if data.n_captions:
        sides["captions"] = embed_all(model, data, "captions", progress=progress)
    return sides


def save_items(folder: Path, data, sides: dict, collection: Collection, model) -> None:
    """The index's per-item files: ``items.json``, ``image_features.npy``, ``text_<name>.npy``."""
    # The model's raw inputs: a pairwise model re-ranks candidates from them, and an indexed
    # image is re-encoded from them as a query (the page's "best sentences" for an image).
    if "images" in sides:
        raw = data.features.dtype == np.uint8  # a pixels model's images stay uint8
        np.save(folder / "image_features.npy", np.asarray(data.features, dtype=np.uint8 if raw else np.float16))
    if model.pairwise:
        for name, values in data.text_features.items():
            np.save(folder / f"text_{name}.npy", np.asarray(values))
    items = {"image_ids": list(data.split.image_ids) if "images" in sides else [],
             "image_paths": [str(Path(p).resolve()) for p in data.split.image_paths]
             if "images" in sides and data.split.image_paths else None,
             "captions": list(data.split.captions),
             "caption_image": data.caption_image.tolist() if collection.kind == "split" else
             [-1] * data.n_captions}
    (folder / "items.json").write_text(json.dumps(items))


def merge_shards(work: Path, world: int) -> dict[str, np.ndarray]:
    """Join the ranks' shares (``work/shard-<rank>``, from ``save_items`` plus ``vectors-<side>.npy``)
    into ``work``'s per-item files, in rank order; returns the joined vectors; removes the shares."""
    shards = [work / f"shard-{r}" for r in range(world)]
    for r, shard in enumerate(shards):
        if not (shard / "items.json").is_file():
            raise SearchError(f"{shard}: rank {r}'s share is missing; a sharded build needs --out on a "
                              "filesystem every rank sees")
    parts = [json.loads((shard / "items.json").read_text()) for shard in shards]
    # A share's captions point at its own images: shift them by the images of the shares before it.
    offsets = np.cumsum([0] + [len(p["image_ids"]) for p in parts[:-1]])
    caption_image = np.concatenate([np.asarray(p["caption_image"], dtype=np.int64) for p in parts])
    caption_image += np.where(caption_image >= 0, np.repeat(offsets, [len(p["caption_image"]) for p in parts]), 0)
    paths = [p["image_paths"] for p in parts]
    items = {"image_ids": [i for p in parts for i in p["image_ids"]],
             "image_paths": None if any(x is None for x in paths) else [x for p in paths for x in p],
             "captions": [c for p in parts for c in p["captions"]], "caption_image": caption_image.tolist()}
    (work / "items.json").write_text(json.dumps(items))
    sides = {}
    for name in sorted(f.name for f in shards[0].glob("*.npy")):
        arrays = [np.load(shard / name, mmap_mode="r") for shard in shards]
        if name.startswith("vectors-"):
            sides[name[len("vectors-"):-len(".npy")]] = np.ascontiguousarray(np.concatenate(arrays))
            continue
        joined = np.lib.format.open_memmap(work / name, mode="w+", dtype=arrays[0].dtype,
                                           shape=(sum(len(a) for a in arrays), *arrays[0].shape[1:]))
        np.concatenate(arrays, out=joined)
        joined.flush()
        del joined, arrays
    for shard in shards:
        shutil.rmtree(shard)
    return {side: sides[side] for side in ("images", "captions") if side in sides}


def finish(work: Path, sides: dict[str, np.ndarray], run: Path, trained: TrainedRun, collection: Collection,
           kind: str, t0: float, cache: Path, progress: bool = False, runtime: str | None = None) -> dict:
    """Write the faiss indexes of ``sides`` and ``meta.json`` into ``work`` (``runtime``: that of
    the image features, ``feature_runtime``); returns the meta."""
    import faiss

    model, meta = trained.model, trained.meta
    kinds, bits = {}, None
    for side, vectors in sides.items():
        kinds[side] = choose_kind(len(vectors), kind)
        faiss.write_index(make_faiss(vectors, kinds[side], metric=model.metric), str(work / f"{side}.faiss"))
        codes = model.hash_codes(torch.from_numpy(vectors))
        if codes is not None:
            bits = int(codes.shape[1])
            faiss.write_index_binary(make_binary(codes.numpy()), str(work / f"{side}.bin.faiss"))
    info = {"format_version": FORMAT_VERSION, "run": str(run), "model": meta["model"],
            "checkpoint_sha256": file_hash(run / "best.safetensors"), "pairwise": model.pairwise,
            "extractor": meta["extractor"], "feature_runtime": runtime, "max_len": meta["max_len"],
            "image_input": model.inputs.image,
            "collection": {"kind": collection.kind, "source": collection.source, "split": collection.split},
            "counts": {side: len(v) for side, v in sides.items()},
            "dim": int(next(iter(sides.values())).shape[1]), "index_kinds": kinds,
            "metric": model.metric, "binary_bits": bits,
            "match_levels": run_match_levels(trained, cache, progress),
            "build_seconds": time.perf_counter() - t0, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    (work / "meta.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(work / "extract", ignore_errors=True)
    shutil.rmtree(work / "text", ignore_errors=True)
    return info


def publish(version: Path, out: Path) -> None:
    """Point ``out`` at ``version`` atomically; keep the previous version, drop older ones."""
    previous = out.resolve() if out.is_symlink() else None
    tmp_link = out.parent / f".{out.name}.link-{os.getpid()}"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(os.path.relpath(version, out.parent))
    os.replace(tmp_link, out)
    keep = {version.resolve(), previous}
    for old in version.parent.iterdir():
        if old.resolve() not in keep and not old.name.startswith(".building-"):
            shutil.rmtree(old, ignore_errors=True)


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise SearchError(f"{path}: not an xmr index (no meta.json); build one with `xmr index build`")
    meta = json.loads(meta_file.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise SearchError(f"{path}: index format {meta.get('format_version')} is not this xmr's "
                          f"({FORMAT_VERSION}); rebuild it with `xmr index build`")
    return meta


def describe(path: str | Path) -> str:
    """What ``xmr index info`` prints."""
    meta = read_meta(path)
    coll = meta["collection"]
    lines = [f"index {Path(path)} -> {Path(path).resolve().name}",
             f"model       {meta['model']} ({'pairwise: re-ranks its first stage' if meta['pairwise'] else 'embedding'})"
             f" from {meta['run']} (checkpoint {meta['checkpoint_sha256']})",
             f"collection  {coll['kind']}: {coll['source']}" + (f" [{coll['split']}]" if coll["kind"] == "split" else ""),
             f"features    {meta['extractor']} ({meta['image_input']}"
             + (f", {meta['feature_runtime']} runtime)" if meta.get("feature_runtime") else ")")]
    for side, n in meta["counts"].items():
        metric = {"ip": "inner product", "l2": "Euclidean"}[meta.get("metric", "ip")]
        lines.append(f"{side:11s} {n} vectors, {meta['dim']}-d, faiss {meta['index_kinds'][side]} ({metric})")
        if meta.get("binary_bits"):
            lines.append(f"{'':11s} {n} {meta['binary_bits']}-bit hash codes, faiss binary flat (Hamming)")
    lines.append(f"built       {meta['created']} in {meta['build_seconds']:.1f}s")
    return "\n".join(lines)
