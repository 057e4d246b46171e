"""CMMN (Song & Tan, "Cross-modal Retrieval via Memory Network", BMVC 2017).

CMMN learns from class labels of any number of modalities (no image-sentence pairs needed):

- **Pre-networks** (Sec. 4.1): per modality an MLP from its raw features to the common width D
  ("fc7") plus a classifier ("fc8") whose softmax is the discriminator ``p(y = l | x)``. They are
  trained first, then frozen: their D-d outputs are the "raw features" q of Eq. 1 (an xmr
  decision; the paper does not say whether fc7 keeps training, and frozen features make the joint
  stage a cheap pass over vectors).
- **Memory generation** (Eq. 6, ``select_memory``): per class and modality the top-k training
  items by ``p(y = class | x)``; also ``random`` and ``kmeans`` (centroids of the class members).
  The memories are parameters and train jointly with the rest (Sec. 3.2, "Optimization").
- **Memory read** (Eq. 1-2, ``read``): ``p = softmax((m B_m)ᵀ (q A))`` over modality m's memory,
  ``c_m = Σ p (m C_m)``; each ``c_m`` has its own classification loss (Eq. 3).
- **Fusion and hash layer** (Eq. 4): ``r = relu((α qA + Σ_m β_m c_m) W1 + b)``, ``h = σ(r W2)``,
  α and β_m learned, initialised to 1; binary codes ``b = (h > 0.5)``.
- **Objective** (Eq. 5): classification of ``h`` plus ``λ ||∂h/∂r||_F²`` (``jacobian_penalty``,
  closed form ``Σ_p (h_p (1 - h_p))² Σ_q W2_pq²``), plus the context classifiers of Eq. 3.
  Multi-label targets are the label set normalised to sum 1 (the softmax cross-entropy of Eq. 3).

Retrieval is Euclidean on ``h`` (CMMN_real-value) or Hamming on ``b`` (CMMN_bin); for aligned
pairs ``xmr.eval.labelled.fused_codes`` gives the COCO experiment's ``b = (h_img + h_txt > 1)``.

The model also implements xmr's pair interface for Flickr8k-style data (modalities ``image`` =
pooled CNN features, ``text`` = the mean of frozen MiniLM token states,
``xmr.interface.sentence_vectors``), so ``xmr index`` and ``xmr serve`` work on a CMMN run
(and ``xmr eval --protocol pairs`` gives R@K).

Training (``xmr train --model cmmn``) runs two stages (``CMMN.stages``): the pre-networks on each
modality's training split, then, once memory generation has filled the memories from the frozen
pre-networks, the memory network on queries drawn from every modality (``_Queries``), validated
by dev mean mAP each epoch.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xmr.interface import sentence_vectors
from xmr.models.base import Inputs, Preset, RetrievalModel, Reps, Stage, register
from xmr.optim import make_optimizer

# Model keys and the training recipe (``train``; its pre_epochs and pre_lr are the pre-network stage's).
PRESETS = {
    # Sec. 4.1: fc7 4096, lambda 0.001, k = 10, std-0.1 Gaussian init, SGD lr 0.01, batch 32,
    # 200 epochs. The paper does not give V or the Fc1 width; 1024 here.
    "paper": Preset(
        model=dict(hidden=4096, embed_dim=1024, fusion_dim=1024, bits=64, memory_per_class=10,
                   memory_init="topk", jacobian=1e-3, init_std=0.1, dropout=0.5),
        train=dict(pre_epochs=50, epochs=200, batch_size=32, lr=0.01, optimizer="sgd", momentum=0.9,
                   pre_lr=0.01),
        note="Song & Tan 2017, Sec. 4.1",
    ),
    # Trains on 2 CPU cores in minutes: narrower layers, Adam, fewer epochs.
    "cpu": Preset(
        model=dict(hidden=512, embed_dim=256, fusion_dim=256, bits=64, memory_per_class=10,
                   memory_init="topk", jacobian=1e-3, init_std=0.0, dropout=0.5),
        train=dict(pre_epochs=15, epochs=10, batch_size=128, lr=1e-3, optimizer="adam", pre_lr=1e-3),
        note="small enough for 2 CPU cores",
    ),
    "tiny": Preset(
        model=dict(hidden=64, embed_dim=32, fusion_dim=32, bits=16, memory_per_class=3,
                   memory_init="topk", jacobian=1e-3, init_std=0.0, dropout=0.0),
        train=dict(pre_epochs=8, epochs=8, batch_size=32, lr=3e-3, optimizer="adam", pre_lr=3e-3),
        note="tests and the synthetic demo",
    ),
}

MEMORY_INIT = ("topk", "random", "kmeans")


def jacobian_penalty(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Eq. 5's ``||J_f(r)||_F²`` per row of ``h = σ(r Wᵀ)`` for a Linear weight (d_h, d_r):
    ``Σ_p (h_p (1 - h_p))² Σ_q W_pq²``; returns (N,)."""
    return ((h * (1 - h)) ** 2) @ (weight ** 2).sum(1)


