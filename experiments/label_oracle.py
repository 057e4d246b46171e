"""The pair-protocol ceiling of a model that knows only the keyword labels (CMMN's kind of model):
an oracle that ranks, for each test image, the test captions whose image has exactly its label set
first, in random order among themselves (and each caption's images likewise). Its expected R@K on
the 1K x 5K Flickr8k test split is computed in closed form: with n tied candidates of which g are
ground truth, a random order puts at least one of them in the top K with probability
1 - C(n - g, K) / C(n, K) (K < n; 1 otherwise). Writes results/label-protocol/oracle.json.

    .venv/bin/python experiments/label_oracle.py
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.special import gammaln

from xmr.data import open_split
from xmr.data.keyword_labels import keyword_labels

KS = (1, 5, 10)


def hit_probability(n: np.ndarray, g: np.ndarray, k: int) -> np.ndarray:
    """P(some of g ground-truth items among n tied ones is in a random top k)."""
    n, g = n.astype(np.float64), g.astype(np.float64)
    free = np.maximum(n - g - k + 1, 1)  # the log-gamma's argument where a miss is possible
    miss = np.where(n - g >= k, np.exp(gammaln(n - g + 1) - gammaln(free) - gammaln(n + 1)
                                       + gammaln(np.maximum(n - k + 1, 1))), 0.0)
    return np.where(k >= n, 1.0, 1.0 - miss)


def main() -> None:
    split = open_split("flickr8k", "test")
    labels = keyword_labels(split).astype(bool)
    _, group = np.unique(labels, axis=0, return_inverse=True)  # images with the same label set
    group = group.ravel()
    images_in = np.bincount(group)[group]  # per image: images sharing its label set
    per = split.captions_per_image
    # image -> text: n = captions of the same-set images, g = its own 5; text -> image: n = same-set images, g = 1
    out = {"i2t": {f"r{k}": 100 * float(hit_probability(per * images_in, np.full_like(images_in, per), k).mean())
                   for k in KS},
           "t2i": {f"r{k}": 100 * float(hit_probability(images_in, np.ones_like(images_in), k).mean())
                   for k in KS}}
    out["rsum"] = sum(out[d][f"r{k}"] for d in ("i2t", "t2i") for k in KS)
    out["label_sets"] = int(group.max() + 1)
    out["images"] = int(len(labels))
    out["unlabelled_images"] = int((~labels.any(1)).sum())
    path = Path("results/label-protocol/oracle.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
