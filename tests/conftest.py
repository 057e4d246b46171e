"""Shared fixtures: tiny datasets written into tmp_path in each reader's on-disk layout.

Nothing here reads /work/shared; every dataset is a handful of 16x16 images and made-up captions.
The ``make_*`` fixtures are factories (call them with your own contents, e.g. to plant an error);
the plain fixtures (``flickr8k_root``, ``karpathy_json``, ``coco_root``, ``precomputed_root``)
build a valid default dataset and return its location plus what a reader should give back.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

K = 5  # captions per image, the readers' default


def write_image(path: Path, colour=(200, 30, 30), size=(16, 16), mode: str = "RGB", fmt: str | None = None) -> Path:
    """Write a small solid-colour image (format from the suffix unless ``fmt`` is given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, format=fmt)
    return path


def colour_of(i: int) -> tuple[int, int, int]:
    """A distinct, JPEG-robust colour per image index (to check a path points at the right file)."""
    return ((40 * i + 20) % 256, (90 * i + 60) % 256, (150 + 30 * i) % 256)


def caps_for(name: str, n: int = K) -> list[str]:
    return [f"{name} caption number {j}" for j in range(n)]


# --------------------------------------------------------------------------- Flickr8k


FLICKR_SPLITS = {
    "train": ["1001_a.jpg", "1002_b.jpg", "1003_c.jpg"],
    "dev": ["2001_d.jpg", "2002_e.jpg"],
    "test": ["3001_f.jpg"],
}
FLICKR_SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "dev": "Flickr_8k.devImages.txt",
                      "test": "Flickr_8k.testImages.txt"}


@pytest.fixture
def make_flickr8k(tmp_path):
    """make_flickr8k(captions=None, splits=None, token_lines=None, images=True) -> root.

    ``captions`` maps image name -> caption list (default: 5 per image of ``splits``);
    ``token_lines`` (bytes lines, no newline) replaces the token file's generated content.
    Token lines are written interleaved across images (round robin), as a reader must
    group them by image rather than rely on them being adjacent.
    """

    def make(captions=None, splits=None, token_lines=None, images=True, root_name="flickr8k"):
        splits = FLICKR_SPLITS if splits is None else splits
        root = tmp_path / root_name
        text_dir, image_dir = root / "Flickr8k_text", root / "Flicker8k_Dataset"
        text_dir.mkdir(parents=True, exist_ok=True)
        image_dir.mkdir(parents=True, exist_ok=True)
        all_names = [n for names in splits.values() for n in names]
        if captions is None:
            captions = {n: caps_for(n) for n in all_names}
        if token_lines is None:
            token_lines = []
            for j in range(max((len(c) for c in captions.values()), default=0)):
                for name, caps in captions.items():
                    if j < len(caps):
                        token_lines.append(f"{name}#{j}\t{caps[j]}".encode("utf-8"))
        (text_dir / "Flickr8k.token.txt").write_bytes(b"".join(ln + b"\n" for ln in token_lines))
        for split, names in splits.items():
            (text_dir / FLICKR_SPLIT_FILES[split]).write_text("".join(n + "\n" for n in names), encoding="utf-8")
        if images:
            for i, name in enumerate(all_names):
                write_image(image_dir / name, colour_of(i))
        return root

    return make


@pytest.fixture
def flickr8k_root(make_flickr8k):
    return make_flickr8k()


# --------------------------------------------------------------------------- Karpathy JSON


def karpathy_entries() -> list[dict]:
    """Entries in JSON order; 'restval' interleaved with 'train', one image with 6 sentences,
    one sentence with an empty 'raw' (the reader falls back to its tokens)."""
    spec = [("k0.jpg", "train"), ("k1.jpg", "val"), ("k2.jpg", "restval"), ("k3.jpg", "test"),
            ("k4.jpg", "train"), ("k5.jpg", "val"), ("k6.jpg", "restval"), ("k7.jpg", "test")]
    entries = []
    for name, split in spec:
        raws = caps_for(name, 6 if name == "k4.jpg" else K)
        sents = [{"raw": r, "tokens": r.split()} for r in raws]
        if name == "k0.jpg":
            sents[2] = {"raw": "", "tokens": ["tokens", "only", "sentence"]}
        entries.append({"filepath": "imgs", "filename": name, "split": split, "sentences": sents})
    return entries


KARPATHY_EXPECTED = {
    "train": ["k0.jpg", "k2.jpg", "k4.jpg", "k6.jpg"],
    "dev": ["k1.jpg", "k5.jpg"],
    "test": ["k3.jpg", "k7.jpg"],
}


@pytest.fixture
def make_karpathy(tmp_path):
    """make_karpathy(entries=None, images=True) -> path of dataset_test.json (images under its folder)."""

    def make(entries=None, images=True, name="dataset_test.json"):
        entries = karpathy_entries() if entries is None else entries
        root = tmp_path / "karpathy"
        root.mkdir(exist_ok=True)
        path = root / name
        path.write_text(json.dumps({"images": entries, "dataset": "test"}), encoding="utf-8")
        if images:
            for i, e in enumerate(entries):
                write_image(root / e.get("filepath", "") / e["filename"], colour_of(i))
        return path

    return make


@pytest.fixture
def karpathy_json(make_karpathy):
    return make_karpathy()


# --------------------------------------------------------------------------- COCO


