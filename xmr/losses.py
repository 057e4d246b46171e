"""Ranking losses shared by the models (training logic lives in train.py, not here)."""
from __future__ import annotations

import torch


def triplet_ranking_loss(scores: torch.Tensor, margin: float = 0.2, max_violation: bool = True,
                         positives: torch.Tensor | None = None) -> torch.Tensor:
    """Bidirectional hinge triplet loss on a (B, B) score matrix whose diagonal holds the positives.

    VSE++ (Faghri et al. 2018), Eq. 4 (sum of violations, "SH") and Eq. 5 (max of violations,
    "MH", hardest negative in the batch), summed over both directions:
    ``sum_i [m - s(i,i) + s(i,c')]_+ + [m - s(i,i) + s(i',i)]_+``. ``positives`` (B, B bool)
    marks further pairs that must not serve as negatives (e.g. two captions of one image).
    Returns the sum over the batch, as the VSE++ code does.
    """
    b = scores.size(0)
    diag = scores.diagonal().view(b, 1)
    cost_c = (margin + scores - diag).clamp(min=0)  # image i vs negative captions (row-wise)
    cost_i = (margin + scores - diag.t()).clamp(min=0)  # caption j vs negative images (column-wise)
    mask = torch.eye(b, dtype=torch.bool, device=scores.device)
    if positives is not None:
        mask = mask | positives
    cost_c = cost_c.masked_fill(mask, 0)
    cost_i = cost_i.masked_fill(mask, 0)
    if max_violation:
        return cost_c.max(1)[0].sum() + cost_i.max(0)[0].sum()
    return cost_c.sum() + cost_i.sum()
