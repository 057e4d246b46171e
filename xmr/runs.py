"""Opening a trained run: the one way evaluation, search, the demo, experiments and benchmarks do it.

A run folder (written by ``xmr train``) holds the model's constructor arguments and weights
(``best``/``last`` safetensors + JSON), the training split's vocabulary and the settings the
model reads its data with (dataset spec, feature extractor, caption length). ``open_run`` gives
them back as a ``TrainedRun``, and ``TrainedRun.data(split)`` gives a split's data exactly as the
model read it in training.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xmr import checkpoint
from xmr.data import DatasetSpec
from xmr.data.pairs import PairData
from xmr.data.text import Vocab
from xmr.features.store import DEFAULT_CACHE, pair_data
from xmr.models import create_model
from xmr.models.base import RetrievalModel


@dataclass
class TrainedRun:
    """A trained model in eval mode, its vocabulary and its checkpoint metadata (``meta``: model,
    model_kwargs, data, extractor, max_len, epoch, ...)."""

    path: Path
    model: RetrievalModel
    vocab: Vocab
    meta: dict

    def data(self, split: str, data: str | DatasetSpec | None = None, cache: Path = DEFAULT_CACHE,
             progress: bool = True, on_bad_input: str = "fail") -> PairData:
        """``split`` of ``data`` (default: the dataset the run was trained on) as the model reads it:
        its image input, token ids under the run's vocabulary and caption length, BERT states."""
        return pair_data(data or self.meta["data"], split, self.model.inputs, self.vocab, self.meta["max_len"],
                         self.meta["extractor"], Path(cache), progress, on_bad_input)


def open_run(run: str | Path, which: str = "best") -> TrainedRun:
    """The run folder's ``which`` checkpoint ("best" or "last") with its vocabulary and metadata."""
    run = Path(run)
    stem = run / which
    meta = checkpoint.read_meta(stem)
    model = create_model(meta["model"], **meta["model_kwargs"])
    checkpoint.load(stem, model)
    return TrainedRun(run, model.eval(), Vocab.load(run / "vocab.json"), meta)
