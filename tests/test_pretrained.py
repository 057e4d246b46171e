"""The pretrained model shipped in the package, and ``xmr export`` that makes such a bundle."""
from __future__ import annotations

import json
import zipfile

import pytest
import torch

from xmr.cli import main
from xmr.pretrained import BUNDLE_DIR, DEFAULT, MAX_BYTES, bundled_run, export_run
from xmr.runs import open_run

from bad_input_data import tiny_train_args, write_precomputed


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    spec = f"precomputed:{write_precomputed(tmp / 'data')}"
    assert main(tiny_train_args(spec, tmp / "run", tmp / "cache", "--set", "epochs=2")) == 0
    return tmp, spec


def test_export_writes_float16_weights_that_load_as_the_run(tiny_run, tmp_path, capsys):
    tmp, spec = tiny_run
    assert main(["export", str(tmp / "run"), "--out", str(tmp_path / "b")]) == 0
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "b" / "best.safetensors"))
    assert stored and all(k.startswith("model.") for k in stored)  # no optimiser state, no RNG
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    meta = json.loads((tmp_path / "b" / "best.json").read_text())
    assert meta["dtype"] == "float16" and meta["exported_from"] == "run/best" and meta["optimizer_groups"] == []
    assert meta["match_levels"]["source"].endswith(" dev")  # a search of the bundle needs no dataset

    original, bundle = open_run(tmp / "run"), open_run(tmp_path / "b")
    assert bundle.meta["extractor"] == original.meta["extractor"] and bundle.vocab.words == original.vocab.words
    for (name, a), (_, b) in zip(original.model.state_dict().items(), bundle.model.state_dict().items()):
        assert b.dtype == a.dtype, name  # loaded back into the model's own float32
        assert torch.equal(b, a.half().to(a.dtype) if a.is_floating_point() else a), name

    capsys.readouterr()
    for run, out in ((tmp / "run", "a.json"), (tmp_path / "b", "b.json")):
        assert main(["eval", str(run), "--split", "test", "--cache", str(tmp / "cache"),
                     "--json", str(tmp_path / out)]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert abs(a["rsum"] - b["rsum"]) <= 30  # 4 test images: one rank moved is 20 points of rsum at most
    assert b["run"] == str(tmp_path / "b")


def test_export_refuses_a_model_over_the_size_limit(tiny_run, tmp_path, monkeypatch):
    import xmr.pretrained as p
    from xmr.checkpoint import CheckpointError

    monkeypatch.setattr(p, "MAX_BYTES", 100)
    with pytest.raises(CheckpointError, match="over the bundle limit of 100"):
        export_run(tiny_run[0] / "run", tmp_path / "b")


def test_the_shipped_bundle_is_small_and_complete():
    path = bundled_run()
    assert path == BUNDLE_DIR / DEFAULT
    assert (path / "best.safetensors").stat().st_size <= MAX_BYTES
    metrics = json.loads((path / "test-metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n_images"] == 1000 and metrics["run"] == "pretrained"
    meta = json.loads((path / "best.json").read_text())
    assert meta["dtype"] == "float16" and meta["match_levels"]["source"] == "flickr8k dev"


@pytest.mark.slow
def test_the_shipped_model_indexes_and_searches_a_photo_folder(tmp_path, capsys):
    """A fresh install's path: no run, no dataset; EfficientNet and MiniLM from their packages."""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]):
        Image.new("RGB", (64, 48), colour).save(photos / f"p{i}.jpg")
    idx = tmp_path / "idx"
    assert main(["index", "build", "--images", str(photos), "--out", str(idx), "--quiet",
                 "--cache", str(tmp_path / "c"), "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["search", str(idx), "a dog on a beach", "-k", "4", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert {h["image_id"] for h in hits} == {f"p{i}.jpg" for i in range(4)}
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1
    assert hits[0]["match"] == "none"  # four plain colour fields hold nothing like "a dog on a beach"


@pytest.mark.slow
def test_a_built_wheel_carries_the_bundle(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import shutil

    root, src = Path(__file__).resolve().parents[1], tmp_path / "src"  # built from a copy: no build/ in the repo
    shutil.copytree(root / "xmr", src / "xmr", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(root / f, src / f)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, timeout=300, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("xmr-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("best.safetensors", "best.json", "vocab.json", "test-metrics.json"):
        assert f"xmr/bundled/{DEFAULT}/{f}" in names
