"""Image features: EfficientNet-Lite (ImageNet) trunk activations, grid regions and pooled vectors.

Stands in for the papers' Faster R-CNN regions (ACMM, MMCA: 36 x 2048), VGG-16 pool5 grid
(JGCAR: 14 x 14 x 512 at 448^2) and VGG/ResNet pooled vectors (VSE++). An extractor is named
``efficientnet-lite{0,1,2}-<resolution>``: Lite0 at 224^2 gives a 7 x 7 grid of the final
1280-channel map (49 regions), at 448^2 14 x 14; Lite2 at 260^2 gives 9 x 9. The pooled vector is
the network's own global average of that map. Names joined with ``+`` serve several networks'
features side by side (``extractor_parts``), each cached under its own name.

One forward pass writes three outputs, fp16, read back memory-mapped, in the VSE++/SCAN
precomputed-feature format: ``<out>/grid/{split}_ims.npy`` (N, R, 1280),
``<out>/pooled/{split}_ims.npy`` (N, 1280) and ``<out>/trunk/{split}_ims.npy`` (N, C, g, g), the
activations entering the network's last ``TAIL_BLOCKS`` blocks, from which a model fine-tunes
the top of the CNN without running its frozen lower part (``xmr/models/image_tail.py``). Each
folder has ``{split}_caps.txt`` and ``{split}_ids.txt``. Extraction is resumable: rows are
written into ``*.partial`` memmaps and the count of finished rows is saved after every batch.

Two runtimes run the network (``RUNTIMES``): ``torch``, the traced and frozen TorchScript module,
and ``onnx``, the same network on ONNX Runtime (``xmr/features/onnx_runtime.py``, faster on CPU:
results/feature-runtime.json), its features equal to the torch ones within ``TOLERANCE``. A folder keeps the runtime it
was first extracted with (``extractor.json``; caches from before runtimes are torch's), so a new
default never recomputes or mixes an existing cache; a new folder gets ``DEFAULT_RUNTIME``. The
content key includes the runtime (torch's is the key of before), so the two never share rows.
While the network runs on one batch, a worker thread decodes and resizes the next.
"""
from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from PIL import Image

from xmr.backbones import BACKBONES, FEATURE_DIM, efficientnet
from xmr.data.base import DataError, Split
from xmr.data.images import to_tensor_array
from xmr.features import onnx_runtime
from xmr.features.fingerprint import image_key, matches, stale, write_key

RUNTIMES = onnx_runtime.RUNTIMES
DEFAULT_RUNTIME = "onnx"
# What "equal features" means between the runtimes, checked by tests/test_feature_runtime.py: the
# fp32 maps differ by ~3e-5 (another summation order), below the fp16 step of the stored values.
TOLERANCE = {"max_abs": 1e-3, "min_cosine": 0.9999}


