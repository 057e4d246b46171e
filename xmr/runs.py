"""Opening a trained run: the one way evaluation, search, the demo, experiments and benchmarks do it.

A run folder (written by ``xmr train``) holds the model's constructor arguments and weights
(``best``/``last`` safetensors + JSON), the training split's vocabulary and the settings the
model reads its data with (dataset spec, feature extractor, caption length). ``open_run`` gives
them back as a ``TrainedRun``, and ``TrainedRun.data(split)`` gives a split's data exactly as the
model read it in training.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from xmr import checkpoint
from xmr.data import DatasetSpec
from xmr.data.pairs import PairData
from xmr.data.text import Vocab
from xmr.errors import ConfigError
from xmr.features.store import DEFAULT_CACHE, pair_data
from xmr.models import create_model, get_entry
from xmr.models.base import DATA_FACTS, RetrievalModel


@dataclass
class TrainedRun:
    """A trained model in eval mode, its vocabulary and its checkpoint metadata (``meta``: model,
    model_kwargs, data, extractor, max_len, epoch, ...)."""

    path: Path
    model: RetrievalModel
    vocab: Vocab
    meta: dict

    def data(self, split: str, data: str | DatasetSpec | None = None, cache: Path = DEFAULT_CACHE,
             progress: bool = True, on_bad_input: str = "fail", rows: Callable[[int], slice] | None = None
             ) -> PairData:
        """``split`` of ``data`` (default: the dataset the run was trained on) as the model reads it:
        its image input, token ids under the run's vocabulary and caption length, BERT states;
        only ``rows`` of its images (and their captions) where given (``pair_data``)."""
        return pair_data(data or self.meta["data"], split, self.model.inputs, self.vocab, self.meta["max_len"],
                         self.meta["extractor"], Path(cache), progress, on_bad_input, rows)


def open_run(run: str | Path, which: str = "best", overrides: dict | None = None) -> TrainedRun:
    """The run folder's ``which`` checkpoint ("best" or "last") with its vocabulary and metadata.

    ``overrides`` replace constructor arguments that change how the trained weights score, not
    their shapes (MMCA's ``alpha``, a pair chunk size); one that changes a shape fails on load."""
    run = Path(run)
    stem = run / which
    meta = checkpoint.read_meta(stem)
    kwargs = checked_model_kwargs(meta, stem)
    if overrides:
        check_model_kwargs(meta["model"], overrides, "--set")
        kwargs = {**kwargs, **overrides}
    model = create_model(meta["model"], **kwargs)
    checkpoint.load(stem, model)
    return TrainedRun(run, model.eval(), Vocab.load(run / "vocab.json"), meta)


# A checkpoint's model arguments are checked before anything is built from them (a damaged or
# hand-edited JSON is a one-line CheckpointError); ``xmr train`` checks ``--set`` values the same way.

MAX_DIM = 1 << 20  # no layer width in any preset is near this; a larger one is a typo or damage


def check_model_kwargs(model: str, kwargs: dict, where: str) -> None:
    """Refuse arguments the model does not take and values of the wrong type or absurd size
    (``embed_dim=-5``, ``1e13``), naming ``where`` they came from, before anything is allocated."""
    cls = get_entry(model).cls
    params = inspect.signature(cls.__init__).parameters
    for key, value in kwargs.items():
        if key in DATA_FACTS and key not in cls.data_facts:
            continue  # a fact older checkpoints carry for every model; create_model leaves it out
        if key not in params:
            near = [p for p in params if p != "self" and (p in key or key in p)]
            raise ConfigError(f"{where}: {model} takes no argument {key!r}"
                              f"{' (did you mean ' + ', '.join(near) + '?)' if near else ''}")
        default = params[key].default
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}: {key}={value!r} must be true or false")
        if isinstance(default, int) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where}: {key}={value!r} must be a whole number")
            if (key.endswith(("_dim", "_size", "dim")) or key.startswith("n_")) and not 0 < value <= MAX_DIM:
                raise ConfigError(f"{where}: {key}={value} must be from 1 to {MAX_DIM}")
        if isinstance(default, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{where}: {key}={value!r} must be a number")


def checked_model_kwargs(meta: dict, stem: Path) -> dict:
    """The checkpoint ``stem``'s model arguments, after checking that its metadata has what a run
    written by ``xmr train`` has and that the arguments fit the model (``check_model_kwargs``)."""
    where = f"{Path(stem).with_suffix('.json')}"
    for key in ("model", "model_kwargs", "max_len", "extractor", "data"):
        if key not in meta:
            raise checkpoint.CheckpointError(f"{where}: checkpoint metadata has no {key!r} field; it was not "
                                             "written by xmr train")
    kwargs = meta["model_kwargs"]
    if not isinstance(kwargs, dict):
        raise checkpoint.CheckpointError(f"{where}: 'model_kwargs' is not an object")
    try:
        get_entry(meta["model"])
    except KeyError as e:
        raise checkpoint.CheckpointError(f"{where}: {e.args[0]}") from None
    try:
        check_model_kwargs(meta["model"], kwargs, where)
    except ConfigError as e:
        raise checkpoint.CheckpointError(str(e)) from None
    return kwargs
