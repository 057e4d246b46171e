"""Checkpoints as safetensors plus JSON: never pickle, so loading one cannot execute code.

``<stem>.safetensors`` holds the model's tensors (parameters and buffers, e.g. a persistent
memory) and, for training checkpoints, the optimiser's tensors and the torch RNG state;
``<stem>.json`` holds everything else (config, epoch, optimiser hyper-parameters, versions).
Both are written to temporary files and renamed, the JSON last; it records the weights' SHA-256,
so a pair that was not written together (a crash between the renames) is refused on load.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import xmr

FORMAT = "xmr-checkpoint-1"


class CheckpointError(ValueError):
    pass


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save(stem: str | Path, model: torch.nn.Module, meta: dict[str, Any],
         optimizers: list[torch.optim.Optimizer] | None = None) -> None:
    stem = Path(stem)
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    groups = []
    for n, opt in enumerate(optimizers or []):
        sd = opt.state_dict()
        for pid, state in sd["state"].items():
            for name, value in state.items():
                t = value if torch.is_tensor(value) else torch.tensor(value)
                tensors[f"optim{n}.{pid}.{name}"] = t.detach().contiguous().cpu()
        groups.append(sd["param_groups"])
    if optimizers is not None:
        tensors["rng.torch"] = torch.get_rng_state()
    # Both files are written under temporary names first; the weights are renamed into place, then
    # the JSON, which records the weights' SHA-256: a crash between the two renames leaves a JSON
    # whose hash does not match, refused on load as a torn checkpoint (never old metadata on new
    # weights read as a good checkpoint).
    weights = stem.with_suffix(".safetensors")
    tmp = weights.with_name(weights.name + ".tmp")
    save_file(tensors, str(tmp))
    meta = {**meta, "format": FORMAT, "xmr_version": xmr.__version__, "optimizer_groups": groups,
            "weights_sha256": _sha256(tmp)}
    meta_tmp = stem.with_suffix(".json.tmp")
    meta_tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, weights)
    os.replace(meta_tmp, stem.with_suffix(".json"))


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_meta(stem: str | Path) -> dict:
    path = Path(stem).with_suffix(".json")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint metadata not found")
    try:
        meta = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the checkpoint is damaged, train again") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not an xmr checkpoint (a JSON {type(meta).__name__}, expected an object)")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an xmr checkpoint (format {meta.get('format')!r}, want {FORMAT!r})")
    return meta


def read_tensors(stem: Path) -> dict:
    """The checkpoint's tensors; a missing, empty, truncated or garbage file is a CheckpointError."""
    path = stem.with_suffix(".safetensors")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint weights not found")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError (not an OSError)
        size = path.stat().st_size
        raise CheckpointError(f"{path}: unreadable safetensors file ({size} bytes: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}); the checkpoint is "
                              "damaged (truncated?), train again or use the other checkpoint") from None
    want = read_meta(stem).get("weights_sha256")
    if want is not None and _sha256(path) != want:
        raise CheckpointError(f"{path}: does not match {stem.with_suffix('.json').name} (SHA-256 differs): the "
                              "two files were not written together (interrupted save, or copied from another "
                              "run); train again or use the other checkpoint")
    return tensors


def _load_model_tensors(stem: Path, model: torch.nn.Module) -> tuple[dict, dict, list[str], list[str]]:
    """(metadata, all tensors, missing keys, unexpected keys) after loading the checkpoint's model
    tensors into ``model`` non-strictly; a checkpoint of another model or of other shapes is refused."""
    meta = read_meta(stem)
    if meta.get("model") != getattr(model, "name", None):
        raise CheckpointError(f"{stem}: checkpoint is for model {meta.get('model')!r}, not {model.name!r}")
    tensors = read_tensors(stem)
    state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{stem}: weights do not fit this model ({str(e).splitlines()[-1].strip()})") from e
    return meta, tensors, list(missing), list(unexpected)


def init_weights(stem: str | Path, model: torch.nn.Module) -> list[str]:
    """Start ``model`` from another run's weights: every tensor of the checkpoint must fit, and
    the model's tensors it lacks (a part the earlier run did not have, e.g. a fine-tuned CNN
    tail) keep their initial values; returns those keys."""
    stem = Path(stem)
    _, _, missing, unexpected = _load_model_tensors(stem, model)
    if unexpected:
        raise CheckpointError(f"{stem}: weights this model does not have: {unexpected[:3]}")
    return missing


def load(stem: str | Path, model: torch.nn.Module,
         optimizers: list[torch.optim.Optimizer] | None = None) -> dict:
    """Load tensors into ``model`` (and ``optimizers``, restoring the RNG); returns the metadata."""
    stem = Path(stem)
    meta, tensors, missing, unexpected = _load_model_tensors(stem, model)
    if missing or unexpected:
        raise CheckpointError(f"{stem}: weights do not fit this model (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    for n, opt in enumerate(optimizers or []):
        groups = meta["optimizer_groups"][n]
        per_param: dict[int, dict] = {}
        prefix = f"optim{n}."
        for key, value in tensors.items():
            if key.startswith(prefix):
                pid, name = key[len(prefix):].split(".", 1)
                per_param.setdefault(int(pid), {})[name] = value
        try:
            opt.load_state_dict({"state": per_param, "param_groups": groups})
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise CheckpointError(f"{stem}: optimiser state does not fit ({e})") from None
    if optimizers is not None and "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    return meta
