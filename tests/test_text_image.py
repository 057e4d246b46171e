"""Text as an image (Revisiting Sec. 3.1 / Gallo et al. 2017) and the config-2 text crops (Sec. 4.1)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from xmr.data.text import SPECIALS, Vocab, glove_vectors
from xmr.data.text_image import BlockEncoder, TextImageEncoder, config2_texts, save_example

# Six-dimensional vectors: two RGB triplets per word -> a 2x2 block of cells (two of them black).
VECS = {
    "a": [-1.0, 0.0, 1.0, 0.6, -0.6, 0.0],
    "dog": [0.2, 0.4, -0.2, -0.4, 0.9, -0.9],
    "runs": [0.5, -0.1, 0.3, 0.0, 0.7, -0.3],
    "on": [-0.8, 0.8, 0.1, -0.1, 0.25, 2.0],  # 2.0 saturates at clip 1
    "grass": [0.05, 0.15, -0.55, 0.65, -0.75, 0.85],
}


def enc(**kw) -> BlockEncoder:
    kw = {"canvas": 32, "cell": 2, "gap": 1, "margin": 2, "clip": 1.0, **kw}
    return BlockEncoder(VECS, **kw)


def block_at(img: np.ndarray, e: BlockEncoder, k: int) -> np.ndarray:
    y, x = e.position(k)
    return img[y: y + e.block_px, x: x + e.block_px]


def test_geometry():
    e = enc()
    assert isinstance(e, TextImageEncoder)
    assert (e.block, e.block_px, e.stride) == (2, 4, 5)
    assert e.capacity == 25 and e.size == (32, 32)  # (32 - 2*2 + 1) // 5 = 5 words a row, 5 rows
    assert e.position(0) == (2, 2) and e.position(1) == (2, 7) and e.position(5) == (7, 2)


def test_value_map_and_block_by_hand():
    e = enc()
    blk = e.word_block(np.array(VECS["a"]))
    assert blk.shape == (4, 4, 3) and blk.dtype == np.uint8
    # -clip -> 1, 0 -> 128, +clip -> 255; 0.6 -> 1 + rint(0.8 * 254) = 204; -0.6 -> 1 + rint(0.2 * 254) = 52
    cell00, cell01 = [1, 128, 255], [204, 52, 128]
    assert (blk[:2, :2] == cell00).all() and (blk[:2, 2:] == cell01).all()  # each cell is 2x2 pixels
    assert (blk[2:] == 0).all()  # cells 2 and 3 hold no components: black
    assert e.quantize(np.array([-5.0, 2.0])).tolist() == [1, 255]  # clipped


def test_deterministic_and_batch():
    e = enc()
    s = "A dog runs on the grass."
    a, b = e.encode(s), e.encode(s)
    assert a.dtype == np.uint8 and a.shape == (32, 32, 3)
    assert np.array_equal(a, b)
    assert np.array_equal(enc().encode(s), a)  # a fresh encoder too
    batch = e.encode_batch([s, "grass on a dog"])
    assert batch.shape == (2, 32, 32, 3)
    assert np.array_equal(batch[0], a) and np.array_equal(batch[1], e.encode("grass on a dog"))


def test_word_order_and_layout():
    e = enc()
    words = ["a", "dog", "runs", "on", "grass"]
    img = e.encode(" ".join(words))
    for k, w in enumerate(words):  # reading order, first word top-left
        assert np.array_equal(block_at(img, e, k), e.word_block(np.array(VECS[w]))), w
    mask = np.zeros(img.shape[:2], bool)
    for k in range(len(words)):
        y, x = e.position(k)
        mask[y: y + e.block_px, x: x + e.block_px] = True
    assert (img[~mask] == 0).all()  # margin, gaps and unused area are black


def test_swapping_two_words_swaps_their_blocks():
    e = enc()
    a = e.encode("a dog runs on grass")
    b = e.encode("a on runs dog grass")
    assert np.array_equal(block_at(a, e, 1), block_at(b, e, 3))
    assert np.array_equal(block_at(a, e, 3), block_at(b, e, 1))
    for k in (0, 2, 4):
        assert np.array_equal(block_at(a, e, k), block_at(b, e, k))
    assert not np.array_equal(a, b)  # same words, other order: another image
    assert not np.array_equal(e.encode("dog runs"), e.encode("runs dog"))


def test_rows_wrap_left_to_right_top_to_bottom():
    e = enc(canvas=17)  # (17 - 4 + 1) // 5 = 2 words a row, capacity 4
    assert (e.rows, e.cols, e.capacity) == (2, 2, 4)
    img = e.encode("a dog runs on")
    assert np.array_equal(img[7:11, 2:6], e.word_block(np.array(VECS["runs"])))  # 3rd word: row 2, col 1


def test_capacity_truncation():
    e = enc(canvas=17)
    long = "a dog runs on grass a dog"
    assert e.words(long) == ["a", "dog", "runs", "on"]
    assert np.array_equal(e.encode(long), e.encode("a dog runs on"))
    assert np.array_equal(enc().encode(long), enc().encode(long))  # room for all 7 on the big canvas
    assert len(enc().words(long)) == 7


def test_unknown_words():
    skip = enc()
    assert skip.words("a zebra dog") == ["a", "dog"]
    assert np.array_equal(skip.encode("a zebra dog"), skip.encode("a dog"))
    assert not skip.encode("zebra unicorn").any()  # nothing known: an all-black image
    grey = enc(unknown="grey")
    img = grey.encode("a zebra dog")
    assert grey.words("a zebra dog") == ["a", None, "dog"]
    assert np.array_equal(block_at(img, grey, 1), grey.word_block(np.zeros(6)))  # fixed grey pattern
    assert (block_at(img, grey, 1)[:2] == 128).all()
    assert np.array_equal(block_at(img, grey, 2), grey.word_block(np.array(VECS["dog"])))
    with pytest.raises(ValueError):
        enc(unknown="ignore")


def test_fifty_dimensional_defaults():
    rng = np.random.default_rng(0)
    words = ["w%d" % i for i in range(70)]
    table = rng.normal(0, 0.1, (70, 50)).astype(np.float32)
    e = BlockEncoder((words, table))
    assert (e.canvas, e.block, e.cell, e.block_px, e.capacity) == (256, 5, 4, 20, 64)
    assert e.clip == pytest.approx(3 * np.abs(table).mean(), rel=1e-6)
    blk = e.word_block(table[0])[:: e.cell, :: e.cell]  # one pixel per cell
    flat = blk.reshape(-1, 3).reshape(-1)
    assert np.array_equal(flat[:50], e.quantize(table[0]))  # components in triplet order
    assert (flat[50:] == 0).all()  # padded to 75 = 5x5x3 with black
    assert e.words(" ".join(words)) == words[:64]
    two = BlockEncoder((words, table), channels=2)  # the exact 5x5x2 layout, blue plane black
    blk2 = two.word_block(table[0])[:: two.cell, :: two.cell]
    assert two.block == 5 and (blk2[..., 2] == 0).all()
    assert np.array_equal(blk2[..., :2].reshape(-1), two.quantize(table[0]))
    with pytest.raises(ValueError):
        BlockEncoder((words, table), block=4)  # 4x4x3 = 48 < 50


def test_config2_deterministic_sizes_and_crops():
    rng = np.random.default_rng(0)
    words = ["w%d" % i for i in range(40)]
    e = BlockEncoder((words, rng.normal(0, 0.1, (40, 50))))
    caps = [" ".join(rng.choice(words, 12)) for _ in range(5)]
    a = config2_texts(e, caps, seed=7)
    b = config2_texts(e, caps, seed=7)
    assert len(a) == 10
    assert [x.shape for x in a] == [(256, 256, 3)] * 5 + [(227, 227, 3)] * 5
    assert all(x.dtype == np.uint8 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    for i in range(5):
        assert np.array_equal(a[i], e.encode(caps[i]))
        # each crop is a window of its caption's encoding, and (margin 29 = 256 - 227) keeps every word
        full = a[i]
        hits = [(y, x) for y in range(30) for x in range(30) if np.array_equal(full[y: y + 227, x: x + 227], a[5 + i])]
        assert hits
        assert np.count_nonzero(a[5 + i]) == np.count_nonzero(full)
    offsets = {tuple(np.argwhere(config2_texts(e, caps[:1], seed=s)[1].any(2))[0]) for s in range(8)}
    assert len(offsets) > 1  # other seeds, other crops
    with pytest.raises(ValueError):
        config2_texts(enc(), caps, seed=0)  # a 32x32 canvas cannot give 227x227 crops


def test_save_example(tmp_path):
    e = enc()
    path = save_example("a dog runs on grass", tmp_path / "docs" / "ex.png", encoder=e, scale=3)
    img = np.asarray(Image.open(path))
    assert img.shape == (96, 96, 3)
    assert np.array_equal(img, e.encode("a dog runs on grass").repeat(3, 0).repeat(3, 1))


@pytest.mark.slow  # loads GloVe 6B (400k words)
def test_glove_encoder(tmp_path):
    words = ["a", "dog", "puppy", "runs", "on", "the", "grass", "economy"]
    vocab = Vocab(list(SPECIALS) + words)
    e = BlockEncoder.from_glove(vocab)
    assert (e.dim, e.block, e.clip) == (50, 5, 0.3)
    sentence = "A dog runs on the grass, qwzx!"
    assert e.words(sentence) == ["a", "dog", "runs", "on", "the", "grass"]  # qwzx: unknown, skipped
    emb, _ = glove_vectors(vocab, 50, 0)  # the rows the encoder was built from
    img = e.encode(sentence)
    for k, w in enumerate(e.words(sentence)):
        assert np.array_equal(block_at(img, e, k), e.word_block(emb[vocab.index[w]])), w
    # related words get related colours: dog is nearer puppy than economy, in pixels
    px = {w: e.word_block(emb[vocab.index[w]]).astype(float) for w in ("dog", "puppy", "economy")}
    assert np.abs(px["dog"] - px["puppy"]).mean() < np.abs(px["dog"] - px["economy"]).mean()
    out = save_example("a dog on the grass", tmp_path / "g.png")  # default: GloVe encoder, x3
    assert Image.open(out).size == (768, 768)
