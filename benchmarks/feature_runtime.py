"""Feature extraction on the two runtimes side by side: TorchScript (torch) vs ONNX Runtime (onnx).

On the same Flickr8k test images in the same process: the network alone (batch 32), the decode
and resize path alone (today's preprocessing formula and the current one; PIL's JPEG draft
decoding on large JPEGs made from the same images), and the whole pipeline from JPEG file to
stored fp16 feature (``extract_split`` into temporary folders), with the feature differences
between the runtimes. Runs alternate between the runtimes so that a load change from other jobs
hits both. Writes results/feature-runtime.json.
    .venv/bin/python benchmarks/feature_runtime.py [--images 200] [--extractor efficientnet-lite0-224]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from xmr.data import open_split
from xmr.data.images import load_rgb, to_tensor_array
from xmr.features.image import RUNTIMES, ExtractorSpec, extract_split, load_network, network_maps
from xmr.interface import IMAGENET_MEAN, IMAGENET_STD
from xmr.machine import machine_info


def reference_to_tensor_array(im: Image.Image, size: int) -> np.ndarray:
    """``to_tensor_array`` as it was before this benchmark's change, to time it beside the new one."""
    im = im.resize((size, size), Image.BICUBIC)
    x = np.asarray(im, dtype=np.float32) / 255.0
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def draft_rgb(path: Path, size: int) -> Image.Image:
    """A JPEG decoded at the smallest DCT scale (1/2, 1/4, 1/8) still at least ``size`` each way."""
    with Image.open(path) as im:
        im.draft("RGB", (size, size))
        return im.convert("RGB")


def rate(fn, items, repeats: int = 2) -> float:
    """Items per second of ``fn`` over ``items``, the best of ``repeats`` passes."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - t0)
    return len(items) / best


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="flickr8k")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--extractor", default="efficientnet-lite0-224")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="results/feature-runtime.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    spec = ExtractorSpec.parse(args.extractor)
    size = spec.resolution
    split = open_split(args.data, "test").rows(slice(0, args.images))
    paths = [Path(q) for q in split.image_paths]
    load_before = os.getloadavg()
    result = {"command": "python benchmarks/feature_runtime.py", "machine": machine_info(),
              "extractor": args.extractor, "images": split.n_images,
              "image_sizes": sorted({f"{w}x{h}" for w, h in (Image.open(q).size for q in paths)})}

    # Decode and resize alone, single-threaded (the extraction's worker thread runs exactly this).
    pil = [load_rgb(q) for q in paths]
    decode = {"decode (load_rgb)": rate(load_rgb, paths),
              "resize+normalise, before": rate(lambda im: reference_to_tensor_array(im, size), pil),
              "resize+normalise, now": rate(lambda im: to_tensor_array(im, size), pil),
              "decode+resize+normalise, before": rate(lambda q: reference_to_tensor_array(load_rgb(q), size), paths),
              "decode+resize+normalise, now": rate(lambda q: to_tensor_array(load_rgb(q), size), paths)}
    diff = max(float(np.abs(reference_to_tensor_array(im, size) - to_tensor_array(im, size)).max()) for im in pil)
    result["decode_images_per_s"] = {k: round(v, 1) for k, v in decode.items()}
    result["preprocess_max_abs_diff_before_vs_now"] = diff

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        networks = {r: load_network(spec, r, tmp) for r in RUNTIMES}

        # JPEG draft decoding: these images are small, so on large JPEGs made from them (4x each way)
        big = []
        for i, im in enumerate(pil[:32]):
            big.append(tmp / f"big{i}.jpg")
            im.resize((im.width * 4, im.height * 4), Image.BICUBIC).save(big[-1], quality=90)
        full = np.stack([to_tensor_array(load_rgb(q), size) for q in big])
        drafted = np.stack([to_tensor_array(draft_rgb(q, size), size) for q in big])
        pooled = [network_maps(x, networks["onnx"])[1].mean(1).numpy() for x in (full, drafted)]
        result["draft_on_large_jpegs"] = {
            "size": f"{pil[0].width * 4}x{pil[0].height * 4}", "images": len(big),
            "full_decode+resize_images_per_s": round(rate(lambda q: to_tensor_array(load_rgb(q), size), big), 1),
            "draft_decode+resize_images_per_s": round(rate(lambda q: to_tensor_array(draft_rgb(q, size), size), big), 1),
            "pooled_max_abs_diff": float(np.abs(pooled[0] - pooled[1]).max()),
            "pooled_min_cosine": float(cosines(*pooled).min())}
        same = all(draft_rgb(q, size).size == Image.open(q).size for q in paths)
        result["draft_on_these_images"] = "no-op (no image is 2x the resolution each way)" if same else "reduces"

        # The network alone, batch 32, alternating runtimes.
        x = np.stack([to_tensor_array(im, size) for im in pil[:32]])
        net = {r: [] for r in RUNTIMES}
        maps = {r: network_maps(x, networks[r]) for r in RUNTIMES}  # warm-up, and the fp32 outputs
        for _ in range(3):
            for r in RUNTIMES:
                t0 = time.perf_counter()
                network_maps(x, networks[r])
                net[r].append(len(x) / (time.perf_counter() - t0))
        result["network_images_per_s"] = {r: {"best": round(max(v), 1), "median": round(float(np.median(v)), 1)}
                                          for r, v in net.items()}
        grid32 = {r: maps[r][1].numpy() for r in RUNTIMES}
        result["network_fp32_max_abs_diff"] = {
            "trunk": float((maps["torch"][0] - maps["onnx"][0]).abs().max()),
            "grid": float(np.abs(grid32["torch"] - grid32["onnx"]).max()),
            "pooled": float(np.abs(grid32["torch"].mean(1) - grid32["onnx"].mean(1)).max())}

        # The whole pipeline, JPEG file to stored feature, alternating runtimes (network load excluded:
        # extract_split times its batch loop).
        whole = {r: [] for r in RUNTIMES}
        for rep in range(2):
            for r in RUNTIMES:
                stats = extract_split(split, tmp / f"{r}{rep}", args.extractor, progress=False, runtime=r)
                whole[r].append(stats["images_per_s"])
        result["pipeline_images_per_s"] = {r: {"best": round(max(v), 1), "runs": [round(s, 1) for s in v]}
                                           for r, v in whole.items()}
        result["pipeline_speedup_best"] = round(max(whole["onnx"]) / max(whole["torch"]), 2)
        stored = {r: {k: np.load(tmp / f"{r}0" / k / f"{split.name}_ims.npy").astype(np.float32)
                      for k in ("pooled", "grid", "trunk")} for r in RUNTIMES}
        result["stored_fp16_diff"] = {
            **{f"{k}_max_abs": float(np.abs(stored["torch"][k] - stored["onnx"][k]).max())
               for k in ("pooled", "grid", "trunk")},
            "pooled_min_cosine": float(cosines(stored["torch"]["pooled"], stored["onnx"]["pooled"]).min()),
            "pooled_equal_fraction": float((stored["torch"]["pooled"] == stored["onnx"]["pooled"]).mean())}
    result["load_average_before_after"] = [round(v, 2) for v in (*load_before[:1], os.getloadavg()[0])]
    print(json.dumps(result, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
