"""The feature network on ONNX Runtime: the same EfficientNet-Lite, exported once to an ``.onnx``
file beside the features it computes, run by an ``InferenceSession`` with every graph optimisation.

It is measured against the traced, frozen, channels-last TorchScript module in
results/feature-runtime.json (speed, and the features' agreement). The file is generated locally from the registry weights (``torch.onnx.export``, the TorchScript
exporter: the newer one needs onnxscript); nothing is downloaded.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch


def export(model: torch.nn.Module, resolution: int, path: Path) -> None:
    """Write ``model`` (image -> trunk, final map) to ``path`` as ONNX, with a free batch size."""
    example = torch.zeros(2, 3, resolution, resolution)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # concurrent shards each export, then rename
    axes = {name: {0: "batch"} for name in ("image", "trunk", "map")}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on the TF-style padding arithmetic
        torch.onnx.export(model.eval(), (example,), str(tmp), dynamo=False, input_names=["image"],
                          output_names=["trunk", "map"], dynamic_axes=axes, opset_version=17)
    os.replace(tmp, path)


class OnnxNetwork:
    """An ONNX feature network: called on a float32 (B, 3, R, R) array, returns (trunk, map) tensors."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        # ALL adds the NCHWc layout and its fused convolutions: ~2x what EXTENDED gives here
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        trunk, fmap = self.session.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)})
        return torch.from_numpy(trunk), torch.from_numpy(fmap)