@dataclass(frozen=True)
class ExtractorSpec:
    name: str
    backbone: str
    resolution: int

    @property
    def grid(self) -> int:
        return -(-self.resolution // 32)  # the stride-32 map of TF "same" padding: ceil(R / 32)

    @property
    def trunk_cut(self) -> int:
        return BACKBONES[self.backbone][1]

    @property
    def trunk_shape(self) -> tuple[int, int, int]:
        return BACKBONES[self.backbone][2], self.grid, self.grid

    @classmethod
    def parse(cls, name: str) -> "ExtractorSpec":
        if JOIN in name:
            raise ValueError(f"{name!r} joins several extractors; this needs one network (fine-tuning the "
                             "CNN's tail, image input trunk): name one extractor")
        base, _, res = name.rpartition("-")
        if base not in BACKBONES or not res.isdigit() or not 32 <= int(res) <= 1024:
            raise ValueError(f"unknown image extractor {name!r}; use efficientnet-lite0-224, "
                             "efficientnet-lite0-448 or efficientnet-lite2-260 (any of "
                             f"{', '.join(BACKBONES)} at a resolution of 32 to 1024)")
        return cls(name, base, int(res))


JOIN = "+"


def extractor_parts(extractor: str) -> list[ExtractorSpec]:
    """The extractors a name joins with ``+`` (one for a plain name), each parsed.

    A joined extractor (``efficientnet-lite0-224+efficientnet-lite2-260``) serves its parts'
    features side by side, channels concatenated: an ensemble of ImageNet networks as one image
    input. Each part is extracted and cached on its own, so parts are shared between joins."""
    names = extractor.split(JOIN)
    if len(set(names)) != len(names):
        raise ValueError(f"extractor {extractor!r} names a part twice")
    return [ExtractorSpec.parse(n) for n in names]


def join_features(arrays: list[np.ndarray], names: list[str]) -> np.ndarray:
    """Features of the same images from several extractors, side by side along the last axis
    (pooled (N, D) or grid (N, R, D)); grids must have the same regions to be joined per cell."""
    if len(arrays) == 1:
        return arrays[0]
    shapes = {a.shape[:-1] for a in arrays}
    if len(shapes) > 1:
        sizes = ", ".join(f"{n}: {a.shape[1:-1] or 'pooled'}" for n, a in zip(names, arrays))
        raise DataError(f"cannot join the features of {' + '.join(names)} ({sizes}): grids are joined cell by "
                        "cell, so every part needs the same grid (e.g. efficientnet-lite0-288 beside "
                        "efficientnet-lite2-260, both 9 x 9), or use pooled input")
    return np.concatenate([np.asarray(a) for a in arrays], axis=-1)


class _Features(torch.nn.Module):
    """The frozen network up to ``cut`` (the trunk) and on to the final 1280-channel map."""

    def __init__(self, net: torch.nn.Module, cut: int):
        super().__init__()
        self.net, self.cut = net, cut

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.net
        x = n._swish(n._bn0(n._conv_stem(x)))
        for block in n._blocks[: self.cut]:
            x = block(x)
        trunk = x
        for block in n._blocks[self.cut:]:
            x = block(x)
        return trunk, n._swish(n._bn1(n._conv_head(x)))


def load_backbone(trace_batch: int = 2, resolution: int = 224,
                  backbone: str = "efficientnet-lite0") -> torch.nn.Module:
    """The pretrained EfficientNet-Lite, traced, frozen and channels-last; returns (trunk, final map).

    Tracing + freezing (BN folding) and channels-last give ~5x the eager throughput on CPU.
    """
    model = _Features(efficientnet(backbone), BACKBONES[backbone][1])
    model = model.eval().to(memory_format=torch.channels_last)
    example = torch.zeros(trace_batch, 3, resolution, resolution).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        return torch.jit.freeze(torch.jit.trace(model, example))


check_runtime = partial(onnx_runtime.check_runtime, what="feature")


def load_network(spec: ExtractorSpec, runtime: str, folder: str | Path):
    """The feature network on ``runtime``: the TorchScript module, or the ONNX Runtime session of its
    export, made once as ``<folder>/<backbone>-<resolution>.onnx``."""
    check_runtime(runtime)
    if runtime == "torch":
        return load_backbone(resolution=spec.resolution, backbone=spec.backbone)
    path = Path(folder) / f"{spec.backbone}-{spec.resolution}.onnx"
    if not path.is_file():
        onnx_runtime.export(_Features(efficientnet(spec.backbone), spec.trunk_cut), spec.resolution, path)
    return onnx_runtime.OnnxNetwork(path, torch.get_num_threads())


def network_maps(x: np.ndarray, network) -> tuple[torch.Tensor, torch.Tensor]:
    """Trunk activations (B, C, g, g) and grid features (B, g*g, 1280) of preprocessed images
    (B, 3, R, R), the grid row-major (pooled = its mean), from either runtime's network."""
    if isinstance(network, torch.nn.Module):
        with torch.no_grad():
            trunk, fmap = network(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))
    else:
        trunk, fmap = network(x)
    return trunk.float().contiguous(), fmap.float().flatten(2).transpose(1, 2)


