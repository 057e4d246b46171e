"""triplet_ranking_loss (VSE++ Eq. 4 / Eq. 5) against hand computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xmr.losses import triplet_ranking_loss


MARGIN = 0.2

# Row i = image i, column j = caption j; the diagonal holds the matching pairs.
S = [[0.90, 0.80, 0.10],
     [0.50, 0.60, 0.75],
     [0.30, 0.20, 0.70]]
# Diagonal d = (0.9, 0.6, 0.7).
# Image->caption violations  [m + S[i,j] - d[i]]_+  (off-diagonal):
#   (0,1) 0.2+0.8-0.9 = 0.10   (0,2) 0.2+0.1-0.9 < 0 -> 0
#   (1,0) 0.2+0.5-0.6 = 0.10   (1,2) 0.2+0.75-0.6 = 0.35
#   (2,0) 0.2+0.3-0.7 < 0 -> 0 (2,1) 0.2+0.2-0.7 < 0 -> 0
# Caption->image violations  [m + S[i,j] - d[j]]_+  (off-diagonal):
#   (1,0) 0.2+0.5-0.9 < 0 -> 0 (2,0) 0.2+0.3-0.9 < 0 -> 0
#   (0,1) 0.2+0.8-0.6 = 0.40   (2,1) 0.2+0.2-0.6 < 0 -> 0
#   (0,2) 0.2+0.1-0.7 < 0 -> 0 (1,2) 0.2+0.75-0.7 = 0.25
SUM_LOSS = 0.10 + 0.10 + 0.35 + 0.40 + 0.25          # 1.20
# hardest negative per row: 0.10, 0.35, 0; per column: 0, 0.40, 0.25
MAX_LOSS = (0.10 + 0.35 + 0.0) + (0.0 + 0.40 + 0.25)  # 1.10


def scores(requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(S, dtype=torch.float64, requires_grad=requires_grad)


def test_sum_of_violations():
    loss = triplet_ranking_loss(scores(), margin=MARGIN, max_violation=False)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(SUM_LOSS, abs=1e-12)


def test_hardest_negative():
    loss = triplet_ranking_loss(scores(), margin=MARGIN, max_violation=True)
    assert loss.item() == pytest.approx(MAX_LOSS, abs=1e-12)


def test_margin_matters():
    # margin 0: only (1,2) violates image->caption (0.75 > 0.6: 0.15) and caption->image (0.75 > 0.7: 0.05),
    # and (0,1) caption->image (0.8 > 0.6: 0.2).
    loss = triplet_ranking_loss(scores(), margin=0.0, max_violation=False)
    assert loss.item() == pytest.approx(0.15 + 0.05 + 0.20, abs=1e-12)


def test_no_violation_no_loss():
    s = torch.tensor([[1.0, 0.1, 0.2], [0.0, 1.0, 0.3], [0.5, 0.4, 1.0]], dtype=torch.float64)
    for mv in (True, False):
        assert triplet_ranking_loss(s, margin=MARGIN, max_violation=mv).item() == 0.0


def test_gradients_sum_of_violations():
    s = scores(requires_grad=True)
    triplet_ranking_loss(s, margin=MARGIN, max_violation=False).backward()
    # off-diagonal: +1 per direction in which the entry violates; diagonal: -1 per violation it faces
    want = torch.tensor([[-1.0, 2.0, 0.0],
                         [1.0, -3.0, 2.0],
                         [0.0, 0.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(s.grad, want)
    # negatives with no violation in either direction get exactly zero gradient
    for i, j in [(0, 2), (2, 0), (2, 1)]:
        assert s.grad[i, j].item() == 0.0


def test_gradients_hardest_negative():
    s = scores(requires_grad=True)
    triplet_ranking_loss(s, margin=MARGIN, max_violation=True).backward()
    # rows: (0,1) and (1,2) are the hardest; row 2 has no violation.
    # columns: (0,1) for caption 1, (1,2) for caption 2; column 0 has no violation.
    want = torch.tensor([[-1.0, 2.0, 0.0],
                         [0.0, -2.0, 2.0],
                         [0.0, 0.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(s.grad, want)
    # (1,0) violates (0.1) but is not the hardest negative of its row: no gradient under max_violation
    assert s.grad[1, 0].item() == 0.0


def test_positives_are_not_negatives():
    # Mark (1,2) and (2,1) as further positives (e.g. captions of the same image).
    pos = torch.zeros(3, 3, dtype=torch.bool)
    pos[1, 2] = pos[2, 1] = True
    # sum: drop (1,2)'s 0.35 and 0.25 -> 0.10 + 0.10 + 0.40
    loss = triplet_ranking_loss(scores(), margin=MARGIN, max_violation=False, positives=pos)
    assert loss.item() == pytest.approx(0.60, abs=1e-12)
    # max: rows 0.10, 0.10 (now (1,0) is the hardest of row 1), 0; columns 0, 0.40, 0
    loss = triplet_ranking_loss(scores(), margin=MARGIN, max_violation=True, positives=pos)
    assert loss.item() == pytest.approx(0.60, abs=1e-12)


def test_positive_pair_score_does_not_matter():
    pos = torch.zeros(3, 3, dtype=torch.bool)
    pos[1, 2] = pos[2, 1] = True
    for mv in (True, False):
        base = triplet_ranking_loss(scores(), margin=MARGIN, max_violation=mv, positives=pos)
        s = scores(requires_grad=True)
        with torch.no_grad():
            s[1, 2] = 100.0  # a huge score on a marked positive must not be penalised
            s[2, 1] = 50.0
        loss = triplet_ranking_loss(s, margin=MARGIN, max_violation=mv, positives=pos)
        assert loss.item() == pytest.approx(base.item(), abs=1e-12)
        loss.backward()
        assert s.grad[1, 2].item() == 0.0 and s.grad[2, 1].item() == 0.0
        # without the mask the same scores are heavily penalised
        unmasked = triplet_ranking_loss(s.detach(), margin=MARGIN, max_violation=mv)
        assert unmasked.item() > base.item() + 50


def test_positives_without_diagonal_still_masks_diagonal():
    pos = torch.zeros(3, 3, dtype=torch.bool)
    for mv in (True, False):
        a = triplet_ranking_loss(scores(), margin=MARGIN, max_violation=mv, positives=pos)
        b = triplet_ranking_loss(scores(), margin=MARGIN, max_violation=mv)
        assert a.item() == pytest.approx(b.item(), abs=1e-12)


def _reference_loss(s: np.ndarray, margin: float, max_violation: bool, positives: np.ndarray) -> float:
    """Loop version of VSE++ Eq. 4 / 5 summed over both directions."""
    b = len(s)
    total = 0.0
    for i in range(b):  # image i as the query: negative captions c'
        v = [max(0.0, margin - s[i, i] + s[i, c]) for c in range(b) if c != i and not positives[i, c]]
        total += (max(v, default=0.0) if max_violation else sum(v))
    for c in range(b):  # caption c as the query: negative images i'
        v = [max(0.0, margin - s[c, c] + s[i, c]) for i in range(b) if i != c and not positives[i, c]]
        total += (max(v, default=0.0) if max_violation else sum(v))
    return total


@pytest.mark.parametrize("max_violation", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_random_matrices_match_loop_reference(seed, max_violation):
    rng = np.random.default_rng(seed)
    b = 8
    s = rng.uniform(-1, 1, size=(b, b))
    groups = rng.integers(0, 5, size=b)  # rows sharing a group are extra positives
    pos = (groups[:, None] == groups[None, :]) & ~np.eye(b, dtype=bool)
    want = _reference_loss(s, 0.2, max_violation, pos)
    got = triplet_ranking_loss(torch.from_numpy(s), margin=0.2, max_violation=max_violation,
                               positives=torch.from_numpy(pos))
    assert got.item() == pytest.approx(want, abs=1e-10)
