"""Feature-extraction throughput (images/s) of EfficientNet-Lite0 on Flickr8k images, this machine.

Extracts the Flickr8k test split (1,000 JPEGs: decode, resize, normalise, CNN, write fp16) into a
temporary folder, so a warm cache does not hide the cost. Writes results/feature-throughput.json.
    .venv/bin/python benchmarks/feature_throughput.py [--extractor efficientnet-lite0-224]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from xmr.data import open_split
from xmr.features.image import extract_split
from xmr.machine import machine_info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="flickr8k")
    p.add_argument("--extractors", nargs="+", default=["efficientnet-lite0-224", "efficientnet-lite0-448"])
    p.add_argument("--out", default="results/feature-throughput.json")
    args = p.parse_args()
    torch.set_num_threads(2)
    split = open_split(args.data, "test")
    rows = []
    for extractor in args.extractors:
        with tempfile.TemporaryDirectory() as tmp:
            stats = extract_split(split, Path(tmp), extractor)
        rows.append({"extractor": extractor, **stats})
        print(json.dumps(rows[-1]))
    Path(args.out).write_text(json.dumps({"command": "python benchmarks/feature_throughput.py",
                                          "machine": machine_info(), "results": rows}, indent=1))


if __name__ == "__main__":
    main()
