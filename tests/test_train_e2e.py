"""End to end on a small synthetic set: features -> train -> checkpoint -> eval, and resume."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from xmr.cli import main
from xmr.eval.evaluate import evaluate
from xmr.runs import open_run
from xmr.train import TrainConfig, train

from conftest import SYNTHETIC_SMALL as DATA

pytestmark = pytest.mark.slow  # trains, extracts features or starts processes


@pytest.fixture
def cache(feature_cache):
    return feature_cache


def config(cache, out, **overrides) -> TrainConfig:
    return TrainConfig(model="vsepp", preset="tiny", data=DATA, out=str(out), cache=str(cache),
                       overrides=overrides, progress=False)


def test_train_then_eval_beats_chance(cache, tmp_path):
    cfg = config(cache, tmp_path / "run", epochs=8)
    best = train(cfg)
    for name in ("best.safetensors", "best.json", "last.safetensors", "last.json", "vocab.json",
                 "config.json", "metrics.jsonl", "curve.png"):
        assert (tmp_path / "run" / name).is_file(), name
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and rows[-1]["train_loss"] < rows[1]["train_loss"]

    trained = open_run(tmp_path / "run")
    test = trained.data("test", cache=cache, progress=False)
    result = evaluate(trained.model, test)
    # Chance: R@5 image->text = 1-(1-5/300)^5 ~ 8%, text->image 5/60 ~ 8%; R@10 ~ 17%.
    assert result["i2t"]["r5"] > 40 and result["t2i"]["r5"] > 30, result
    assert result["t2i"]["r10"] > 50, result
    assert best["rsum"] == max(r["dev_rsum"] for r in rows)


def test_resume_continues_exactly(cache, tmp_path):
    full = tmp_path / "full"
    train(config(cache, full, epochs=2))
    part = tmp_path / "part"
    train(config(cache, part, epochs=1))
    # Continue the 1-epoch run to 2 epochs (xmr train --out part --resume --set epochs=2).
    train(config(cache, part, epochs=2), resume=True)
    assert json.loads((part / "config.json").read_text())["overrides"]["epochs"] == 2
    a, b = load_file(str(full / "last.safetensors")), load_file(str(part / "last.safetensors"))
    model_keys = [k for k in a if k.startswith("model.")]
    assert model_keys
    for k in model_keys:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    rows_full = (full / "metrics.jsonl").read_text().splitlines()
    rows_part = (part / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["dev_rsum"] for r in rows_full] == [json.loads(r)["dev_rsum"] for r in rows_part]


def test_a_copied_run_resumes_in_its_new_folder(cache, tmp_path):
    original = tmp_path / "original"
    train(config(cache, original, epochs=1))
    before = (original / "last.safetensors").read_bytes()
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    train(config(cache, copy, epochs=2), resume=True)  # the copy's config.json still names "original"
    assert (original / "last.safetensors").read_bytes() == before
    assert len((original / "metrics.jsonl").read_text().splitlines()) == 1
    assert len((copy / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((copy / "config.json").read_text())["out"] == str(copy)


def test_cli_eval_writes_json(cache, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", DATA, "--out", str(run), "--cache", str(cache), "--set", "epochs=1",
                 "--quiet"]) == 0
    out_json = tmp_path / "result.json"
    assert main(["eval", str(run), "--split", "test", "--cache", str(cache), "--json", str(out_json)]) == 0
    result = json.loads(out_json.read_text())
    assert len(result["ranks"]["t2i"]) == 300 and len(result["ranks"]["i2t"]) == 60
    assert np.isclose(result["rsum"], sum(result[d][f"r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)))
    assert "image->text" in capsys.readouterr().out


def test_cli_reports_bad_override(cache, tmp_path, capsys):
    code = main(["train", "--data", DATA, "--out", str(tmp_path / "x"), "--cache", str(cache),
                 "--set", "no_such_setting=1", "--quiet"])
    assert code == 2
    assert "no_such_setting" in capsys.readouterr().err


def test_dev_subset_validates_on_first_images(cache, tmp_path):
    best = train(config(cache, tmp_path / "run", epochs=1, dev_images=20))
    assert best["n_images"] == 20 and best["n_captions"] == 100


def test_cli_data_and_features(tmp_path, capsys):
    spec = "synthetic,seed=9,n_train=4,n_dev=2,n_test=2"
    assert main(["data", spec, "--show", "1"]) == 0
    out = capsys.readouterr().out
    assert "train: 4 images, 20 captions (5/image), 10 label classes" in out
    stats = tmp_path / "stats.json"
    assert main(["features", spec, "--splits", "dev", "--cache", str(tmp_path), "--json", str(stats)]) == 0
    written = list(tmp_path.glob("features/*/efficientnet-lite0-224/grid/dev_ims.npy"))
    assert len(written) == 1 and np.load(written[0], mmap_mode="r").shape == (2, 49, 1280)
    assert json.loads(stats.read_text())["splits"][0]["images"] == 2


def test_cli_names_bad_dataset(capsys):
    assert main(["data", "nosuchkind:x"]) == 2
    assert "unknown dataset kind 'nosuchkind'" in capsys.readouterr().err


def test_a_death_between_the_metrics_row_and_the_checkpoint_loses_no_row(cache, tmp_path, monkeypatch):
    """The process dies after writing an epoch's metrics row but before the checkpoint that marks
    the epoch done (the window a SIGKILL can hit): the resumed run redoes that epoch and ends with
    every row, as an uninterrupted run."""
    from xmr import checkpoint

    full, killed = tmp_path / "full", tmp_path / "killed"
    train(config(cache, full, epochs=2))
    real = checkpoint.save

    def dies_at_the_last_epoch_end(stem, model, meta, *args, **kwargs):
        if Path(stem).name == "last" and meta.get("epoch") == 1 and "partial" not in meta:
            raise KeyboardInterrupt  # where the process would die
        return real(stem, model, meta, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", dies_at_the_last_epoch_end)
    with pytest.raises(KeyboardInterrupt):
        train(config(cache, killed, epochs=2))
    monkeypatch.setattr(checkpoint, "save", real)
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 2  # the row came first
    train(config(cache, killed, epochs=2), resume=True)
    rows = [[json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()] for run in (full, killed)]
    assert [r["dev_rsum"] for r in rows[0]] == [r["dev_rsum"] for r in rows[1]] and len(rows[1]) == 2


@pytest.mark.parametrize("kill_at", ["epoch end", "mid-epoch"])
def test_sigkill_then_resume_matches_uninterrupted(cache, tmp_path, kill_at):
    """A training process killed with SIGKILL part-way (after an epoch's checkpoint, or after a
    checkpoint inside an epoch) and resumed with --resume ends with the same weights and dev
    metrics as an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    full = tmp_path / "full"
    train(config(cache, full, epochs=3, checkpoint_every=5))
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "xmr", "train", "--data", DATA, "--out", str(killed), "--cache", str(cache),
           "--set", "epochs=3", "--set", "checkpoint_every=5", "--quiet", "--threads", str(torch.get_num_threads())]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300

    def ready() -> bool:
        try:
            meta = json.loads((killed / "last.json").read_text())
        except (OSError, ValueError):
            return False
        return ("partial" in meta) == (kill_at == "mid-epoch")

    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before the kill"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((killed / "last.json").read_text())["epoch"] < 2, "killed too late to test anything"
    train(config(cache, killed, epochs=3, checkpoint_every=5), resume=True)
    a, b = load_file(str(full / "last.safetensors")), load_file(str(killed / "last.safetensors"))
    for k in (k for k in a if k.startswith("model.")):
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    rows = [[json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()] for run in (full, killed)]
    assert [r["dev_rsum"] for r in rows[0]] == [r["dev_rsum"] for r in rows[1]] and len(rows[0]) == 3
    np.testing.assert_allclose([r["train_loss"] for r in rows[0]], [r["train_loss"] for r in rows[1]], rtol=1e-6)
