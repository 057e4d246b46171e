"""The built-in synthetic set (deterministic, long-tailed, captions true to the scene) and Vocab."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from xmr.data import open_split
from xmr.data.synthetic import COLOURS, PLACE_XY, RARE_COLOURS, SHAPES, SIZE, read_synthetic, scene
from xmr.data.text import PAD, SPECIALS, UNK, Vocab, tokenize

N = 40
SPEC = f"synthetic,seed=0,n_train={N},n_dev={N},n_test={N}"
COLOUR_WORDS = {w for _, _, syns in COLOURS for w in syns}


@pytest.fixture(scope="module")
def train():
    return open_split(SPEC, "train")


@pytest.fixture(scope="module")
def default_train():
    return read_synthetic("train")


def test_deterministic(train):
    again = open_split(SPEC, "train")
    assert again.image_ids == train.image_ids
    assert again.captions == train.captions
    np.testing.assert_array_equal(again.labels, train.labels)
    for i in (0, 7, N - 1):
        a, b = train.load_image(i), again.load_image(i)
        assert a.mode == "RGB" and a.size == (SIZE, SIZE)
        assert a.tobytes() == b.tobytes()
        assert train.load_image(i).tobytes() == a.tobytes()  # re-rendering gives the same image
    # a larger split shares its first images: everything derives from (seed, split, index)
    bigger = open_split(f"synthetic,seed=0,n_train={N + 10}", "train")
    assert bigger.captions[: 5 * N] == train.captions
    assert bigger.load_image(3).tobytes() == train.load_image(3).tobytes()


def test_seeds_differ(train):
    other = open_split(f"synthetic,seed=1,n_train={N}", "train")
    assert other.captions != train.captions
    assert sum(a != b for a, b in zip(other.captions, train.captions)) > len(train.captions) // 2
    assert any(other.load_image(i).tobytes() != train.load_image(i).tobytes() for i in range(3))


def test_splits_differ(train):
    dev, test = open_split(SPEC, "dev"), open_split(SPEC, "test")
    for a, b in ((train, dev), (train, test), (dev, test)):
        assert a.captions != b.captions
        assert not set(a.image_ids) & set(b.image_ids)
        assert a.load_image(0).tobytes() != b.load_image(0).tobytes()
    assert train.image_ids[0] == "synthetic-train-00000" and dev.image_ids[-1] == f"synthetic-dev-{N - 1:05d}"


def test_default_sizes_and_five_captions(train):
    assert train.n_images == N and train.captions_per_image == 5 and len(train.captions) == 5 * N
    np.testing.assert_array_equal(train.caption_image, np.repeat(np.arange(N), 5))
    assert open_split("synthetic", "dev").n_images == 250
    assert all(c and c == " ".join(c.split()) for c in train.captions)
    # the 5 captions of an image are (mostly) different wordings
    assert all(len(set(train.captions[5 * i: 5 * i + 5])) >= 3 for i in range(N))


def test_labels_mark_scene_shapes(train):
    assert train.labels.shape == (N, len(SHAPES))
    assert train.label_names == [s[0] for s in SHAPES]
    assert set(np.unique(train.labels)) <= {0, 1}
    for i in range(N):
        objs = scene(0, "train", i)
        assert 1 <= len(objs) <= 3
        expected = np.zeros(len(SHAPES), dtype=int)
        expected[[o["shape"] for o in objs]] = 1
        np.testing.assert_array_equal(train.labels[i], expected)
    assert train.labels.sum(axis=1).min() >= 1


def test_captions_describe_the_scene(train):
    for i in range(N):
        objs = scene(0, "train", i)
        scene_colours = {w for o in objs for w in COLOURS[o["colour"]][2]}
        scene_shapes = [syn for o in objs for syn in SHAPES[o["shape"]][1]]
        for cap in train.captions[5 * i: 5 * i + 5]:
            words = set(tokenize(cap))
            mentioned = words & COLOUR_WORDS
            assert mentioned & scene_colours, (cap, objs)
            assert mentioned <= scene_colours, (cap, objs)  # never a colour that is not in the image
            assert any(f" {s} " in f" {cap} " for s in scene_shapes), (cap, objs)


def test_rendered_image_shows_the_object():
    """Single large filled object: the pixel at its nominal place has exactly its colour."""
    s = open_split("synthetic,seed=0,n_dev=300", "dev")
    filled = {"circle", "square", "diamond", "hexagon"}
    checked = 0
    for i in range(s.n_images):
        objs = scene(0, "dev", i)
        if len(objs) != 1 or objs[0]["size"] != "large" or SHAPES[objs[0]["shape"]][0] not in filled:
            continue
        x, y = PLACE_XY[objs[0]["place"]]
        im = s.load_image(i)
        assert im.getpixel((int(x * SIZE), int(y * SIZE))) == COLOURS[objs[0]["colour"]][1], i
        assert im.getpixel((0, 0)) != COLOURS[objs[0]["colour"]][1]  # the corner is background
        checked += 1
        if checked == 5:
            break
    assert checked == 5


def test_vocabulary_long_tail(default_train):
    assert default_train.n_images == 2000
    counts = Counter(t for c in default_train.captions for t in tokenize(c))
    rare = [w for w, n in counts.items() if n <= 5]
    assert rare, "no rare words"
    assert set(rare) & set(RARE_COLOURS)  # the long tail is made of the rare colours
    top = [n for _, n in counts.most_common(3)]
    assert min(top) >= 500
    assert counts["red"] >= 1000  # the commonest colour
    # object frequencies: the commonest colour is far more frequent than any rare one
    col = Counter(COLOURS[o["colour"]][0] for i in range(2000) for o in scene(0, "train", i))
    assert col["red"] > 20 * max(col[c] for c in RARE_COLOURS)


# =========================================================================== text / Vocab


def test_tokenize_lowercases():
    assert tokenize("A Red BALL, isn't it?  Two  DOGS.") == ["a", "red", "ball", "isn't", "it", "two", "dogs"]
    assert tokenize("") == [] and tokenize("...") == []


def test_vocab_build_uses_only_given_captions():
    v = Vocab.build(["A red ball", "a blue BALL", "a red cube"])
    assert v.words[: len(SPECIALS)] == list(SPECIALS) and v.index[PAD] == 0
    assert v.words[len(SPECIALS):] == ["a", "ball", "red", "blue", "cube"]  # by count, then alphabetical
    assert "green" not in v.index and "A" not in v.index
    assert len(v) == len(SPECIALS) + 5
    assert Vocab.build(["a red ball", "a blue ball"], min_count=2).words[len(SPECIALS):] == ["a", "ball"]


def test_vocab_from_train_excludes_other_splits(train):
    v = Vocab.build(train.captions)
    train_words = {t for c in train.captions for t in tokenize(c)}
    assert set(v.words) - set(SPECIALS) == train_words
    assert "zebra" not in v.index


def test_encode_unknown_and_batch_padding():
    v = Vocab.build(["a red ball", "a blue ball"])
    unk = v.index[UNK]
    assert unk == 1
    assert v.encode("A zebra BALL") == [v.index["a"], unk, v.index["ball"]]
    assert v.encode("a red ball", max_len=2) == [v.index["a"], v.index["red"]]
    ids, lengths = v.encode_batch(["a red ball", "blue", "", "a a a a a a a"], max_len=5)
    assert ids.dtype == np.int64 and lengths.dtype == np.int64
    np.testing.assert_array_equal(lengths, [3, 1, 1, 5])
    assert ids.shape == (4, 5)
    np.testing.assert_array_equal(ids[0], [v.index["a"], v.index["red"], v.index["ball"], 0, 0])
    np.testing.assert_array_equal(ids[1], [v.index["blue"], 0, 0, 0, 0])
    np.testing.assert_array_equal(ids[2], [unk, 0, 0, 0, 0])  # empty caption keeps one <unk>
    np.testing.assert_array_equal(ids[3], [v.index["a"]] * 5)
    for row, n in zip(ids, lengths):
        assert (row[n:] == 0).all() and (row[:n] != 0).all()
    ids, lengths = v.encode_batch(["red", "ball"])
    assert ids.shape == (2, 1)


def test_vocab_save_load(tmp_path):
    v = Vocab.build(["a red ball", "a blue cube"])
    v.save(tmp_path / "vocab.json")
    w = Vocab.load(tmp_path / "vocab.json")
    assert w.words == v.words and w.index == v.index
    assert w.encode("a blue zebra") == v.encode("a blue zebra")
