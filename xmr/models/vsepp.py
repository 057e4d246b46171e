"""VSE++ (Faghri, Fleet, Kiros, Fidler, BMVC 2018): the common baseline.

Image: linear projection of the pooled CNN feature (or the mean of region features), l2-normed
(VSE++ ``EncoderImagePrecomp``). With ``image_input="trunk"`` the pooled feature comes from the
top of the CNN fine-tuned on cached trunk activations (``image_tail.py``): the paper's "FT"
setting at the cost of the last ``tail_blocks`` blocks. Text: word embeddings -> GRU, final state, l2-normed. With
``text_input="bert"`` the GRU reads frozen MiniLM token states instead of learned word
embeddings (an xmr option, not in the paper: a pretrained stand-in for the word vectors); with
``text_tail_layers=k`` MiniLM's last ``k`` layers are fine-tuned on cached lower-layer states
(``text_tail.py``) at ``text_tail_lr_scale`` times the learning rate, the text side's "FT";
``text_pool="mean"`` replaces the GRU by a linear projection of the mean of the MiniLM states
(how MiniLM itself embeds a sentence), ``"gru+mean"`` adds that projection to the GRU's vector.
``image_pool="max"`` projects every grid cell and takes the element-wise max over cells, instead
of projecting their mean (VSE-infinity, Chen et al. 2021: max pooling of projected grid features
beats average pooling, the simplest case of its learned pooling operator).
Similarity: cosine (dot product of unit vectors). Loss: Eq. 5, hinge triplet with the hardest
negative in the batch (MH), margin 0.2; Eq. 4 (sum of violations, SH) for ``warmup_epochs``.
"""
from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import nn

from xmr.backbones import FEATURE_DIM
from xmr.interface import BERT_DIM, sentence_vectors
from xmr.losses import ViolationWarmup, triplet_ranking_loss
from xmr.models.base import Inputs, Preset, RetrievalModel, Reps, register
from xmr.models.image_tail import ImageTail
from xmr.models.text_tail import TextTail, check_tail_option
from xmr.models.text_encoders import GRUEncoder

PRESETS = {
    # The VSE++ paper's precomputed-feature setting (1024-d space, 300-d words, GRU, lr 2e-4
    # for 15 epochs then 2e-5, batch 128, grad clip 2, margin 0.2, max violation).
    "paper": Preset(
        model=dict(embed_dim=1024, word_dim=300, bidirectional=False, margin=0.2, warmup_epochs=0),
        train=dict(epochs=30, batch_size=128, lr=2e-4, lr_decay_epochs=[15], lr_decay=0.1,
                   grad_clip=2.0, optimizer="adam"),
        note="Faghri et al. 2018, precomputed image features",
    ),
    # Trains on 2 CPU cores: smaller BiGRU, one warm-up epoch of sum-of-violations; on Flickr8k the
    # dev rsum plateaus by epoch ~8 at lr 2e-4, hence the earlier decay.
    "cpu": Preset(
        model=dict(embed_dim=512, word_dim=300, bidirectional=True, margin=0.2, warmup_epochs=1),
        train=dict(epochs=15, batch_size=128, lr=2e-4, lr_decay_epochs=[8], lr_decay=0.1,
                   grad_clip=2.0, optimizer="adam"),
        note="small enough for 2 CPU cores",
    ),
    # The cpu preset with the GRU reading frozen MiniLM token states instead of word embeddings.
    "cpu-bert": Preset(
        model=dict(embed_dim=512, bidirectional=True, margin=0.2, warmup_epochs=1, text_input="bert"),
        train=dict(epochs=15, batch_size=128, lr=2e-4, lr_decay_epochs=[8], lr_decay=0.1,
                   grad_clip=2.0, optimizer="adam"),
        note="cpu preset, MiniLM token states as the GRU's input",
    ),
    # The paper's best setting, FT + RC: the whole image CNN fine-tuned from pixels with random
    # crops and flips, started from a model trained on frozen features (--set init_from=RUN, as the
    # paper fine-tunes its 1C model). The CNN is the extractor's backbone (a data fact): run with
    # --extractor efficientnet-lite2-260 for Lite2, the stand-in for ResNet-152. A GPU job.
    "paper-ft": Preset(
        model=dict(embed_dim=1024, word_dim=300, bidirectional=False, margin=0.2, warmup_epochs=0,
                   image_input="pixels", resolution=260, tail_lr_scale=0.1),
        train=dict(epochs=30, batch_size=128, lr=2e-4, lr_decay_epochs=[15], lr_decay=0.1,
                   grad_clip=2.0, optimizer="adam", augment="crop-flip"),
        note="Faghri et al. 2018, FT + RC (fine-tuned CNN, random crops)",
    ),
    # The demo and tests on the synthetic set.
    "tiny": Preset(
        model=dict(embed_dim=256, word_dim=64, bidirectional=True, margin=0.2, warmup_epochs=1),
        train=dict(epochs=8, batch_size=64, lr=1e-3, lr_decay_epochs=[6], lr_decay=0.1,
                   grad_clip=2.0, optimizer="adam"),
        note="synthetic demo",
    ),
}


