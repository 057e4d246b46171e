"""The one interface every xmr model implements, and the model registry.

Training, evaluation, two-step re-ranking and search talk to models only through this class:

- ``encode_images(batch) -> Reps`` and ``encode_texts(batch) -> Reps``: per-item parts, computed
  once per item (a ``Reps`` is a dict of tensors batched on dim 0);
- ``similarity(img, txt) -> (Ni, Nt)``: the score of every image against every sentence. For an
  embedding model it is a matrix product; a pairwise model (ACMM, MMCA's cross branch, JGCAR's
  co-attention) computes the block from both sides' parts at once;
- ``embed(reps)``: a vector per item for a first-stage index (the embedding itself, or a pairwise
  model's cheap global part); None if the model has none;
- ``loss(img, txt, batch) -> dict``: the training objective on a batch of matching pairs
  (row k of ``img`` matches row k of ``txt``), ``"loss"`` plus anything worth logging.

``metric`` is how the first-stage vectors compare: ``"ip"`` (inner product, higher is closer) or
``"l2"`` (Euclidean distance, CMMN and Revisiting); the search index follows it.
``score_block`` bounds how many (images, captions) one ``similarity`` call scores in evaluation.
``inputs`` says what a batch must carry: image ``pooled`` (N, D) or ``regions`` (N, R, D)
features, or ``pixels`` (uint8 (N, R, R, 3) images, ``xmr/features/pixels.py``), and text
``tokens`` (ids from the training-split vocabulary).
A model file registers itself with ``@register("name", presets={...})``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from xmr.interface import Inputs, Reps

__all__ = ["Inputs", "ModelEntry", "Preset", "RetrievalModel", "Reps", "create_model", "get_entry",
           "get_preset", "model_names", "register"]


class RetrievalModel(nn.Module):
    name: ClassVar[str] = ""
    inputs: ClassVar[Inputs] = Inputs()
    pairwise: ClassVar[bool] = False
    metric: ClassVar[str] = "ip"  # "ip" | "l2": how embed() vectors are compared
    # (images, captions) scored per similarity() call in evaluation; pairwise models use smaller blocks.
    score_block: ClassVar[tuple[int, int]] = (256, 8192)

    @classmethod
    def inputs_for(cls, **model_kwargs: Any) -> Inputs:
        """The inputs a model built with these arguments reads (known before data is loaded).

        A model whose inputs depend on an argument overrides this and sets ``self.inputs``.
        """
        return cls.inputs

    def forward(self, batch: dict) -> tuple[Reps, Reps]:
        """Both sides' parts of a batch of pairs: the call that DDP wraps in distributed training."""
        return self.encode_images(batch), self.encode_texts(batch)

    def encode_images(self, batch: dict) -> Reps:
        raise NotImplementedError

    def encode_texts(self, batch: dict) -> Reps:
        raise NotImplementedError

    def similarity(self, img: Reps, txt: Reps) -> torch.Tensor:
        """Scores (Ni, Nt). Default: embedding model, dot product of ``embed`` vectors."""
        return self.embed(img) @ self.embed(txt).T

    def pair_similarity(self, img: Reps, txt: Reps) -> torch.Tensor:
        """Scores (P,) of aligned rows, image p with sentence p: what two-step re-ranking asks of a
        pairwise model for its shortlist. Default: embedding model, the row-wise dot product of
        ``embed`` vectors, or under ``metric = "l2"`` their negative squared Euclidean distance."""
        if self.pairwise:
            raise NotImplementedError(f"pairwise model {self.name!r} must implement pair_similarity")
        a, b = self.embed(img), self.embed(txt)
        if self.metric == "l2":
            return -(a - b).pow(2).sum(-1)
        return (a * b).sum(-1)

    def indexed_pair_similarity(self, img: Reps, txt: Reps, img_index: torch.Tensor,
                                txt_index: torch.Tensor) -> torch.Tensor:
        """Scores (P,) of the pairs (image img_index[p], sentence txt_index[p]) of two encoded sets:
        a re-ranking shortlist, where each query recurs K times. Default: ``pair_similarity`` on the
        gathered rows; a model whose pair score has costly per-item parts overrides it to compute
        them once per distinct item (MMCA)."""
        return self.pair_similarity({k: v[img_index] for k, v in img.items()},
                                    {k: v[txt_index] for k, v in txt.items()})

    def embed(self, reps: Reps) -> torch.Tensor | None:
        return reps.get("emb")

    def hash_codes(self, emb: torch.Tensor) -> torch.Tensor | None:
        """0/1 codes (N, bits) of ``embed`` vectors for Hamming search (CMMN); None if the model has none."""
        return None

    def loss(self, img: Reps, txt: Reps, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for schedules that live in the model (e.g. VSE++'s switch to hardest negatives)."""


@dataclass
class Preset:
    """A named setting of a model: its constructor arguments and its training recipe."""

    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass
class ModelEntry:
    cls: type[RetrievalModel]
    presets: dict[str, Preset]


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, presets: dict[str, Preset]) -> Callable[[type], type]:
    def wrap(cls: type[RetrievalModel]) -> type[RetrievalModel]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = ModelEntry(cls, presets)
        return cls

    return wrap


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(model_names())}")
    return _REGISTRY[name]


def get_preset(name: str, preset: str) -> Preset:
    entry = get_entry(name)
    if preset not in entry.presets:
        raise KeyError(f"model {name!r} has no preset {preset!r}; presets: {', '.join(entry.presets)}")
    return entry.presets[preset]


def create_model(name: str, **kwargs: Any) -> RetrievalModel:
    """Build a registered model; ``kwargs`` are its constructor arguments (preset plus data facts)."""
    return get_entry(name).cls(**kwargs)
