"""Initial word vectors: the Skip-Gram trained on the training captions (ACMM Sec. 3.1) and the
choice between it, GloVe and random through the recipe's ``word_vectors``."""
from __future__ import annotations

import numpy as np
import pytest

from xmr.data import open_split
from xmr.data.text import SPECIALS, Vocab, glove_vectors, skipgram_vectors
from xmr.features.store import pair_data
from xmr.models import get_entry
from xmr.train import TrainConfig, build

# "dog" and "puppy" share every context; "car" has contexts of its own.
CAPTIONS = (["a brown dog runs on the grass"] * 40 + ["a brown puppy runs on the grass"] * 40
            + ["a red car drives down the street"] * 40 + ["a small dog plays with a ball"] * 20
            + ["a small puppy plays with a ball"] * 20 + ["a fast car parks by the road"] * 20)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_skipgram_places_words_of_shared_contexts_together_and_is_reproducible():
    vocab = Vocab.build(CAPTIONS)
    emb, coverage = skipgram_vectors(vocab, CAPTIONS, dim=16, seed=3, epochs=100)  # a tiny corpus needs many
    assert emb.shape == (len(vocab), 16) and emb.dtype == np.float32
    assert coverage == 1.0  # every caption word is learned
    assert np.all(emb[0] == 0)  # <pad>
    v = {w: emb[vocab.words.index(w)] for w in ("dog", "puppy", "car")}
    assert cosine(v["dog"], v["puppy"]) > cosine(v["dog"], v["car"]) + 0.5
    again, _ = skipgram_vectors(vocab, CAPTIONS, dim=16, seed=3, epochs=100)
    np.testing.assert_array_equal(emb, again)
    other, _ = skipgram_vectors(vocab, CAPTIONS, dim=16, seed=4, epochs=100)
    assert not np.array_equal(emb, other)


def test_words_outside_the_captions_keep_random_vectors():
    vocab = Vocab.build(CAPTIONS + ["an unseen zebra"])
    emb, coverage = skipgram_vectors(vocab, CAPTIONS, dim=8, seed=0)
    assert coverage < 1.0
    assert np.abs(emb[vocab.words.index("zebra")]).max() <= 0.1
    assert len(SPECIALS) < len(vocab)


@pytest.mark.parametrize("choice", ["skipgram", "glove", "none"])
def test_recipe_word_vectors_selects_the_initialisation(choice):
    cfg = TrainConfig(model="acmm", preset="tiny", data="synthetic,seed=1,n_train=40,n_dev=10,n_test=10",
                      overrides={"word_vectors": choice}, progress=False)
    model_kw, recipe = cfg.resolved()
    inputs = get_entry("acmm").cls.inputs_for(**model_kw)
    captions = open_split(cfg.data, "train").captions
    vocab = Vocab.build(captions)
    data = pair_data(cfg.data, "train", inputs, vocab, recipe["max_len"], progress=False)
    model, _ = build(cfg, vocab, data, word_vectors=True)
    weight = model.text.embed.weight.detach().numpy()
    dim = model_kw["word_dim"]
    expected = {"skipgram": skipgram_vectors(vocab, captions, dim, cfg.seed)[0],
                "glove": glove_vectors(vocab, dim, cfg.seed)[0]}
    for name, vectors in expected.items():
        assert np.array_equal(weight, vectors) == (name == choice), name


def test_unknown_word_vectors_choice_is_refused():
    cfg = TrainConfig(model="acmm", preset="tiny", data="synthetic", overrides={"word_vectors": "word2vec"})
    with pytest.raises(ValueError, match="glove, skipgram or none"):
        build(cfg, Vocab.build(["a dog"]), None, word_vectors=True)
