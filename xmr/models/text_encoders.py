"""Text-side pieces shared by several models: word embeddings, the GRU encoder, padding trimming."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from xmr.interface import Reps
from xmr.models.rnn import packed_gru


def drop_padding_columns(words: Reps, whole: tuple[str, ...] = ()) -> Reps:
    """``words`` (per-word tensors (N, T, ...) and their ``"mask"`` (N, T), False = padding) without
    the trailing columns that are padding in every sentence, so that scoring a block costs what its
    longest sentence needs, not the padded width (texts come padded to max_len). Keys in ``whole``
    hold one row per sentence, no word axis, and are kept as they are."""
    valid = words["mask"].any(0).nonzero()
    width = int(valid.max()) + 1 if valid.numel() else 1
    return {k: v if k in whole else v[:, :width] for k, v in words.items()}


def word_embedding(vocab_size: int, dim: int, init: np.ndarray | None) -> nn.Embedding:
    emb = nn.Embedding(vocab_size, dim, padding_idx=0)
    if init is not None:
        if init.shape != (vocab_size, dim):
            raise ValueError(f"word vectors have shape {init.shape}, model wants {(vocab_size, dim)}")
        emb.weight.data.copy_(torch.from_numpy(init))
    else:
        nn.init.uniform_(emb.weight, -0.1, 0.1)
    return emb


class GRUEncoder(nn.Module):
    """Word embeddings -> (Bi)GRU; returns per-word states (B, T, H) and the sentence vector (B, H).

    Bidirectional states are the mean of the two directions (as VSE++/SCAN do), so H is the same
    either way. The sentence vector is the state at the last real word (forward) combined with
    the backward state at the first word.
    """

    def __init__(self, vocab_size: int | None, word_dim: int, hidden: int, bidirectional: bool = False,
                 word_init: np.ndarray | None = None, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        # vocab_size None: the encoder reads given word vectors (e.g. frozen BERT states) via run().
        self.embed = word_embedding(vocab_size, word_dim, word_init) if vocab_size else None
        self.drop = nn.Dropout(dropout)
        # nn.GRU holds the parameters (checkpoints keep their names); packed_gru runs them.
        self.rnn = nn.GRU(word_dim, hidden, num_layers=num_layers, batch_first=True,
                          bidirectional=bidirectional)
        self.bidirectional = bidirectional

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.run(self.embed(tokens), lengths)

    def run(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The GRU over word vectors ``x`` (B, T, word_dim) with ``lengths`` real words each."""
        x = self.drop(x)
        packed = pack_padded_sequence(x, lengths.cpu().clamp(min=1), batch_first=True, enforce_sorted=False)
        out, h = packed_gru(self.rnn, packed)
        states, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
        if self.bidirectional:
            hidden = states.size(-1) // 2
            states = (states[..., :hidden] + states[..., hidden:]) / 2
            sentence = (h[-2] + h[-1]) / 2
        else:
            sentence = h[-1]
        return states, sentence
