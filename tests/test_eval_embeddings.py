"""``xmr eval-embeddings``: any model's vectors through xmr's own evaluation, exactly."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from xmr.cli import main
from xmr.eval.embeddings import evaluate_embeddings
from xmr.eval.evaluate import encode, evaluate
from xmr.eval.recall import ranks_from_scores, summarize
from xmr.runs import open_run

from conftest import SYNTHETIC_SMALL

VSEPP_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "vsepp-protocol"


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------ the VSE++ reference


def test_reproduces_the_vsepp_reference(tmp_path, capsys):
    if not VSEPP_DIR.is_dir():
        pytest.skip(f"VSE++ protocol reference data not found at {VSEPP_DIR}")
    expected = json.loads((VSEPP_DIR / "expected.json").read_text())
    out = tmp_path / "r.json"
    code, _, err = run_cli(["eval-embeddings", str(VSEPP_DIR / "images.npy"), str(VSEPP_DIR / "captions.npy"),
                            "--captions-per-image", "5", "--score", "cosine", "--json", str(out)], capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["ranks"]["i2t"] == expected["i2t_ranks_0based"]
    assert res["ranks"]["t2i"] == expected["t2i_ranks_0based"]
    for d in ("i2t", "t2i"):
        for m in ("r1", "r5", "r10", "medr", "meanr"):
            assert math.isclose(res[d][m], expected[d][m], rel_tol=0, abs_tol=1e-9), (d, m)
    # CLIP_benchmark's keys: image retrieval = a caption querying images (t2i), fractions
    assert res["task"] == "zeroshot_retrieval"
    for k in (1, 5, 10):
        assert res["metrics"][f"image_retrieval_recall@{k}"] == pytest.approx(expected["t2i"][f"r{k}"] / 100)
        assert res["metrics"][f"text_retrieval_recall@{k}"] == pytest.approx(expected["i2t"][f"r{k}"] / 100)


def test_vsepp_reference_with_an_assignment_file_and_shuffled_captions(tmp_path, capsys):
    """Captions in any order with an explicit caption->image file: the same ranks, moved with them."""
    if not VSEPP_DIR.is_dir():
        pytest.skip(f"VSE++ protocol reference data not found at {VSEPP_DIR}")
    expected = json.loads((VSEPP_DIR / "expected.json").read_text())
    captions = np.load(VSEPP_DIR / "captions.npy")
    perm = np.random.default_rng(0).permutation(len(captions))
    np.save(tmp_path / "caps.npy", captions[perm])
    (tmp_path / "assign.txt").write_text("".join(f"{j // 5}\n" for j in perm))
    out = tmp_path / "r.json"
    code, _, err = run_cli(["eval-embeddings", str(VSEPP_DIR / "images.npy"), str(tmp_path / "caps.npy"),
                            "--caption-image", str(tmp_path / "assign.txt"), "--json", str(out)], capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["ranks"]["i2t"] == expected["i2t_ranks_0based"]
    assert res["ranks"]["t2i"] == np.asarray(expected["t2i_ranks_0based"])[perm].tolist()


def test_image_rows_repeated_per_caption_are_deduplicated(tmp_path, capsys):
    if not VSEPP_DIR.is_dir():
        pytest.skip(f"VSE++ protocol reference data not found at {VSEPP_DIR}")
    expected = json.loads((VSEPP_DIR / "expected.json").read_text())
    np.save(tmp_path / "ims.npy", np.repeat(np.load(VSEPP_DIR / "images.npy"), 5, axis=0))
    out = tmp_path / "r.json"
    code, _, err = run_cli(["eval-embeddings", str(tmp_path / "ims.npy"), str(VSEPP_DIR / "captions.npy"),
                            "--captions-per-image", "5", "--json", str(out)], capsys)
    assert code == 0 and "repeat each image 5 times" in err
    assert json.loads(out.read_text())["ranks"]["i2t"] == expected["i2t_ranks_0based"]


# ------------------------------------------------------------------ a trained model's embeddings


@pytest.fixture(scope="module")
def trained_embeddings(vsepp_index, feature_cache):
    """A trained VSE++ run's test split: its own evaluation and its image / caption vectors."""
    run, _ = vsepp_index
    trained = open_run(run)
    model = trained.model
    data = trained.data("test", SYNTHETIC_SMALL, cache=feature_cache, progress=False)
    img, txt = encode(model, data)
    vectors = model.embed(img).numpy(), model.embed(txt).numpy()
    return model, data, vectors


@pytest.mark.parametrize("folds", [1, 5])
def test_matches_xmr_evaluation_of_the_model_exactly(trained_embeddings, folds):
    model, data, (images, captions) = trained_embeddings
    own = evaluate(model, data, folds=folds)
    got = evaluate_embeddings(images, captions, data.caption_image, "ip", folds=folds)
    for d in ("i2t", "t2i"):
        assert got[d] == own[d], d  # exact: the same numbers, not approximately
    assert got["rsum"] == own["rsum"] and got["mR"] == own["mR"]
    if folds == 1:
        assert got["ranks"] == own["ranks"]
    else:
        assert got["folds"] == 5 and [f["i2t"] for f in got["per_fold"]] == [f["i2t"] for f in own["per_fold"]]
    assert got["metrics"]["image_retrieval_recall@5"] == own["t2i"]["r5"] / 100


