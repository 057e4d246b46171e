"""Training batches of the pair data: per caption (VSE++) and per whole image (Revisiting)."""
from __future__ import annotations

import numpy as np

from xmr.data.base import Split
from xmr.data.pairs import PairData
from xmr.data.text import Vocab


def pair_data(n_images: int = 10, per_image: int = 5) -> PairData:
    captions = [f"image {i} caption {j}" for i in range(n_images) for j in range(per_image)]
    features = np.arange(n_images, dtype=np.float32)[:, None].repeat(3, 1)
    split = Split("x", [str(i) for i in range(n_images)], captions, per_image, features=features)
    return PairData(split, Vocab.build(captions))


def test_whole_image_batches_hold_every_caption_of_their_images_once_per_epoch():
    data = pair_data()
    batches = data.by_image()
    assert batches.n_train_batches(10) == 5 and batches.n_train_batches(16) == 3  # 3 images of 5
    seen = []
    for batch in batches.train_batches(10, np.random.default_rng(0)):
        images = batch["image_index"].numpy()
        assert len(images) == 10 and len(set(images)) == 2
        assert (np.bincount(images)[images] == 5).all()  # all five captions of each image
        assert (batch["image"][:, 0].numpy() == images).all()  # each row's features are its image's
        same = batch["same_image"].numpy()
        assert (same == ((images[:, None] == images[None]) & ~np.eye(10, dtype=bool))).all()
        seen.extend(images)
    assert sorted(set(seen)) == list(range(10)) and len(seen) == 50  # each image (and caption) once
    a = [b["image_index"].tolist() for b in batches.train_batches(10, np.random.default_rng(1))]
    b = [b["image_index"].tolist() for b in batches.train_batches(10, np.random.default_rng(1))]
    c = [b["image_index"].tolist() for b in batches.train_batches(10, np.random.default_rng(2))]
    assert a == b and a != c  # the epoch's rng sets the order


def test_whole_image_batches_of_a_head_and_ragged_end():
    data = pair_data(7).head(5)
    batches = data.by_image()
    out = list(batches.train_batches(10, np.random.default_rng(0)))
    assert len(out) == batches.n_train_batches(10) == 2  # the fifth image is the ragged end
    assert all(int(b["image_index"].max()) < 5 for b in out)


def test_caption_ids_of_both_batchings_are_what_their_batches_hold():
    data = pair_data()
    for batches in (data, data.by_image()):
        ids = list(batches.caption_batches(10, np.random.default_rng(4)))
        rows = list(batches.train_batches(10, np.random.default_rng(4)))
        assert len(ids) == len(rows) == batches.n_train_batches(10)
        for caps, batch in zip(ids, rows):
            assert (batch["image_index"].numpy() == data.caption_image[caps]).all()
    text_only = PairData(Split("t", ["a", "b"], [f"c{i}" for i in range(10)], 5), Vocab.build(["c"]))
    assert text_only.head(1).n_captions == 5  # a head without image features (captions only)
