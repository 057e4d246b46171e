"""Sentences drawn as images, so one CNN can read both modalities (Revisiting, Sec. 3.1 and 4.1).

The Revisiting paper feeds captions to its single InceptionResNet as *encoded images*, using the
semantic text encoding of Gallo, Nawaz & Calefati (ICDAR 2017): every word's embedding is cut
into triplets, each triplet is one RGB colour, the colours of a word form a small square
"visual word", and the visual words are written on a fixed black canvas in reading order.

``BlockEncoder`` implements that scheme; ``TextImageEncoder`` is the small interface any other
encoding would implement (``encode``, ``encode_batch``, ``size``).

The scheme, with the defaults (GloVe 6B 50-d stands in for the papers' word2vec, see
``docs/substitutes.md``):

- **Block.** The D components of a word vector are taken in order, ``channels`` at a time
  (triplets for ``channels=3``); tuple k becomes the colour of cell k of a ``block x block``
  square, cells filled row by row. ``block`` defaults to the smallest square that holds all
  tuples: 50-d -> 17 triplets -> a 5x5 block (the vector padded to 75 = 5x5x3; the 25 padded
  components are black). A 300-d word2vec vector gives Gallo's 10x10x3 block. Each cell is drawn
  as ``cell x cell`` pixels (Gallo's "superpixel"; default 4, so a 50-d word is 20x20 pixels).
  ``channels=2`` gives the exact 5x5x2 alternative (blue plane black); ``channels=1`` grey levels
  in the red plane.
- **Values.** One fixed affine map for all sentences, no per-sentence normalisation: a component
  v is clipped to [-clip, clip] and mapped to ``1 + round((v + clip) / (2 clip) * 254)``, i.e.
  -clip -> 1, 0 -> 128, +clip -> 255. Pixel value 0 is kept for "no word" (background, gaps,
  padded components). ``clip`` defaults to 3 x the mean absolute component of the word-vector
  table (a property of the table, fixed once the encoder is built); ``from_glove`` uses 0.3,
  because ``glove_vectors`` rescales GloVe to a mean absolute value of 0.1, which puts about 99%
  of the components inside +-0.3.
- **Layout.** Visual words are written left to right, top to bottom, on a black
  ``canvas x canvas`` image (default 256, the paper's input size), starting ``margin`` pixels
  from the top-left corner, ``gap`` black pixels between neighbours (Gallo's "separator",
  default 4). Default margin 29 = 256 - 227: any 227x227 crop of the canvas (config 2) keeps every
  word whole, it only shifts the text. With the defaults the grid is 8 x 8 words.
- **Capacity.** ``capacity = rows * cols`` words (64 by default; Flickr30k/COCO captions have
  about 12 words, well under). Longer sentences are truncated: the first ``capacity`` known
  words are drawn, the rest dropped.
- **Unknown words.** Tokens come from ``xmr.data.text.tokenize`` (lower-cased). A token with no
  vector is skipped (``unknown="skip"``, the default: the next known word takes its place, as
  in Gallo's encoder, which only draws words of the word2vec model) or drawn as a fixed mid-grey
  block, the encoding of the zero vector (``unknown="grey"``, which keeps word positions).
  With ``from_glove``, words of the given vocabulary that GloVe lacks get ``glove_vectors``'
  seeded random vector, i.e. a fixed pattern of their own, and count as known.

``config2_texts`` gives the paper's config-2 text inputs (Sec. 4.1: each image comes with its
five encoded captions plus 227x227 crops of them, "ten different encoded text descriptions");
the image side of config 2 (the image and its horizontal flip) belongs to the image pipeline.
``save_example`` writes an enlarged PNG of one encoded sentence for the docs.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from xmr.data.text import SPECIALS, Vocab, glove_vectors, tokenize

UNKNOWN_POLICIES = ("skip", "grey")
CONFIG2_CROP = 227  # Revisiting Sec. 4.1


class TextImageEncoder(ABC):
    """Turns a sentence into an RGB image (uint8, H x W x 3); swap implementations freely."""

    @property
    @abstractmethod
    def size(self) -> tuple[int, int]:
        """(H, W) of every encoded image."""

    @abstractmethod
    def encode(self, sentence: str) -> np.ndarray:
        """One sentence -> uint8 array (H, W, 3)."""

    def encode_batch(self, sentences: Sequence[str]) -> np.ndarray:
        """Sentences -> uint8 array (N, H, W, 3)."""
        out = np.zeros((len(sentences), *self.size, 3), dtype=np.uint8)
        for i, s in enumerate(sentences):
            out[i] = self.encode(s)
        return out


class BlockEncoder(TextImageEncoder):
    """Gallo et al.'s semantic text encoding: one square colour block per word, in reading order.

    ``word_vectors`` is a ``{word: vector}`` dict or a ``(words, matrix)`` pair, ``words`` a
    ``Vocab`` or a list with one entry per matrix row. See the module docstring for the scheme.
    """

    def __init__(self, word_vectors: Mapping[str, np.ndarray] | tuple[Vocab | Sequence[str], np.ndarray],
                 canvas: int = 256, block: int | None = None, channels: int = 3, cell: int = 4,
                 gap: int = 4, margin: int = 29, clip: float | None = None, unknown: str = "skip"):
        if isinstance(word_vectors, Mapping):
            words = list(word_vectors)
            table = np.asarray([np.asarray(word_vectors[w], dtype=np.float32).ravel() for w in words],
                               dtype=np.float32).reshape(len(words), -1)
        else:
            words, table = word_vectors
            words = list(words.words if isinstance(words, Vocab) else words)
            table = np.asarray(table, dtype=np.float32)
            if table.ndim != 2 or table.shape[0] != len(words):
                raise ValueError(f"matrix {table.shape} does not have one row per word ({len(words)})")
        if not words or table.shape[1] == 0:
            raise ValueError("no word vectors")
        if channels not in (1, 2, 3):
            raise ValueError("channels must be 1, 2 or 3")
        if unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown must be one of {UNKNOWN_POLICIES}")
        self.dim = table.shape[1]
        self.channels = channels
        cells = math.ceil(self.dim / channels)
        self.block = block or math.ceil(math.sqrt(cells))
        if self.block ** 2 < cells:
            raise ValueError(f"a {self.block}x{self.block} block holds {self.block ** 2 * channels} "
                             f"components, the vectors have {self.dim}")
        if clip is None:
            clip = 3.0 * float(np.abs(table).mean())
        if not clip > 0:
            raise ValueError("clip must be > 0")
        self.clip = float(clip)
        self.cell, self.gap, self.margin, self.canvas = cell, gap, margin, canvas
        self.block_px = self.block * cell
        self.stride = self.block_px + gap
        n = (canvas - 2 * margin + gap) // self.stride
        if cell < 1 or gap < 0 or margin < 0 or n < 1:
            raise ValueError("canvas too small for one word with these cell/gap/margin")
        self.rows = self.cols = n
        self.capacity = n * n
        self.unknown = unknown
        self.index = {w: i for i, w in enumerate(words)}  # later duplicates win, like a dict
        self._cells = self._to_cells(table)  # (V, block, block, 3) uint8, one cell per pixel
        self._grey = self._to_cells(np.zeros((1, self.dim), np.float32))[0]

    @classmethod
    def from_glove(cls, vocab: Vocab | Sequence[str], seed: int = 0, **kwargs) -> "BlockEncoder":
        """Encoder over GloVe 6B 50-d via ``xmr.data.text.glove_vectors`` (clip 0.3 unless given).

        Since nothing here is learned, ``vocab`` may hold the words of every split.
        """
        if not isinstance(vocab, Vocab):
            vocab = Vocab(list(dict.fromkeys([*SPECIALS, *vocab])))
        emb, _ = glove_vectors(vocab, 50, seed)
        kwargs.setdefault("clip", 0.3)
        return cls((vocab, emb), **kwargs)

    @property
    def size(self) -> tuple[int, int]:
        return self.canvas, self.canvas

    def quantize(self, values: np.ndarray) -> np.ndarray:
        """Fixed value map: clip to +-clip, then -clip -> 1, 0 -> 128, +clip -> 255 (uint8)."""
        v = np.clip(np.asarray(values, dtype=np.float64), -self.clip, self.clip)
        return (1 + np.rint((v + self.clip) / (2 * self.clip) * 254)).astype(np.uint8)

    def _to_cells(self, table: np.ndarray) -> np.ndarray:
        n, b, c = table.shape[0], self.block, self.channels
        flat = np.zeros((n, b * b * c), dtype=np.uint8)  # padded components stay 0 (black)
        flat[:, : self.dim] = self.quantize(table)
        cells = np.zeros((n, b, b, 3), dtype=np.uint8)
        cells[..., :c] = flat.reshape(n, b, b, c)
        return cells

    def word_block(self, vector: np.ndarray) -> np.ndarray:
        """The (block_px, block_px, 3) uint8 visual word of one vector."""
        cells = self._to_cells(np.asarray(vector, dtype=np.float32).reshape(1, self.dim))[0]
        return cells.repeat(self.cell, 0).repeat(self.cell, 1)

    def position(self, k: int) -> tuple[int, int]:
        """Top-left (y, x) pixel of the k-th visual word."""
        r, c = divmod(k, self.cols)
        return self.margin + r * self.stride, self.margin + c * self.stride

    def words(self, sentence: str) -> list[str | None]:
        """The tokens drawn, in order (``None`` for a grey unknown), after truncation."""
        toks = [t if t in self.index else None for t in tokenize(sentence)]
        if self.unknown == "skip":
            toks = [t for t in toks if t is not None]
        return toks[: self.capacity]

    def encode(self, sentence: str) -> np.ndarray:
        out = np.zeros((self.canvas, self.canvas, 3), dtype=np.uint8)
        for k, w in enumerate(self.words(sentence)):
            cells = self._grey if w is None else self._cells[self.index[w]]
            y, x = self.position(k)
            out[y: y + self.block_px, x: x + self.block_px] = cells.repeat(self.cell, 0).repeat(self.cell, 1)
        return out


def crop_offsets(seed: int, n: int, size: tuple[int, int], crop: int = CONFIG2_CROP) -> np.ndarray:
    """(n, 2) top-left (y, x) of n crops, uniform over the valid positions, fixed by ``seed``."""
    h, w = size
    if crop > min(h, w):
        raise ValueError(f"crop {crop} is larger than the encoded image {h}x{w}")
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, h - crop + 1, n), rng.integers(0, w - crop + 1, n)], axis=1)


def config2_texts(encoder: TextImageEncoder, captions: Sequence[str], seed: int,
                  crop: int = CONFIG2_CROP) -> list[np.ndarray]:
    """Config-2 text inputs of one image: its encoded captions, then one crop of each.

    For the usual five captions: ten uint8 arrays, the five full encodings (``encoder.size``, 256 x
    256 by default) followed by five ``crop x crop`` (227 x 227) crops, caption i's crop at a
    position drawn uniformly from ``seed`` (same seed -> same crops; vary it per epoch and image
    for augmentation). With the default ``BlockEncoder`` margin a crop never cuts a word. The
    sizes differ: the model's input transform resizes text images like photos.
    """
    full = [encoder.encode(c) for c in captions]
    offs = crop_offsets(seed, len(full), encoder.size, crop)
    crops = [img[y: y + crop, x: x + crop].copy() for img, (y, x) in zip(full, offs)]
    return full + crops


def save_example(sentence: str, path: str | Path, encoder: TextImageEncoder | None = None,
                 scale: int = 3) -> Path:
    """Write the encoded sentence as a PNG, enlarged ``scale`` times (nearest neighbour).

    Without ``encoder``, a GloVe ``BlockEncoder`` over the sentence's own words is built (its
    ``glove_vectors`` scaling then comes from those few words, so colours may differ slightly
    from an encoder built over a full vocabulary).
    """
    from PIL import Image

    if encoder is None:
        encoder = BlockEncoder.from_glove(tokenize(sentence))
    img = encoder.encode(sentence).repeat(scale, 0).repeat(scale, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img, "RGB").save(path)
    return path