def coco_files() -> dict[str, dict]:
    """captions_train2014.json / captions_val2014.json contents.

    train: image list order 14, 11, 13, 12 (not id order); 14 has 7 captions, 11 has 6,
    12 has 5, 13 only 4 (so it is dropped); annotations interleaved across images.
    """
    def build(images: list[tuple[int, int]]) -> dict:
        anns, aid = [], 100
        for j in range(max(n for _, n in images)):
            for image_id, n in images:
                if j < n:
                    anns.append({"id": aid, "image_id": image_id, "caption": f"coco {image_id} caption {j}"})
                    aid += 1
        return {"images": [{"id": i, "file_name": f"COCO_{i:012d}.jpg", "width": 16, "height": 16}
                           for i, _ in images],
                "annotations": anns}

    return {"train2014": build([(14, 7), (11, 6), (13, 4), (12, 5)]),
            "val2014": build([(21, 5), (22, 6)])}


COCO_EXPECTED = {"train": ["14", "11", "12"], "dev": ["21", "22"], "test": ["21", "22"]}


@pytest.fixture
def make_coco(tmp_path):
    """make_coco(files=None, images=True) -> root with annotations/captions_{name}.json and {name}/ images."""

    def make(files=None, images=True):
        files = coco_files() if files is None else files
        root = tmp_path / "coco"
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (root / "annotations" / f"captions_{name}.json").write_text(json.dumps(data), encoding="utf-8")
            if images:
                for i, im in enumerate(data["images"]):
                    write_image(root / name / im["file_name"], colour_of(i))
        return root

    return make


@pytest.fixture
def coco_root(make_coco):
    return make_coco()


# --------------------------------------------------------------------------- precomputed


@pytest.fixture
def make_precomputed(tmp_path):
    """make_precomputed(split, feats, captions=None, ids=None, caps_bytes=None) -> root.

    Writes ``{split}_ims.npy`` and ``{split}_caps.txt`` (``captions`` lines, or raw ``caps_bytes``).
    """
    root = tmp_path / "precomp"
    root.mkdir(exist_ok=True)

    def make(split, feats, captions=None, ids=None, caps_bytes=None):
        np.save(root / f"{split}_ims.npy", np.asarray(feats))
        if caps_bytes is None:
            caps_bytes = "".join(c + "\n" for c in captions).encode("utf-8")
        (root / f"{split}_caps.txt").write_bytes(caps_bytes)
        if ids is not None:
            (root / f"{split}_ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
        return root

    return make


@pytest.fixture
def precomputed_root(make_precomputed):
    """train: (3, 4) float32 with an ids file; dev: (2, 3, 4) float16 region features;
    test: (10, 4) float32 where each of 2 images' rows is repeated 5 times (one per caption)."""
    rng = np.random.default_rng(0)
    train = rng.normal(size=(3, 4)).astype(np.float32)
    dev = rng.normal(size=(2, 3, 4)).astype(np.float16)
    test_unique = rng.normal(size=(2, 4)).astype(np.float32)
    make_precomputed("train", train, [c for i in range(3) for c in caps_for(f"tr{i}")],
                     ids=["img_a", "img_b", "img_c"])
    make_precomputed("dev", dev, [c for i in range(2) for c in caps_for(f"dv{i}")])
    root = make_precomputed("test", np.repeat(test_unique, K, axis=0),
                            [c for i in range(2) for c in caps_for(f"te{i}")])
    return root, {"train": train, "dev": dev, "test": test_unique}


# One small synthetic set with its feature cache for every end-to-end test in the session, so
# EfficientNet and MiniLM features are extracted once.
SYNTHETIC_SMALL = "synthetic,seed=3,n_train=300,n_dev=60,n_test=60"


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("feature-cache")


_OWN_CACHE: list[str] = []


def pytest_configure(config):
    import torch

    torch.set_num_threads(2)  # the CI machine's cores; more threads only contend
    # A searcher exports its ONNX networks into its cache (xmr.search.engine), by default XMR_CACHE
    # or runs/cache: the session's own folder, so tests write nothing into the checkout
    if "XMR_CACHE" not in os.environ:
        _OWN_CACHE.append(tempfile.mkdtemp(prefix="xmr-test-cache-"))
        os.environ["XMR_CACHE"] = _OWN_CACHE[0]


def pytest_unconfigure(config):
    for folder in _OWN_CACHE:
        shutil.rmtree(folder, ignore_errors=True)


SLOW_FIXTURES = {"feature_cache", "vsepp_index", "jgcar_index"}  # CNN/BERT features, trained runs


def pytest_collection_modifyitems(config, items):
    """A test that uses the shared feature cache or a trained index is slow, wherever it lives."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# Search indexes over the small synthetic test split (test_search, test_browser).
def _trained(tmp_path_factory, cache, model: str) -> str:
    from xmr.train import TrainConfig, train

    out = tmp_path_factory.mktemp(f"{model}-run")
    train(TrainConfig(model=model, preset="tiny", data=SYNTHETIC_SMALL, out=str(out), cache=str(cache),
                      overrides={"epochs": 1}, progress=False))
    return str(out)


def _index(tmp_path_factory, cache, model: str):
    from xmr.search.index import Collection, build_index

    run = _trained(tmp_path_factory, cache, model)
    out = tmp_path_factory.mktemp("idx") / f"{model}-index"
    build_index(run, Collection("split", SYNTHETIC_SMALL, "test"), out, cache=cache, progress=False)
    return run, out


@pytest.fixture(scope="session")
def vsepp_index(tmp_path_factory, feature_cache):
    return _index(tmp_path_factory, feature_cache, "vsepp")


@pytest.fixture(scope="session")
def jgcar_index(tmp_path_factory, feature_cache):
    return _index(tmp_path_factory, feature_cache, "jgcar")
