"""Optimiser construction from a training recipe: the one place that maps a recipe's
``optimizer`` name to a torch optimiser, shared by the training loop and by models that declare
their own optimiser set-up (JGCAR's two)."""
from __future__ import annotations

import torch


def make_optimizer(kind: str, params, recipe: dict) -> torch.optim.Optimizer:
    """``kind`` ("adam", "sgd" or "rmsprop") over ``params`` with the recipe's lr, weight decay
    and (SGD, RMSprop) momentum."""
    lr, wd = recipe["lr"], recipe["weight_decay"]
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=recipe["momentum"], weight_decay=wd)
    if kind == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=recipe["momentum"], weight_decay=wd)
    raise ValueError(f"unknown optimizer {kind!r}")
