"""ACMM's k-shot protocol (xmr.eval.kshot): content words, training frequencies, nested subsets,
recalls on a subset against brute force, pair ranks from a score matrix, and ``xmr eval --kshot``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xmr.eval.kshot import (content_words, format_kshot, kshot_results, kshot_subsets, pair_i2t_ranks,
                            pair_ranks, rare_words, word_frequencies)
from xmr.eval.recall import ranks_from_scores


def pair_ranks_from_scores(scores: torch.Tensor | np.ndarray, caption_image: np.ndarray,
                           captions: np.ndarray | None = None) -> np.ndarray:
    """Reference: image->text pair ranks from a full (Ni, Nt) score matrix, for ``captions`` (default all)."""
    scores = torch.as_tensor(scores)
    cap_img = torch.as_tensor(np.asarray(caption_image), dtype=torch.long)
    caps = (torch.arange(cap_img.numel()) if captions is None
            else torch.as_tensor(np.asarray(captions), dtype=torch.long))
    return pair_ranks(scores[cap_img[caps]], cap_img, caps, cap_img[caps]).numpy()



def test_content_words_keep_open_class_drop_function_words():
    words = content_words("There are two small dogs and a man's red bicycle, which is not very "
                          "far from them; they're running on the 3 grassy hills.")
    assert words == ["small", "dogs", "man", "red", "bicycle", "far", "running", "grassy", "hills"]
    assert content_words("It is on the top of it and they can't") == ["top"]
    assert content_words("a b 42 x2") == []


TRAIN = ["a black dog runs on the grass",
         "the black dog jumps over a fence",
         "a woman rides a red bicycle",
         "a girl in a red dress"]
TEST = ["a black dog runs",                 # 0: rarest content word "runs", seen once
        "a zebra walks on the grass",        # 1: zebra, walks never in training -> 0-shot
        "the red dog jumps",                 # 2: jumps = 1
        "the black dog and the red dog",     # 3: black 2, dog 2, red 2 -> only k >= 2
        "a the of and on",                   # 4: no content word: in no subset
        "a dog"]                             # 5: dog = 2


def test_frequencies_come_from_training_captions_only():
    freq = word_frequencies(TRAIN)
    assert freq["dog"] == 2 and freq["red"] == 2 and freq["runs"] == 1 and freq["zebra"] == 0
    assert "the" not in freq and "on" not in freq and "a" not in freq
    # the test captions do not change the counts
    assert word_frequencies(TRAIN) == freq and "walks" not in freq


def test_subsets_by_rarest_word_and_nested():
    freq = word_frequencies(TRAIN)
    sub = kshot_subsets(TEST, freq, [0, 1, 2, 5])
    assert sub[0].tolist() == [1]                 # "zebra"/"walks" never seen in training
    assert sub[1].tolist() == [0, 1, 2]
    assert sub[2].tolist() == [0, 1, 2, 3, 5]     # "dog"/"black"/"red" seen twice: k = 2 ...
    assert sub[5].tolist() == [0, 1, 2, 3, 5]     # ... and 5, but not 0 / 1; caption 4 never
    assert 3 not in sub[0] and 3 not in sub[1] and 5 not in sub[1]
    for lo, hi in ((0, 1), (1, 2), (2, 5)):
        assert set(sub[lo]) <= set(sub[hi])
    words = rare_words(TEST, freq, [0, 1, 2])
    assert words[0] == ["walks", "zebra"]
    assert words[1] == ["grass", "jumps", "runs", "walks", "zebra"]
    assert set(words[2]) == {"black", "dog", "red", "grass", "jumps", "runs", "walks", "zebra"}


def test_recalls_on_subset_match_brute_force():
    rng = np.random.default_rng(0)
    n_images, per = 40, 5
    caption_image = np.repeat(np.arange(n_images), per)
    t2i = rng.integers(0, 30, size=n_images * per)
    i2t = rng.integers(0, 20, size=n_images)
    pair = rng.integers(0, 60, size=n_images * per)
    subsets = {0: np.array([3, 17, 18, 101]), 1: np.array([3, 17, 18, 101, 150, 151, 199]),
               2: np.array([], dtype=np.int64)}
    table = kshot_results({"ranks": {"i2t": i2t.tolist(), "t2i": t2i.tolist()}}, caption_image, subsets,
                          pair_i2t=pair, words={0: ["a"], 1: ["a", "b"], 2: []})
    for k in (0, 1):
        idx = subsets[k]
        row = table[k]
        imgs = sorted({int(caption_image[c]) for c in idx})
        assert row["n"] == len(idx) and row["n_images"] == len(imgs) and row["captions"] == idx.tolist()
        assert row["n_words"] == k + 1
        for r in (1, 5, 10):  # brute force, query by query
            assert row["t2i"][f"r{r}"] == pytest.approx(100 * sum(t2i[c] < r for c in idx) / len(idx))
            assert row["i2t"][f"r{r}"] == pytest.approx(100 * sum(pair[c] < r for c in idx) / len(idx))
            assert row["i2t_image"][f"r{r}"] == pytest.approx(100 * sum(i2t[i] < r for i in imgs) / len(imgs))
        assert row["t2i"]["medr"] == np.floor(np.median(t2i[idx])) + 1
        assert row["t2i"]["meanr"] == pytest.approx(t2i[idx].mean() + 1)
        six = [row[d][f"r{r}"] for d in ("i2t", "t2i") for r in (1, 5, 10)]
        assert row["rsum"] == pytest.approx(sum(six)) and row["mR"] == pytest.approx(sum(six) / 6)
    # image 20 holds captions 100..104: caption 101 makes it count once for i2t_image
    assert table[0]["n_images"] == 3
    assert table[2]["n"] == 0 and table[2]["t2i"] is None and table[2]["mR"] is None
    text = format_kshot(table)
    assert len(text.splitlines()) == 4 and " 7 " in text.splitlines()[2]


def test_pair_ranks_from_scores_brute_force():
    rng = np.random.default_rng(1)
    n_images, per = 6, 3
    caption_image = np.repeat(np.arange(n_images), per)
    scores = rng.normal(size=(n_images, n_images * per)).astype(np.float32)
    scores[2, 7] = scores[2, 0]  # a tie with another image's caption counts above (pessimistic)
    pair = pair_ranks_from_scores(scores, caption_image)
    for c in range(n_images * per):
        im = caption_image[c]
        expect = sum(scores[im, j] >= scores[im, c] for j in range(n_images * per) if caption_image[j] != im)
        assert pair[c] == expect
    # the pair rank is never better than the image's best-caption rank
    i2t, _ = ranks_from_scores(scores, caption_image)
    assert all(pair[c] >= i2t[caption_image[c]] for c in range(n_images * per))
    sel = np.array([4, 0, 11])
    assert pair_ranks_from_scores(scores, caption_image, sel).tolist() == pair[sel].tolist()


class _DotModel(torch.nn.Module):
    """A stand-in with the evaluation interface: scores = image @ caption vectors."""

    score_block = (2, 4)  # small blocks, so the block loops are exercised

    def similarity(self, img, txt):
        return img["v"] @ txt["v"].T


def test_pair_i2t_ranks_with_model_blocks_match_full_matrix():
    rng = np.random.default_rng(2)
    caption_image = np.repeat(np.arange(7), 5)
    im, tx = torch.as_tensor(rng.normal(size=(7, 4))), torch.as_tensor(rng.normal(size=(35, 4)))

    class Data:
        pass

    data = Data()
    data.caption_image = caption_image
    caps = np.array([34, 2, 3, 15, 16, 20])
    got = pair_i2t_ranks(_DotModel(), data, caps, reps=({"v": im}, {"v": tx}))
    full = pair_ranks_from_scores((im @ tx.T).numpy(), caption_image)
    assert got.tolist() == full[caps].tolist()


COLOURS = ["red", "green", "blue", "yellow", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star"]


def _captions(rng, n_images: int, extra: dict[int, str] | None = None) -> list[str]:
    """Five captions per image, "a <colour> <shape> near a <colour> <shape>"; ``extra`` appends a
    word to every caption of some images."""
    caps = []
    for i in range(n_images):
        c1, c2 = rng.choice(COLOURS, 2)
        s1, s2 = rng.choice(SHAPES, 2)
        tail = f" with a {extra[i]}" if extra and i in extra else ""
        caps += [f"a {c1} {s1} near a {c2} {s2}{tail}"] * 5
    return caps


def test_cli_eval_kshot_json(make_precomputed, tmp_path, capsys):
    """A 1-epoch VSE++ on a small precomputed-feature set (no image feature extraction)."""
    from xmr.cli import main
    from xmr.train import TrainConfig, train

    rng = np.random.default_rng(0)
    # training: "thistle" once, "plum" three times; test: "zebra" (never), "thistle", "plum"
    train_caps = _captions(rng, 30)
    train_caps[7] += " and a thistle"
    for j in (11, 40, 80):
        train_caps[j] += " and a plum"
    test_caps = _captions(rng, 20, {2: "zebra", 5: "thistle", 9: "plum", 13: "zebra"})
    test_caps[31] += " and a thistle"  # one caption of image 6
    for split, caps in (("train", train_caps), ("dev", _captions(rng, 10)), ("test", test_caps)):
        root = make_precomputed(split, rng.normal(size=(len(caps) // 5, 16)).astype(np.float32), caps)
    data = f"precomputed:{root}"
    run, cache = tmp_path / "run", tmp_path / "cache"
    train(TrainConfig(model="vsepp", preset="tiny", data=data, out=str(run), cache=str(cache),
                      overrides={"epochs": 1, "batch_size": 16}, progress=False))
    out = tmp_path / "res.json"
    assert main(["eval", str(run), "--kshot", "0", "1", "5", "--json", str(out), "--cache", str(cache)]) == 0
    assert "k-shot" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["epoch"] == json.loads((run / "best.json").read_text())["epoch"]  # which checkpoint scored
    table = result["kshot"]
    assert set(table) == {"0", "1", "5"}
    ci = np.repeat(np.arange(20), 5)
    zebra, thistle, plum = [*range(10, 15), *range(65, 70)], [*range(25, 30), 31], [*range(45, 50)]
    expect = {"0": zebra, "1": sorted(zebra + thistle), "5": sorted(zebra + thistle + plum)}
    for k, caps in expect.items():
        row = table[k]
        assert row["captions"] == caps and row["n"] == len(caps)
        assert row["n_images"] == len(set(ci[caps].tolist()))
        assert row["n_words"] == {"0": 1, "1": 2, "5": 3}[k]
        t2i = np.asarray(result["ranks"]["t2i"])[caps]
        best = np.asarray(result["ranks"]["i2t"])[ci[caps]]
        for r in (1, 5, 10):
            assert row["t2i"][f"r{r}"] == pytest.approx(100 * np.mean(t2i < r))
            # a pair's rank is never better than its image's best-caption rank
            assert row["i2t"][f"r{r}"] <= 100 * np.mean(best < r) + 1e-9
        assert row["mR"] == pytest.approx(np.mean([row[d][f"r{r}"] for d in ("i2t", "t2i") for r in (1, 5, 10)]))
    assert table["1"]["n_images"] == 4  # images 2, 13 (zebra), 5 and 6 (thistle)
