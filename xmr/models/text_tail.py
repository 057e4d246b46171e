"""The top of MiniLM, fine-tuned from cached lower-layer token states: the text side's
``image_tail.py``.

Models with ``text_input="bert"`` read frozen all-MiniLM-L6-v2 token states (the stand-in for the
BERT the papers fine-tune or keep fixed). Fine-tuning the whole encoder per batch is too slow for
2 CPU cores, so ``xmr/features/text.py`` caches, once per split, the states *entering* MiniLM's
last ``tail_layers`` layers (a model asks for them with ``Inputs.bert_tail``) and ``TextTail``
runs copies of those layers, initialised from the pretrained weights, on them. At those weights it
reproduces MiniLM's final ``last_hidden_state`` (up to the fp16 storage of the cache), so a model
started from a frozen-state run scores as that run did before its first step.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from xmr.backbones import minilm
from xmr.interface import BERT_LAYERS


def check_tail_option(text_tail_layers: int, text_input: str) -> None:
    """A model's ``text_tail_layers`` option: 0..6, and only over MiniLM states (``text_input="bert"``)."""
    if not 0 <= text_tail_layers <= BERT_LAYERS:
        raise ValueError(f"text_tail_layers={text_tail_layers}: MiniLM has {BERT_LAYERS} layers, use 0..{BERT_LAYERS}")
    if text_tail_layers and text_input != "bert":
        raise ValueError(f"text_tail_layers={text_tail_layers} fine-tunes MiniLM: it needs text_input='bert'")


class TextTail(nn.Module):
    """Cached states (B, T, 384) of MiniLM layer ``6 - tail_layers`` and their mask (B, T) -> the
    final token states (B, T, 384), float32.

    ``dropout`` is the copied layers' hidden and attention dropout in train mode; MiniLM's own 0.1
    by default (HF BERT fine-tuning's setting). Eval mode has none.
    """

    def __init__(self, tail_layers: int, dropout: float = 0.1):
        super().__init__()
        if not 1 <= tail_layers <= BERT_LAYERS:
            raise ValueError(f"tail_layers={tail_layers}: MiniLM has {BERT_LAYERS} layers, use 1..{BERT_LAYERS}")
        _, bert = minilm()
        # Copies, so the loaded MiniLM (and its lower layers) can be freed.
        self.layers = nn.ModuleList(copy.deepcopy(layer) for layer in bert.encoder.layer[BERT_LAYERS - tail_layers:])
        for m in self.layers.modules():
            if isinstance(m, nn.Dropout):
                m.p = dropout

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = states.float()
        # BertModel's extended mask: 0 on words, the dtype's minimum on padding keys, added to the
        # attention logits of every head and query (B, 1, 1, T).
        extended = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, extended)
        return x
