"""What passes between data, features and models: the types and constants both sides agree on.

Kept apart from ``xmr.models`` (whose package imports every model) so that data, features,
distributed training and evaluation can name these without loading a model:

- ``Inputs``: what a model's batches carry, declared by the model, served by ``xmr.features.store``;
- ``Reps``: a model's per-item parts, a dict of tensors batched on dim 0, and ``gather_rows``;
- the token ids' special words, the width and depth of BERT token states and the ImageNet normalisation
  of pixel input;
- ``sentence_vectors``: a caption's vector from its BERT token states, the text modality of a
  labelled set (``xmr.features.labelled`` builds Flickr8k's with it) and what CMMN reads from a
  pair batch's ``bert`` states, so that both compute it alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

Reps = dict[str, torch.Tensor]


def gather_rows(reps: Reps, index: torch.Tensor) -> Reps:
    """Rows ``index`` of every part, e.g. a pairwise model's parts for each scored pair. By
    ``index_select``, whose backward adds into the rows (index_add_): on CPU much faster than the
    accumulating index_put_ behind ``reps[k][index]``, with the same result."""
    return {k: v.index_select(0, index) for k, v in reps.items()}


# Vocabulary ids 0..3 are these, in this order; real words start at len(SPECIALS).
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<start>", "<end>"
SPECIALS = (PAD, UNK, BOS, EOS)

BERT_DIM = 384  # all-MiniLM-L6-v2 token states (xmr.features.text), standing in for BERT-base
BERT_LAYERS = 6  # its transformer layers
BERT_MAX_LEN = 32  # token positions per caption in the cached states (xmr.features.text)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class Inputs:
    image: str = "pooled"  # "pooled" | "regions" | "pixels" (raw uint8 images, Revisiting)
    text: tuple[str, ...] = ("tokens",)
    labels: bool = False  # training batches carry class labels (the dataset's, else keyword labels)
    pixels: int = 0  # with image="pixels": the square resolution R of the (N, R, R, 3) uint8 images
    # with "bert" in text: how many of MiniLM's top layers the model runs itself (xmr/models/text_tail.py);
    # ``bert`` then holds the states entering them, the output of layer BERT_LAYERS - bert_tail
    bert_tail: int = 0


def sentence_vectors(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A caption's sentence vector: the mean of its frozen MiniLM token states (N, T, BERT_DIM) over
    its words (CMMN's text modality)."""
    mask = mask.to(states.dtype).unsqueeze(-1)
    return (states * mask).sum(1) / mask.sum(1).clamp(min=1)
