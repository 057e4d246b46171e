"""The networks on ONNX Runtime, each exported once to an ``.onnx`` file and run by an
``InferenceSession`` with every graph optimisation:

- the image feature network (``OnnxNetwork``): the same EfficientNet-Lite, its file beside the
  features it computes, measured against the traced, frozen, channels-last TorchScript module in
  results/feature-runtime.json (speed, and the features' agreement);
- MiniLM up to one layer (``OnnxText``): token ids and attention mask -> that layer's token
  states, free in batch size and sentence length, for encoding search queries
  (``xmr.features.text``; measured in results/text-runtime.json).

The files are generated locally from the registry weights (``torch.onnx.export``, the TorchScript
exporter: the newer one needs onnxscript); nothing is downloaded.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

RUNTIMES = ("torch", "onnx")  # what runs a network: PyTorch itself, or its export on ONNX Runtime


def check_runtime(runtime: str, what: str) -> None:
    """Refuse a runtime name outside ``RUNTIMES``, naming ``what`` it was for (feature, text)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown {what} runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    # ALL adds the NCHWc layout and its fused convolutions: for the CNN ~2x what EXTENDED gives
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _export(model: torch.nn.Module, example: tuple, path: Path, inputs: list[str], outputs: list[str],
            axes: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # concurrent processes each export, then rename
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on shape arithmetic it records as constants
        torch.onnx.export(model.eval(), example, str(tmp), dynamo=False, input_names=inputs,
                          output_names=outputs, dynamic_axes=axes, opset_version=17)
    os.replace(tmp, path)


def export(model: torch.nn.Module, resolution: int, path: Path) -> None:
    """Write ``model`` (image -> trunk, final map) to ``path`` as ONNX, with a free batch size."""
    axes = {name: {0: "batch"} for name in ("image", "trunk", "map")}
    _export(model, (torch.zeros(2, 3, resolution, resolution),), path, ["image"], ["trunk", "map"], axes)


class OnnxNetwork:
    """An ONNX feature network: called on a float32 (B, 3, R, R) array, returns (trunk, map) tensors."""

    def __init__(self, path: Path, threads: int):
        self.session = _session(path, threads)

    def __call__(self, x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        trunk, fmap = self.session.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)})
        return torch.from_numpy(trunk), torch.from_numpy(fmap)


class _TextStates(torch.nn.Module):
    """A ``BertModel`` read at one layer: (token ids, attention mask) -> layer ``layer``'s token
    states (0: the embeddings). The layers above it are left out of the export, as nothing reads them."""

    def __init__(self, bert: torch.nn.Module, layer: int):
        super().__init__()
        self.bert, self.layer = bert, layer

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[self.layer]


def export_text(bert: torch.nn.Module, tokenizer, layer: int, path: Path) -> None:
    """Write MiniLM up to ``layer`` to ``path`` as ONNX, free in batch size and sentence length."""
    example = tokenizer(["a dog runs", "two children play in the snow"], padding="longest", return_tensors="pt")
    axes = {name: {0: "batch", 1: "tokens"} for name in ("input_ids", "attention_mask", "states")}
    _export(_TextStates(bert, layer), (example["input_ids"], example["attention_mask"]), path,
            ["input_ids", "attention_mask"], ["states"], axes)


class OnnxText:
    """MiniLM up to ``layer`` on ONNX Runtime: called on int64 token ids and attention mask (B, T),
    returns that layer's float32 token states (B, T, 384) as a tensor."""

    def __init__(self, path: Path, layer: int, threads: int):
        self.session, self.layer = _session(path, threads), layer

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> torch.Tensor:
        feeds = {"input_ids": np.ascontiguousarray(ids, dtype=np.int64),
                 "attention_mask": np.ascontiguousarray(mask, dtype=np.int64)}
        return torch.from_numpy(self.session.run(None, feeds)[0])