def soft_targets(labels: torch.Tensor) -> torch.Tensor:
    """Multi-hot labels as a distribution (one-hot rows stay one-hot); unlabelled rows stay zero."""
    labels = labels.float()
    return labels / labels.sum(1, keepdim=True).clamp(min=1)


def select_memory(features: np.ndarray, labels: np.ndarray, probs: np.ndarray | None, k: int,
                  method: str = "topk", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 6: per class, ``k`` memory vectors from that class's members; returns (vectors, class).

    ``topk``: the members with the highest discriminator probability of the class (``probs``
    (N, C)); ``random``: k members drawn with a fixed seed; ``kmeans``: the k centroids of the
    members. A class with fewer than k members contributes all of them.
    """
    if method not in MEMORY_INIT:
        raise ValueError(f"memory_init must be one of {MEMORY_INIT}, not {method!r}")
    if method == "topk" and probs is None:
        raise ValueError("topk memory selection needs the discriminator's probabilities")
    rng = np.random.default_rng(seed)
    vectors, classes = [], []
    for c in range(labels.shape[1]):  # a loop over classes (tens), not items
        members = np.flatnonzero(labels[:, c])
        if k == 0 or len(members) == 0:
            continue
        if len(members) <= k:
            chosen = features[members]
        elif method == "topk":
            order = np.argsort(-probs[members, c], kind="stable")[:k]
            chosen = features[members[order]]
        elif method == "random":
            chosen = features[rng.choice(members, k, replace=False)]
        else:
            import faiss

            km = faiss.Kmeans(features.shape[1], k, niter=20, seed=seed, verbose=False)
            km.train(np.ascontiguousarray(features[members], dtype=np.float32))
            chosen = km.centroids
        vectors.append(np.asarray(chosen, dtype=np.float32))
        classes.append(np.full(len(chosen), c))
    if not vectors:
        return np.zeros((0, features.shape[1]), np.float32), np.zeros(0, np.int64)
    return np.concatenate(vectors), np.concatenate(classes).astype(np.int64)


def soft_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 3's softmax cross-entropy against ``soft_targets(labels)``, batch mean."""
    return -(soft_targets(labels) * F.log_softmax(logits, -1)).sum(1).mean()


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[s:s + batch_size] for s in range(0, n, batch_size)]


