"""The top of a pretrained EfficientNet-Lite, fine-tuned from cached trunk activations.

VSE++'s best results fine-tune the image CNN ("FT"); on 2 CPU cores a full fine-tune is ~26 min per
Flickr8k epoch, so xmr caches the activations entering the network's last blocks once
(``xmr/features/image.py``, image input ``"trunk"``) and trains only the blocks from there on plus
the 1280-channel head. ``tail_blocks`` of the ``len(blocks) - cut`` tail blocks are trained (the
last ones); the blocks before them run frozen. Batch-norm statistics stay at their ImageNet
values (a batch of 128 images is too small to re-estimate them), their affine weights train.
Augmentation, when asked for, happens on the cached activations (``xmr/data/pairs.py``).

``from_pixels=True`` is the paper's full fine-tune for a GPU user: the whole network, stem
included, reads uint8 pixels (image input ``"pixels"``) and every block trains.
"""
from __future__ import annotations

import torch
from torch import nn

from xmr.backbones import BACKBONES, efficientnet
from xmr.interface import IMAGENET_MEAN, IMAGENET_STD


class ImageTail(nn.Module):
    """Trunk activations (B, C, g, g), or uint8 pixels (B, R, R, 3) with ``from_pixels``, ->
    final-map grid features (B, g*g, 1280)."""

    def __init__(self, backbone: str, tail_blocks: int, pretrained: bool = True, from_pixels: bool = False):
        super().__init__()
        net = efficientnet(backbone, pretrained)
        cut = 0 if from_pixels else BACKBONES[backbone][1]
        blocks = list(net._blocks[cut:])
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish) if from_pixels else None
        if from_pixels:
            tail_blocks = len(blocks)
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)
        if not 0 <= tail_blocks <= len(blocks):
            raise ValueError(f"tail_blocks={tail_blocks}: {backbone} has {len(blocks)} blocks after its trunk")
        self.frozen = nn.ModuleList(blocks[: len(blocks) - tail_blocks])
        self.blocks = nn.ModuleList(blocks[len(blocks) - tail_blocks:])
        self.conv_head, self.bn, self.act = net._conv_head, net._bn1, net._swish
        for p in self.frozen.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "ImageTail":
        super().train(mode)
        for m in self.modules():  # ImageNet statistics, see the module docstring
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, trunk: torch.Tensor) -> torch.Tensor:
        if self.stem is not None:  # uint8 (B, R, R, 3) pixels
            trunk = self.stem((trunk.permute(0, 3, 1, 2).float() - self.mean) / self.std)
        x = trunk.float().contiguous(memory_format=torch.channels_last)  # ~1.4x faster convolutions on CPU
        if len(self.frozen):
            with torch.no_grad():
                for block in self.frozen:
                    x = block(x)
        for block in self.blocks:
            x = block(x)
        x = self.act(self.bn(self.conv_head(x)))
        return x.flatten(2).transpose(1, 2)
