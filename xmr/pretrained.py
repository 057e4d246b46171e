"""The pretrained model shipped inside the package, and the export that makes such a bundle.

A bundle is a run folder reduced to what search and evaluation read: ``best.safetensors`` (the
model's tensors in float16, no optimiser state), ``best.json`` (its metadata: model, arguments,
extractor, caption length), ``vocab.json`` and ``test-metrics.json`` (``xmr eval`` of the bundle on
the Flickr8k test split). ``open_run`` reads it like any run; float16 tensors are cast back to the
model's float32 on load. The pretrained backbones (EfficientNet, MiniLM) are not in the bundle:
they come from their registry packages, as for any run. ``experiments/bundle_pretrained.sh``
regenerates the bundle from the model chosen on dev in ``results/vsepp-flickr8k/``.
"""
from __future__ import annotations

import shutil
from importlib.resources import files
from pathlib import Path

import torch

from xmr import checkpoint

BUNDLE_DIR = Path(str(files("xmr") / "bundled"))
DEFAULT = "vsepp-flickr8k"
NAME = "pretrained"  # what the CLI accepts in place of a run folder
MAX_BYTES = 10_000_000  # the package stays small: weights of at most 10 MB


def bundled_run(name: str = DEFAULT) -> Path:
    """The folder of the bundled model ``name``; a missing bundle is a CheckpointError."""
    path = BUNDLE_DIR / name
    if not (path / "best.json").is_file():
        raise checkpoint.CheckpointError(f"{path}: no bundled model here (the package was built without it; "
                                         "give a run folder written by xmr train instead)")
    return path


def resolve_run(run: str | Path | None) -> Path:
    """A run folder, with ``None`` or ``"pretrained"`` meaning the bundled default model."""
    return bundled_run() if run is None or str(run) == NAME else Path(run)


def export_run(run: str | Path, out: str | Path, which: str = "best", cache: Path = Path("runs/cache")) -> dict:
    """Write ``run``'s ``which`` checkpoint to ``out`` as a bundle (float16 tensors, no optimiser
    state, the vocabulary beside it, the match levels measured on the run's dev split so that a
    search needs no dataset). Returns the bundle's metadata; refuses weights over MAX_BYTES."""
    from xmr.runs import open_run
    from xmr.search.index import run_match_levels

    trained = open_run(run, which)
    trained.meta["match_levels"] = run_match_levels(trained, cache)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keep = {k: v for k, v in trained.meta.items()
            if k not in ("format", "xmr_version", "optimizer_groups", "weights_sha256") and v is not None}
    meta = {**keep, "exported_from": f"{Path(run).name}/{which}", "dtype": "float16"}
    model = trained.model.to(torch.float16)  # integer buffers (BatchNorm counters) keep their dtype
    checkpoint.save(out / "best", model, meta)
    size = (out / "best.safetensors").stat().st_size
    if size > MAX_BYTES:
        raise checkpoint.CheckpointError(f"{out / 'best.safetensors'}: {size} bytes, over the bundle limit of "
                                         f"{MAX_BYTES}; export a smaller model")
    shutil.copy(Path(run) / "vocab.json", out / "vocab.json")
    for f in ("best.safetensors", "best.json", "vocab.json"):
        (out / f).chmod(0o644)  # package data: readable by every user of an installed copy
    return {**meta, "bytes": size}