class _PerModality:
    """The pre-network stage's batches: each modality's training split in turn, shuffled."""

    def __init__(self, data):
        self.splits = {m: data.split(m, "train") for m in data.modalities}

    def n_train_batches(self, batch_size: int) -> int:
        return sum(-(-len(x) // batch_size) for x, _ in self.splits.values())

    def train_batches(self, batch_size: int, rng: np.random.Generator):
        for m, (x, y) in self.splits.items():
            for idx in _batches(len(x), batch_size, rng):
                yield {"modality": m, "x": torch.from_numpy(x[idx]), "labels": torch.from_numpy(y[idx])}


class _Queries:
    """The joint stage's batches: the frozen pre-networks' features q of every modality's training
    items, computed once; a batch mixes queries of every modality."""

    def __init__(self, q: dict[str, np.ndarray], y: dict[str, np.ndarray]):
        self.q, self.y, self.modalities = q, y, list(q)
        self.mods = np.concatenate([np.full(len(q[m]), j) for j, m in enumerate(self.modalities)])
        self.rows = np.concatenate([np.arange(len(q[m])) for m in self.modalities])

    def n_train_batches(self, batch_size: int) -> int:
        return -(-len(self.rows) // batch_size)

    def train_batches(self, batch_size: int, rng: np.random.Generator):
        for idx in _batches(len(self.rows), batch_size, rng):
            # Each modality's rows of the batch are gathered together.
            parts = [(m, self.rows[idx][self.mods[idx] == j]) for j, m in enumerate(self.modalities)]
            yield {"q": torch.cat([torch.from_numpy(self.q[m][r]) for m, r in parts]),
                   "labels": torch.cat([torch.from_numpy(self.y[m][r]) for m, r in parts])}


@register("cmmn", presets=PRESETS)
class CMMN(RetrievalModel):
    inputs = Inputs(image="pooled", text=("tokens", "bert"))
    metric = "l2"
    learns_from = "labels"
    data_facts = ("modalities", "n_classes")
    stages = (Stage("pre-networks", epochs="pre_epochs", validate=False, seed_offset=1000), Stage("joint"))
    # No gradient clipping unless a preset asks for it.
    recipe_defaults = dict(pre_epochs=15, pre_lr=1e-3, grad_clip=0.0)

    def __init__(self, modalities: dict[str, int], n_classes: int, memory_sizes: dict[str, int] | None = None,
                 hidden: int = 512, embed_dim: int = 256, fusion_dim: int = 256, bits: int = 64,
                 memory_per_class: int = 10, memory_init: str = "topk", jacobian: float = 1e-3,
                 init_std: float = 0.0, dropout: float = 0.5):
        super().__init__()
        if len(modalities) < 2:
            raise ValueError(f"CMMN needs at least two modalities, got {list(modalities)}")
        if memory_init not in MEMORY_INIT:
            raise ValueError(f"memory_init must be one of {MEMORY_INIT}, not {memory_init!r}")
        self.modalities = list(modalities)
        self.n_classes, self.bits, self.jacobian = n_classes, bits, jacobian
        self.memory_per_class, self.memory_init = memory_per_class, memory_init
        # Pre-networks: raw features -> fc(D) -> fc(D) ("fc7") -> classifier ("fc8").
        self.prenet = nn.ModuleDict({m: nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU())
            for m, dim in modalities.items()})
        self.pre_head = nn.ModuleDict({m: nn.Linear(hidden, n_classes) for m in modalities})
        # Memories in the pre-network space, filled by set_memory (Eq. 6), then trained.
        sizes = memory_sizes or {m: 0 for m in modalities}
        self.memory = nn.ParameterDict({m: nn.Parameter(torch.zeros(sizes.get(m, 0), hidden)) for m in modalities})
        self.embed_query = nn.Linear(hidden, embed_dim, bias=False)  # A
        self.embed_key = nn.ModuleDict({m: nn.Linear(hidden, embed_dim, bias=False) for m in modalities})  # B_m
        self.embed_value = nn.ModuleDict({m: nn.Linear(hidden, embed_dim, bias=False) for m in modalities})  # C_m
        self.context_head = nn.ModuleDict({m: nn.Linear(embed_dim, n_classes) for m in modalities})  # Eq. 3
        self.alpha = nn.Parameter(torch.ones(()))
        self.beta = nn.ParameterDict({m: nn.Parameter(torch.ones(())) for m in modalities})
        self.fc1 = nn.Linear(embed_dim, fusion_dim)  # W1, b
        self.hash = nn.Linear(fusion_dim, bits, bias=False)  # W2
        self.head = nn.Linear(bits, n_classes)  # f(h), Eq. 5
        if init_std:  # Sec. 4.1: Gaussian init, std 0.1, for the memory network's layers
            for module in [self.embed_query, *self.embed_key.values(), *self.embed_value.values(),
                           self.fc1, self.hash]:
                nn.init.normal_(module.weight, std=init_std)

    @property
    def memory_sizes(self) -> dict[str, int]:
        return {m: int(p.shape[0]) for m, p in self.memory.items()}

    # Stage 1: pre-networks and the discriminator.
    def pre_features(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        self._check_modality(modality)
        return self.prenet[modality](x)

    def pre_logits(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        return self.pre_head[modality](self.pre_features(modality, x))

    def set_memory(self, modality: str, vectors: np.ndarray | torch.Tensor) -> None:
        self.memory[modality] = nn.Parameter(torch.as_tensor(vectors, dtype=torch.float32).clone())

    def freeze_prenets(self) -> None:
        for p in [*self.prenet.parameters(), *self.pre_head.parameters()]:
            p.requires_grad_(False)

    # Stage 2: the memory network on pre-network features q.
    def read(self, qa: torch.Tensor, modality: str) -> torch.Tensor:
        """Eq. 1-2: the context vector c_m of queries ``qa = qA`` (N, V) over modality m's memory."""
        memory = self.memory[modality]
        weights = torch.softmax(qa @ self.embed_key[modality](memory).T, dim=-1)
        return weights @ self.embed_value[modality](memory)

    def code(self, q: torch.Tensor) -> Reps:
        """Eq. 4 from pre-network features q (N, D): ``emb`` = h, ``r`` and the context vectors."""
        qa = self.embed_query(q)
        fused = self.alpha * qa
        reps: Reps = {}
        for m in self.modalities:
            if self.memory[m].shape[0]:  # k = 0: no memory, no context (the ablation's baseline)
                reps[f"context.{m}"] = self.read(qa, m)
                fused = fused + self.beta[m] * reps[f"context.{m}"]
        reps["r"] = F.relu(self.fc1(fused))
        reps["emb"] = torch.sigmoid(self.hash(reps["r"]))
        return reps

    def encode_modality(self, modality: str, x: torch.Tensor) -> Reps:
        return self.code(self.pre_features(modality, x))

    def label_loss(self, reps: Reps, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eq. 5 (+ Eq. 3 for every context vector), batch means."""
        h = reps["emb"]
        out = {"cls": soft_cross_entropy(self.head(h), labels),
               "jacobian": jacobian_penalty(h, self.hash.weight).mean()}
        ctx = [soft_cross_entropy(self.context_head[m](reps[f"context.{m}"]), labels)
               for m in self.modalities if f"context.{m}" in reps]
        out["context"] = torch.stack(ctx).sum() if ctx else h.new_zeros(())
        out["loss"] = out["cls"] + self.jacobian * out["jacobian"] + out["context"]
        return out

    def hash_codes(self, emb: torch.Tensor) -> torch.Tensor:
        """Hash codes ``b = (h > 0.5)`` as 0/1 uint8."""
        return (emb > 0.5).to(torch.uint8)

    # Training: the stages of STAGES on a LabelledSet.
    @torch.no_grad()
    def pre_features_of(self, modality: str, x: np.ndarray, batch: int = 4096) -> np.ndarray:
        """The frozen pre-network's features of the rows ``x`` (N, raw width), in eval mode."""
        self.eval()
        return np.concatenate([self.pre_features(modality, torch.from_numpy(x[i:i + batch])).numpy()
                               for i in range(0, len(x), batch)]) if len(x) else np.zeros((0, 0), np.float32)

    def start_stage(self, stage: Stage) -> None:
        if stage.name == "joint":
            self.freeze_prenets()

    def stage_batches(self, stage: Stage, data) -> _PerModality | _Queries:
        if stage.name == "pre-networks":
            return _PerModality(data)
        return _Queries({m: self.pre_features_of(m, data.split(m, "train")[0]) for m in self.modalities},
                        {m: data.split(m, "train")[1] for m in self.modalities})

    def stage_loss(self, stage: Stage, batch: dict, encode=None) -> dict[str, torch.Tensor]:
        if stage.name == "pre-networks":
            return {"loss": soft_cross_entropy(self.pre_logits(batch["modality"], batch["x"]), batch["labels"])}
        return self.label_loss(self.code(batch["q"]), batch["labels"])

    def build_optimizers(self, stage: Stage, recipe: dict) -> list[torch.optim.Optimizer]:
        if stage.name == "pre-networks":
            params = [p for m in self.modalities for p in [*self.prenet[m].parameters(), *self.pre_head[m].parameters()]]
            return [make_optimizer(recipe["optimizer"], params, {**recipe, "lr": recipe["pre_lr"]})]
        return [make_optimizer(recipe["optimizer"], [p for p in self.parameters() if p.requires_grad], recipe)]

    def end_stage(self, stage: Stage, data, seed: int) -> dict:
        """After the pre-networks: their train/dev accuracy per modality, then memory generation
        (Eq. 6) from each modality's training features and discriminator probabilities."""
        if stage.name != "pre-networks":
            return {}
        self.eval()
        accuracy = {}
        with torch.no_grad():
            for m in self.modalities:
                for s in ("train", "dev"):
                    x, y = data.split(m, s)
                    if len(x):
                        pred = self.pre_logits(m, torch.from_numpy(x)).argmax(1).numpy()
                        accuracy[f"{m}.{s}"] = float(y[np.arange(len(y)), pred].mean())
        for m in self.modalities:
            x, y = data.split(m, "train")
            q = self.pre_features_of(m, x)
            with torch.no_grad():
                probs = torch.softmax(self.pre_head[m](torch.from_numpy(q)), -1).numpy()
            self.set_memory(m, select_memory(q, y, probs, self.memory_per_class, self.memory_init, seed)[0])
        return {"pre_accuracy": accuracy}

    def learned_kwargs(self) -> dict:
        return {"memory_sizes": self.memory_sizes}

    # xmr's pair interface (Flickr8k-style data: modalities "image" and "text").
    def encode_images(self, batch: dict) -> Reps:
        return self.encode_modality("image", batch["image"])

    def encode_texts(self, batch: dict) -> Reps:
        return self.encode_modality("text", sentence_vectors(batch["bert"].float(), batch["bert_mask"]))

    def similarity(self, img: Reps, txt: Reps) -> torch.Tensor:
        """Negative squared Euclidean distance between the h of images and sentences."""
        return -torch.cdist(img["emb"], txt["emb"]).pow(2)

    def loss(self, img: Reps, txt: Reps, batch: dict) -> dict:
        raise NotImplementedError("CMMN learns from class labels in stages (stage_loss): train it with "
                                  "`xmr train --model cmmn`")

    def _check_modality(self, modality: str) -> None:
        if modality not in self.prenet:
            raise KeyError(f"this CMMN has modalities {self.modalities}, not {modality!r}")
