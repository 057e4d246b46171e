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
``score_block`` bounds how many (images, captions) one ``similarity`` call scores in evaluation
(the default's 8 MB block of a matmul model stays near the matmul's speed; see eval/evaluate.py).
``inputs`` says what a batch must carry: image ``pooled`` (N, D) or ``regions`` (N, R, D)
features, or ``pixels`` (uint8 (N, R, R, 3) images, ``xmr/features/pixels.py``), and text
``tokens`` (ids from the training-split vocabulary).
A model file registers itself with ``@register("name", presets={...})``.

What training needs to know is declared here too, so the one loop of ``xmr/train.py`` serves
every model without looking inside it:

- ``learns_from``: ``"pairs"`` (image-sentence pairs; dev metric rsum of R@K) or ``"labels"``
  (class-labelled modalities, ``xmr/data/labelled_sets.py``; dev metric mean mAP, CMMN);
- ``data_facts``: the constructor arguments that come from the data (``DATA_FACTS``), and
  ``word_vector_dim``: the width of the pretrained word vectors it takes as ``word_init``;
- ``stages``: the phases of training (one by default; CMMN's pre-networks, then its joint
  stage), each with its batches (``stage_batches``), loss (``stage_loss``), optimisers
  (``build_optimizers``) and the hooks around it (``start_stage``, ``end_stage``);
- capabilities: ``pairwise`` (two-step re-ranking), ``hash_codes``, ``has_attention_maps``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Protocol

import numpy as np
import torch
from torch import nn

from xmr.interface import Inputs, Reps
from xmr.optim import make_optimizer

__all__ = ["DATA_FACTS", "Batches", "Inputs", "ModelEntry", "Preset", "RetrievalModel", "Reps", "Stage",
           "create_model", "get_entry", "get_preset", "model_names", "register"]

# Constructor arguments that training reads off the data: vocabulary size, image feature width,
# image regions per item, caption length (the recipe's max_len), training images (Revisiting's
# classes), labelled modalities with their feature widths and the number of classes (CMMN),
# the CNN backbone whose cached trunk a fine-tuned image tail continues (VSE++ ``image_input="trunk"``).
DATA_FACTS = ("vocab_size", "image_dim", "n_regions", "max_len", "n_train_images", "modalities", "n_classes",
              "backbone")


@dataclass(frozen=True)
class Stage:
    """One phase of training: ``epochs`` (a recipe key) passes over the stage's batches.

    ``validate``: each epoch ends with a dev evaluation, best/last checkpoints and a
    ``metrics.jsonl`` row (a stage without it is checkpointed once, when it ends).
    ``seed_offset``: epoch e draws its batch order from ``default_rng([seed, seed_offset + e])``.
    """

    name: str
    epochs: str = "epochs"
    validate: bool = True
    seed_offset: int = 0


class Batches(Protocol):
    """What a stage trains on: a fixed number of batches per epoch, in an order drawn from ``rng``
    (``xmr.data.pairs.PairData`` is one)."""

    def n_train_batches(self, batch_size: int) -> int: ...

    def train_batches(self, batch_size: int, rng: np.random.Generator) -> Iterator[dict]: ...