def test_cli_on_saved_model_embeddings(trained_embeddings, tmp_path, capsys):
    model, data, (images, captions) = trained_embeddings
    np.save(tmp_path / "img.npy", images)
    np.save(tmp_path / "cap.npy", captions)
    np.save(tmp_path / "assign.npy", data.caption_image)
    out = tmp_path / "r.json"
    code, stdout, err = run_cli(["eval-embeddings", str(tmp_path / "img.npy"), str(tmp_path / "cap.npy"),
                                 "--caption-image", str(tmp_path / "assign.npy"), "--folds", "5",
                                 "--model", "vsepp-tiny", "--dataset", "synthetic", "--json", str(out)], capsys)
    assert code == 0, err
    assert "image->text" in stdout and "rsum" in stdout
    res = json.loads(out.read_text())
    own = evaluate(model, data, folds=5)
    assert res["i2t"] == own["i2t"] and res["t2i"] == own["t2i"]
    assert res["model"] == "vsepp-tiny" and res["dataset"] == "synthetic" and res["folds"] == 5


@pytest.mark.parametrize("score", ["ip", "cosine", "l2"])
def test_scores_against_brute_force(score):
    rng = np.random.default_rng(len(score))
    # integer vectors give exact ties under ip and l2; cosine's division would round them apart
    # differently in numpy and torch, so it gets continuous (tie-free) vectors
    draw = rng.normal if score == "cosine" else (lambda size: rng.integers(-2, 3, size=size))
    images, captions = draw(size=(11, 4)).astype(np.float64), draw(size=(40, 4)).astype(np.float64)
    caption_image = rng.permutation(np.r_[np.arange(11), rng.integers(0, 11, size=29)])
    if score == "ip":
        scores = images @ captions.T
    elif score == "cosine":
        def unit(x):
            return x / np.linalg.norm(x, axis=1, keepdims=True)
        scores = unit(images) @ unit(captions).T
    else:
        scores = -((images[:, None, :] - captions[None, :, :]) ** 2).sum(-1)
    want = summarize(*ranks_from_scores(torch.from_numpy(scores), caption_image))
    got = evaluate_embeddings(images, captions, caption_image, score)
    assert got["i2t"] == want["i2t"] and got["t2i"] == want["t2i"]


# ------------------------------------------------------------------ bad files: one line each


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "img.npy", rng.normal(size=(4, 3)).astype(np.float32))
    np.save(tmp_path / "cap.npy", rng.normal(size=(20, 3)).astype(np.float32))
    return tmp_path


def _nan_captions(d):
    c = np.load(d / "cap.npy")
    c[7, 1] = np.nan
    np.save(d / "cap.npy", c)


BAD = [
    ("dim mismatch", lambda d: np.save(d / "cap.npy", np.ones((20, 5), np.float32)), ["--captions-per-image", "5"],
     "image embeddings are 3-d but caption embeddings 5-d"),
    ("wrong count", lambda d: None, ["--captions-per-image", "4"], "4 images x 4 captions per image is 16 captions, "
     "but the caption file has 20"),
    ("nan", _nan_captions, ["--captions-per-image", "5"], "cap.npy: row 7 has NaN or inf"),
    ("1-d", lambda d: np.save(d / "img.npy", np.ones(4, np.float32)), ["--captions-per-image", "5"],
     "img.npy: features must be"),
    ("3-d", lambda d: np.save(d / "img.npy", np.ones((4, 2, 3), np.float32)), ["--captions-per-image", "5"],
     "img.npy: image embeddings must be a 2-d array"),
    ("integers", lambda d: np.save(d / "img.npy", np.ones((4, 3), np.int64)), ["--captions-per-image", "5"],
     "img.npy: features must be float"),
    ("not npy", lambda d: (d / "img.npy").write_bytes(b"hello"), ["--captions-per-image", "5"],
     "img.npy: not a readable .npy file"),
    ("missing", lambda d: (d / "img.npy").unlink(), ["--captions-per-image", "5"], "img.npy: feature file not found"),
    ("assignment length", lambda d: (d / "a.txt").write_text("0\n1\n"), ["--caption-image", "A"],
     "a.txt: 2 image indices for 20 captions"),
    ("assignment range", lambda d: np.save(d / "a.npy", np.r_[np.arange(20) // 5][:-1].tolist() + [9]),
     ["--caption-image", "N"], "caption 19 names image 9, outside 0..3"),
    ("assignment not int", lambda d: (d / "a.txt").write_text("0\n" * 5 + "one\n"), ["--caption-image", "A"],
     "a.txt:6: expected an image index"),
    ("assignment floats", lambda d: np.save(d / "a.npy", np.full(20, 0.5)), ["--caption-image", "N"],
     "a.npy: the assignment must be a 1-d array of image indices"),
    ("image without caption", lambda d: np.save(d / "a.npy", np.arange(20) % 3), ["--caption-image", "N"],
     "image 3 has no caption"),
    ("folds", lambda d: None, ["--captions-per-image", "5", "--folds", "3"], "4 images do not split into 3"),
]


@pytest.mark.parametrize("name, mutate, extra, pattern", BAD, ids=[b[0] for b in BAD])
def test_bad_files_get_one_line(files, capsys, name, mutate, extra, pattern):
    mutate(files)
    extra = [str(files / "a.txt") if a == "A" else str(files / "a.npy") if a == "N" else a for a in extra]
    code, _, err = run_cli(["eval-embeddings", str(files / "img.npy"), str(files / "cap.npy"), *extra], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("xmr: error: "), err
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in err


def test_assignment_options_are_exclusive(files):
    with pytest.raises(SystemExit, match="exactly one of --caption-image"):
        main(["eval-embeddings", str(files / "img.npy"), str(files / "cap.npy")])
