"""A sharded index build (torchrun, 2 CPU processes on gloo) equals the one-process build: the same
items in the same order, the same stored features, the same vectors (atol 1e-6) and the same search
results, for a dataset split and for a folder of images, with the tiny VSE++ run of test_search.

Both builds run as subprocesses with one torch thread each, so they differ only in how the
collection is cut: the shard boundary falls on a multiple of the extraction batch (32 of the 60
images), hence each process extracts exactly the batches one process would."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import SYNTHETIC_SMALL as DATA
from xmr import distributed
from xmr.data import open_split
from xmr.search.engine import Searcher

pytestmark = pytest.mark.slow  # trains, extracts features or starts processes

QUERIES = ["a red circle", "a blue square on the left", "two green triangles"]


def build(run: str, source: list[str], out: Path, cache: Path, processes: int) -> None:
    """``xmr index build`` in a subprocess: plain, or under torchrun with ``processes`` ranks."""
    xmr = ["-m", "xmr", "index", "build", run, *source, "--out", str(out), "--cache", str(cache), "--threads", "1",
           "--quiet"]
    # --standalone: torchrun picks a free port for its rendezvous itself, so parallel runs never collide.
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, *launcher, *xmr], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def vectors(index: Path, side: str) -> np.ndarray:
    import faiss

    flat = faiss.read_index(str(index / f"{side}.faiss"))
    return flat.reconstruct_n(0, flat.ntotal)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """The synthetic test split's 60 images as PNG files, in nested folders (the build walks them)."""
    folder = tmp_path_factory.mktemp("images")
    split = open_split(DATA, "test")
    for i in range(split.n_images):
        path = folder / f"g{i % 3}" / f"{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        split.load_image(i).save(path)
    return folder


@pytest.mark.parametrize("collection", ["split", "images"])
def test_two_processes_build_the_one_process_index(collection, vsepp_index, image_folder, tmp_path):
    run, _ = vsepp_index
    source = ["--data", DATA, "--split", "test"] if collection == "split" else ["--images", str(image_folder)]
    # Each build extracts its features afresh into its own cache: one process's whole split and the
    # two ranks' shares are then computed the same way (the shared session cache was filled with
    # two threads).
    one, two = tmp_path / "one", tmp_path / "two"
    build(run, source, one, tmp_path / "cache-one", 1)
    build(run, source, two, tmp_path / "cache-two", 2)

    assert two.is_symlink() and not list(Path(f"{two}.versions").glob(".building-*"))
    assert [p.name for p in two.resolve().iterdir() if p.name.startswith("shard-")] == []
    meta_one, meta_two = (json.loads((i / "meta.json").read_text()) for i in (one, two))
    for key in ("counts", "index_kinds", "dim", "collection", "checkpoint_sha256", "extractor", "match_levels"):
        assert meta_two[key] == meta_one[key], key
    assert meta_two["counts"]["images"] == 60
    if collection == "split":  # each rank extracted its own share into the cache, none the whole split
        # (dev_ims.npy too: rank 0 measures the run's match levels on its dev split)
        names = sorted(f.name for f in (tmp_path / "cache-two").rglob("pooled/test*_ims.npy"))
        assert names == ["test-rows0-32_ims.npy", "test-rows32-60_ims.npy"], names
    assert json.loads((two / "items.json").read_text()) == json.loads((one / "items.json").read_text())
    np.testing.assert_array_equal(np.load(two / "image_features.npy"), np.load(one / "image_features.npy"))
    for side in meta_one["counts"]:
        np.testing.assert_allclose(vectors(two, side), vectors(one, side), rtol=0, atol=1e-6, err_msg=side)

    a, b = Searcher(one), Searcher(two)
    for query in QUERIES:
        hits_a, hits_b = a.search_text(query, k=10), b.search_text(query, k=10)
        assert [h.image_id for h in hits_b] == [h.image_id for h in hits_a], query
        np.testing.assert_allclose([h.score for h in hits_b], [h.score for h in hits_a], atol=1e-5)
    if collection == "split":  # an indexed image as the query: its captions, re-encoded from the stored features
        for item in (a.items["image_ids"][7], a.items["image_ids"][40]):
            assert [h.caption_index for h in b.sentences_for_item(item, k=10)] == \
                   [h.caption_index for h in a.sentences_for_item(item, k=10)]


def test_a_failing_rank_fails_the_build_on_every_rank(vsepp_index, tmp_path):
    """An unreadable image in rank 1's share: every rank exits non-zero with rank 1's one-line error
    and nothing is published or left behind."""
    run, _ = vsepp_index
    folder = tmp_path / "images"
    folder.mkdir()
    split = open_split(DATA, "test")
    for i in range(3):
        split.load_image(i).save(folder / f"{i}.png")
    (folder / "3.png").write_bytes(b"not a png")  # the shares are 0-1.png and 2-3.png
    out = tmp_path / "idx"
    with pytest.raises(AssertionError, match=r"rank 1: .*3\.png"):
        build(run, ["--images", str(folder)], out, tmp_path / "cache", 2)
    assert not out.exists() and not any(Path(f"{out}.versions").iterdir())


def test_a_rank_share_is_contiguous_and_aligned():
    shares = [distributed.part(60, distributed.Context(r, 2), 32) for r in range(2)]
    assert shares == [slice(0, 32), slice(32, 60)]
    # Too few items for aligned shares: as even as possible, none empty.
    assert [distributed.part(5, distributed.Context(r, 4), 32) for r in range(4)] == \
           [slice(0, 1), slice(1, 2), slice(2, 3), slice(3, 5)]
    with pytest.raises(ValueError, match="do not split over 3 processes"):
        distributed.part(2, distributed.Context(0, 3))