class RetrievalModel(nn.Module):
    name: ClassVar[str] = ""
    inputs: ClassVar[Inputs] = Inputs()
    pairwise: ClassVar[bool] = False
    metric: ClassVar[str] = "ip"  # "ip" | "l2": how embed() vectors are compared
    # (images, captions) scored per similarity() call in evaluation; pairwise models use smaller blocks.
    score_block: ClassVar[tuple[int, int]] = (1024, 2048)
    learns_from: ClassVar[str] = "pairs"  # "pairs" | "labels" (module docstring)
    data_facts: ClassVar[tuple[str, ...]] = ("vocab_size", "image_dim")  # a subset of DATA_FACTS
    stages: ClassVar[tuple[Stage, ...]] = (Stage("train"),)
    has_attention_maps: ClassVar[bool] = False
    # Recipe defaults of this model's own (e.g. its stages' epoch keys), under the preset's.
    recipe_defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def word_vector_dim(cls, **model_kwargs: Any) -> int | None:
        """The width of the pretrained word vectors a model built with these arguments takes as
        ``word_init`` (GloVe or Skip-Gram rows aligned with the vocabulary); None: it takes none."""
        return None

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

    def attention_maps(self, img: Reps, txt: Reps) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention weights (P, regions) and (P, words) of aligned pairs, for pictures; only for a
        model with ``has_attention_maps`` (JGCAR)."""
        raise NotImplementedError(f"model {self.name!r} has no attention maps")

    def encode_modality(self, modality: str, x: torch.Tensor) -> Reps:
        """A label model's parts of items of one modality from their features (N, D): ``emb`` is
        what label retrieval compares (``xmr/eval/labelled.py``)."""
        raise NotImplementedError(f"model {self.name!r} does not encode labelled modalities")

    # ------------------------------------------------------------------ training
    def on_epoch_start(self, epoch: int) -> None:
        """Hook for schedules that live in the model (e.g. VSE++'s switch to hardest negatives)."""

    def param_groups(self) -> list[dict]:
        """The trainable parameters as optimiser groups; a group's ``lr_scale`` multiplies the
        recipe's learning rate (e.g. a fine-tuned CNN tail trained slower than the new layers)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def scaled_param_groups(self, *scaled: tuple[nn.Module | None, float]) -> list[dict]:
        """``param_groups`` for a model with fine-tuned pretrained parts: each ``(module, lr_scale)``
        (None: absent) its own group, the remaining trainable parameters one group at scale 1."""
        scaled = tuple((m, scale) for m, scale in scaled if m is not None)
        if not scaled:
            return RetrievalModel.param_groups(self)
        inside = {id(p) for m, _ in scaled for p in m.parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in inside]
        return [{"params": rest}] + [{"params": [p for p in m.parameters() if p.requires_grad], "lr_scale": scale}
                                     for m, scale in scaled]

    def start_stage(self, stage: Stage) -> None:
        """Called before a stage's optimisers are built, also when a run resumes inside it (e.g.
        CMMN freezes its pre-networks for the joint stage)."""

    def stage_batches(self, stage: Stage, data: Any) -> Batches:
        """What ``stage`` trains on, from the training data (``PairData`` for pair models, a
        ``LabelledSet`` for label models). Default: the pair data itself."""
        return data

    def stage_loss(self, stage: Stage, batch: dict, encode: Callable[[dict], tuple[Reps, Reps]]) -> dict:
        """The loss of one batch of ``stage``: ``"loss"`` plus terms worth logging. ``encode``
        gives both sides' parts of a pair batch (all-gathered under torchrun). Default:
        ``loss`` on the encoded pairs."""
        img, txt = encode(batch)
        return self.loss(img, txt, batch)

    def build_optimizers(self, stage: Stage, recipe: dict) -> list[torch.optim.Optimizer]:
        """The optimisers of ``stage``. Default: the recipe's ``optimizer`` over ``param_groups``,
        each group at the recipe's learning rate times its ``lr_scale``."""
        groups = [{**{k: v for k, v in g.items() if k != "lr_scale"}, "lr": recipe["lr"] * g.get("lr_scale", 1.0)}
                  for g in self.param_groups()]
        return [make_optimizer(recipe["optimizer"], groups, recipe)]

    def end_stage(self, stage: Stage, data: Any, seed: int) -> dict:
        """Called once when ``stage`` has run its epochs; returns facts to record in the run's
        last checkpoint (e.g. CMMN's pre-network accuracy, after selecting its memory)."""
        return {}

    def learned_kwargs(self) -> dict:
        """Constructor arguments that training settles (CMMN's memory sizes), saved with the
        checkpoint's ``model_kwargs`` so that a loaded model has the trained shapes."""
        return {}


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
    """Build a registered model; ``kwargs`` are its constructor arguments (preset plus data facts).
    Data facts the model does not declare are left out: checkpoints written before models
    declared them carry ``vocab_size`` and ``image_dim`` for every model."""
    cls = get_entry(name).cls
    return cls(**{k: v for k, v in kwargs.items() if k not in DATA_FACTS or k in cls.data_facts})