def backbone_maps(images: list, backbone, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``network_maps`` of PIL images."""
    return network_maps(np.stack([to_tensor_array(im, resolution) for im in images]), backbone)


def image_features(images: list, backbone, resolution: int) -> torch.Tensor:
    """Grid features (B, g*g, C) of PIL images, row-major over the grid (pooled = their mean), from
    either runtime's network (``load_network``)."""
    return backbone_maps(images, backbone, resolution)[1]


def joined_image_features(images: list, networks: list[tuple], regions: bool) -> torch.Tensor:
    """``image_features`` of every part of a joined extractor (``networks``: (network, spec) pairs,
    in order), side by side: the grids (``regions``) or their means, as the cache stores them."""
    grids = [image_features(images, net, spec.resolution) for net, spec in networks]
    if regions:
        return torch.from_numpy(join_features([g.numpy() for g in grids], [spec.name for _, spec in networks]))
    return torch.cat([g.mean(1) for g in grids], dim=-1)


def extract_parts(split: Split, folder_of, extractor: str, kind: str, batch_size: int = 32,
                  progress: bool = True, on_bad_input: str = "fail",
                  runtime: str | None = None) -> tuple[list[Path], list[dict], list[dict]]:
    """Extract (or reuse) ``split``'s features for every part of ``extractor``, part ``p`` under
    ``folder_of(p)``. Returns the folders holding ``kind`` ("grid", "pooled" or "trunk") for each
    part, in order, the images any part left out (``skipped_images``) and each part's stats."""
    parts = extractor_parts(extractor)
    if kind == "trunk" and len(parts) > 1:
        raise ValueError(f"{extractor!r} joins several extractors; cached trunk activations (fine-tuning "
                         "the CNN's tail) come from one network: name one extractor")
    folders, skipped, stats = [], {}, []
    for part in parts:
        root = Path(folder_of(part.name))
        stats.append({"extractor": part.name,
                      **extract_split(split, root, part.name, batch_size, progress, on_bad_input, runtime)})
        grid_dir, pooled_dir = feature_dirs(root)
        folders.append({"grid": grid_dir, "pooled": pooled_dir, "trunk": trunk_dir(root)}[kind])
        skipped.update((r["index"], r) for r in skipped_images(root, split.name))
    return folders, [skipped[i] for i in sorted(skipped)], stats


def feature_dirs(out: Path) -> tuple[Path, Path]:
    return out / "grid", out / "pooled"


def trunk_dir(out: Path) -> Path:
    return Path(out) / "trunk"


def is_complete(out: Path, split: str) -> bool:
    return all((d / f"{split}_ims.npy").is_file() for d in (*feature_dirs(out), trunk_dir(out)))


def _write_text(path: Path, lines: list[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def skipped_images(out: str | Path, split: str) -> list[dict]:
    """Images left out when ``split``'s features were extracted with ``on_bad_input="skip"``."""
    path = Path(out) / f"{split}.skipped.json"
    return json.loads(path.read_text()) if path.is_file() else []


def folder_runtime(out: Path) -> str | None:
    """The runtime the features under ``out`` were extracted with (torch for a cache from before
    runtimes were recorded), or None for a folder without features."""
    info = Path(out) / "extractor.json"
    return json.loads(info.read_text()).get("runtime", "torch") if info.is_file() else None


def _key(split: Split, extractor: str, runtime: str) -> str:
    # torch's is the key written before there were runtimes, so those caches stay valid
    return image_key(split, extractor) if runtime == "torch" else image_key(split, extractor, runtime)


def _load_batch(split: Split, idx: range, resolution: int, on_bad_input: str) -> tuple[np.ndarray, list, list]:
    """A batch's preprocessed images (B, 3, R, R), the positions of unreadable ones (black
    stand-ins, with ``on_bad_input="skip"``) and their skipped-image records."""
    arrays, bad, skipped = [], [], []
    for i in idx:
        try:
            im = split.load_image(i)
        except DataError as e:
            if on_bad_input == "fail":
                raise
            im = Image.new("RGB", (resolution, resolution))
            bad.append(len(arrays))
            skipped.append({"index": i, "id": split.image_ids[i], "reason": str(e)})
        arrays.append(to_tensor_array(im, resolution))
    return np.stack(arrays), bad, skipped


def _legacy_match(out: Path, split: Split, key: str) -> bool:
    """A cache written before content keys: accept it when its stored image ids are the split's,
    in order (and record the key, so the next check is exact)."""
    from xmr.features.fingerprint import key_file

    ids_file = feature_dirs(out)[1] / f"{split.name}_ids.txt"
    if key_file(out / split.name).is_file() or not ids_file.is_file():
        return False
    if ids_file.read_text(encoding="utf-8").splitlines() != list(split.image_ids):
        return False
    write_key(out / split.name, key, images=split.n_images, legacy=True)
    return True


def extract_split(split: Split, out: str | Path, extractor: str = "efficientnet-lite0-224",
                  batch_size: int = 32, progress: bool = True, on_bad_input: str = "fail",
                  runtime: str | None = None) -> dict:
    """Extract (or resume, or reuse) the features of one split. Returns throughput stats.

    ``runtime`` (``RUNTIMES``) runs the network; None: the one ``out`` was extracted with, for a
    new folder ``DEFAULT_RUNTIME``. A split cached by the other runtime is extracted again (said on
    stderr).

    An unreadable image (missing, truncated, corrupt, too large) stops the extraction with a
    DataError naming the file (``on_bad_input="fail"``), or (``"skip"``) gets zero features and is
    listed in ``{split}.skipped.json`` with the reason, for readers to leave out.
    """
    if on_bad_input not in ("fail", "skip"):
        raise ValueError(f"on_bad_input must be 'fail' or 'skip', not {on_bad_input!r}")
    spec = ExtractorSpec.parse(extractor)
    out = Path(out)
    made_with = folder_runtime(out)
    runtime = runtime or made_with or DEFAULT_RUNTIME
    check_runtime(runtime)
    grid_dir, pooled_dir = feature_dirs(out)
    dirs = (grid_dir, pooled_dir, trunk_dir(out))
    name = split.name
    key = _key(split, extractor, runtime)
    if is_complete(out, name):
        # a cache without a key was made with the folder's runtime (torch's, before runtimes)
        if matches(out / name, key) or (runtime == made_with and _legacy_match(out, split, key)):
            return {"split": name, "images": split.n_images, "reused": True, "runtime": runtime,
                    "skipped": len(skipped_images(out, name))}
        other = [r for r in RUNTIMES if r != runtime and matches(out / name, _key(split, extractor, r))]
        if other:
            print(f"{out / name}: cached features were extracted with the {other[0]} runtime; extracting "
                  f"them again with {runtime}", file=sys.stderr)
        else:
            stale(out / name, "features")  # the split changed since: extract again
        for d in dirs:
            (d / f"{name}_ims.npy").unlink(missing_ok=True)
        (out / f"{name}.skipped.json").unlink(missing_ok=True)
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    n, r = split.n_images, spec.grid * spec.grid
    grid_tmp, pooled_tmp, trunk_tmp = (d / f"{name}_ims.npy.partial" for d in dirs)
    state_file = out / f"{name}.progress.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    resume = (state.get("n") == n and state.get("extractor") == extractor and state.get("key") == key
              and grid_tmp.is_file())
    mode = "r+" if resume else "w+"
    grid = np.lib.format.open_memmap(grid_tmp, mode=mode, dtype=np.float16, shape=(n, r, FEATURE_DIM))
    pooled = np.lib.format.open_memmap(pooled_tmp, mode=mode, dtype=np.float16, shape=(n, FEATURE_DIM))
    trunk = np.lib.format.open_memmap(trunk_tmp, mode=mode, dtype=np.float16, shape=(n, *spec.trunk_shape))
    start = state.get("done", 0) if resume else 0
    skipped = state.get("skipped", []) if resume else []

    network = load_network(spec, runtime, out)
    batches = [range(s, min(n, s + batch_size)) for s in range(start, n, batch_size)]
    t0, bar = time.perf_counter(), tqdm(total=n, initial=start, desc=f"features {name}", unit="img",
                                        disable=not progress)
    with ThreadPoolExecutor(1) as worker:
        # the next batch is decoded while the network runs on this one (PIL and numpy release the GIL)
        def load(k):
            return worker.submit(_load_batch, split, batches[k], spec.resolution, on_bad_input)

        pending = load(0) if batches else None
        for k, idx in enumerate(batches):
            x, bad, bad_records = pending.result()
            if k + 1 < len(batches):
                pending = load(k + 1)
            skipped += bad_records
            maps, regions = network_maps(x, network)
            maps[bad], regions[bad] = 0.0, 0.0
            s = idx.start
            trunk[s: s + len(idx)] = maps.numpy().astype(np.float16)
            grid[s: s + len(idx)] = regions.numpy().astype(np.float16)
            pooled[s: s + len(idx)] = regions.mean(1).numpy().astype(np.float16)
            for m in (trunk, grid, pooled):
                m.flush()
            state = {"n": n, "extractor": extractor, "key": key, "done": s + len(idx), "skipped": skipped}
            state_file.write_text(json.dumps(state))
            bar.update(len(idx))
    bar.close()
    seconds = time.perf_counter() - t0
    del grid, pooled, trunk
    for d, tmp in zip(dirs, (grid_tmp, pooled_tmp, trunk_tmp)):
        _write_text(d / f"{name}_caps.txt", split.captions)
        _write_text(d / f"{name}_ids.txt", split.image_ids)
        os.replace(tmp, d / f"{name}_ims.npy")
    if skipped:
        (out / f"{name}.skipped.json").write_text(json.dumps(skipped, indent=1))
    else:
        (out / f"{name}.skipped.json").unlink(missing_ok=True)
    write_key(out / name, key, images=n, extractor=extractor, runtime=runtime)
    state_file.unlink(missing_ok=True)
    # Shared by every split under ``out``: processes extracting their shards of a collection at once
    # each write it, so through a per-process name and an atomic rename (the contents are equal).
    tmp = out / f"extractor.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"extractor": extractor, "feature_dim": FEATURE_DIM, "grid": spec.grid,
                               "trunk_cut": spec.trunk_cut, "trunk_shape": list(spec.trunk_shape), "runtime": runtime}))
    os.replace(tmp, out / "extractor.json")
    done = n - start
    return {"split": name, "images": done, "seconds": seconds, "images_per_s": done / max(seconds, 1e-9),
            "reused": False, "runtime": runtime, "skipped": len(skipped)}