@register("vsepp", presets=PRESETS)
class VSEPP(RetrievalModel):
    data_facts = ("vocab_size", "image_dim", "backbone")  # backbone: the CNN whose trunk it may fine-tune
    inputs = Inputs(image="pooled", text=("tokens",))

    def __init__(self, vocab_size: int, image_dim: int, embed_dim: int = 1024, word_dim: int = 300,
                 bidirectional: bool = False, margin: float = 0.2, warmup_epochs: int = 0,
                 dropout: float = 0.0, text_input: str = "words", word_init: np.ndarray | None = None,
                 image_input: str = "pooled", backbone: str = "efficientnet-lite0", tail_blocks: int = 2,
                 tail_lr_scale: float = 1.0, resolution: int = 224, text_tail_layers: int = 0,
                 text_tail_lr_scale: float = 0.1, text_pool: str = "gru", image_pool: str = "mean"):
        super().__init__()
        self.inputs = self.inputs_for(text_input=text_input, image_input=image_input, resolution=resolution,
                                      text_tail_layers=text_tail_layers, text_pool=text_pool,
                                      image_pool=image_pool)
        self.image_pool = image_pool
        self.text_input = text_input
        self.drop = nn.Dropout(dropout)  # not in the paper; regularises small training sets
        self.tail = (ImageTail(backbone, tail_blocks, from_pixels=image_input == "pixels")
                     if image_input in ("trunk", "pixels") else None)
        self.tail_lr_scale = tail_lr_scale
        # MiniLM's pretrained top layers train slower than the new ones (text_tail_lr_scale).
        self.text_tail = TextTail(text_tail_layers) if text_tail_layers else None
        self.text_tail_lr_scale = text_tail_lr_scale
        if self.tail is not None:
            image_dim = FEATURE_DIM
        self.image_fc = nn.Linear(image_dim, embed_dim)
        # Xavier init as in the VSE++ code.
        r = np.sqrt(6.0) / np.sqrt(image_dim + embed_dim)
        nn.init.uniform_(self.image_fc.weight, -r, r)
        nn.init.zeros_(self.image_fc.bias)
        self.text_pool = text_pool
        # MiniLM was trained as a sentence embedder on its mean-pooled states: "mean" projects that
        # vector, "gru+mean" adds the projection to the GRU's sentence vector.
        self.text_mean = nn.Linear(BERT_DIM, embed_dim) if "mean" in text_pool else None
        if text_pool == "mean":
            self.text = None
        elif text_input == "bert":
            self.text = GRUEncoder(None, BERT_DIM, embed_dim, bidirectional, dropout=dropout)
        else:
            self.text = GRUEncoder(vocab_size, word_dim, embed_dim, bidirectional, word_init, dropout=dropout)
        self.margin, self.warmup = margin, ViolationWarmup(warmup_epochs)

    def encode_images(self, batch: dict) -> Reps:
        feats = batch["image"]
        if self.tail is not None:
            feats = self.tail(feats)
        if feats.dim() == 3 and self.image_pool == "max":  # each grid cell projected, then the max
            return {"emb": F.normalize(self.image_fc(self.drop(feats)).amax(1), dim=-1)}
        if feats.dim() == 3:
            feats = feats.mean(1)
        return {"emb": F.normalize(self.image_fc(self.drop(feats)), dim=-1)}

    def param_groups(self) -> list[dict]:
        return self.scaled_param_groups((self.tail, self.tail_lr_scale), (self.text_tail, self.text_tail_lr_scale))

    @classmethod
    def word_vector_dim(cls, word_dim: int = 300, text_input: str = "words", **_) -> int | None:
        return word_dim if text_input == "words" else None

    @classmethod
    def inputs_for(cls, text_input: str = "words", image_input: str = "pooled", resolution: int = 224,
                   text_tail_layers: int = 0, text_pool: str = "gru", image_pool: str = "mean", **_) -> Inputs:
        if text_input not in ("words", "bert"):
            raise ValueError(f"text_input must be 'words' or 'bert', not {text_input!r}")
        if text_pool not in ("gru", "mean", "gru+mean"):
            raise ValueError(f"text_pool must be 'gru', 'mean' or 'gru+mean', not {text_pool!r}")
        if text_pool != "gru" and text_input != "bert":
            raise ValueError(f"text_pool={text_pool!r} pools MiniLM states: it needs text_input='bert'")
        check_tail_option(text_tail_layers, text_input)
        if image_input not in ("pooled", "trunk", "pixels"):
            raise ValueError(f"image_input must be 'pooled', 'trunk' or 'pixels', not {image_input!r}")
        if image_pool not in ("mean", "max"):
            raise ValueError(f"image_pool must be 'mean' or 'max', not {image_pool!r}")
        if image_pool == "max" and image_input == "pooled":
            image_input = "regions"  # max pooling needs the grid cells, not their mean
        return Inputs(image=image_input, text=("tokens", "bert") if text_input == "bert" else ("tokens",),
                      pixels=resolution if image_input == "pixels" else 0, bert_tail=text_tail_layers)

    def encode_texts(self, batch: dict) -> Reps:
        if self.text_input == "bert":
            mask = batch["bert_mask"]
            states = batch["bert"].float() if self.text_tail is None else self.text_tail(batch["bert"], mask)
            sentence = 0 if self.text is None else self.text.run(states, mask.sum(1))[1]
            if self.text_mean is not None:
                sentence = sentence + self.text_mean(sentence_vectors(states, mask))
        else:
            _, sentence = self.text(batch["tokens"], batch["lengths"])
        return {"emb": F.normalize(sentence, dim=-1)}

    def loss(self, img: Reps, txt: Reps, batch: dict) -> dict:
        scores = self.similarity(img, txt)
        loss = triplet_ranking_loss(scores, self.margin, self.warmup.max_violation, batch.get("same_image"))
        return {"loss": loss}

    def on_epoch_start(self, epoch: int) -> None:
        self.warmup.on_epoch_start(epoch)
