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


class ViolationWarmup:
    """VSE++'s warm-up of the triplet loss: the sum of violations (Eq. 4) for the first
    ``warmup_epochs`` epochs, the hardest negative (Eq. 5) from then on; ``max_violation`` is
    what ``triplet_ranking_loss`` takes. Models call ``on_epoch_start`` from theirs."""

    def __init__(self, warmup_epochs: int = 0):
        self.warmup_epochs = warmup_epochs
        self.max_violation = warmup_epochs == 0

    def on_epoch_start(self, epoch: int) -> None:
        self.max_violation = epoch >= self.warmup_epochs


class CenterLoss(torch.nn.Module):
    """Center loss (Wen et al., ECCV 2016), the supervision signal of Revisiting (Sec. 3.3, Eq. 1).

    ``L_C = 1/2 * mean_i ||x_i - c_{y_i}||^2`` over the batch, i.e. Eq. 1 (a sum over the m
    samples) divided by m. Mean, as Wen et al.'s own Caffe layer does (it divides by the batch
    size): the weight lambda then does not depend on the batch size, which changes with the input
    configuration (Revisiting's config-standard feeds 1 image + 5 texts per class, config 2
    2 + 10). The gradient reaches ``x`` only: ``dL_C/dx_i = (x_i - c_{y_i}) / m``.

    The centres are a buffer (``num_classes, dim``, zero at the start), not parameters: they move
    by Wen et al.'s rule (their Eq. 4 and Algorithm 1), applied by ``update_centers(x, y)``:
    ``c_j <- c_j - alpha * dc_j``, ``dc_j = sum_i [y_i = j] (c_j - x_i) / (1 + sum_i [y_i = j])``;
    classes absent from the batch stay put. ``forward`` never changes the centres (evaluating the
    loss twice, or in eval mode, is harmless); call ``update_centers`` once per training step with
    the same features, after computing the loss::

        loss = F.cross_entropy(classifier(x), y) + lam * center(x, y)   # L = L_S + lambda L_C
        loss.backward(); opt.step(); center.update_centers(x, y)

    The softmax term L_S is the model's own ``nn.Linear(dim, num_classes)`` + cross-entropy on
    the same features (Wen et al. use lambda = 0.003, alpha = 0.5). In Revisiting the class of a
    sample is its image: an image and its encoded captions share the id of that image within the
    training split, so ``num_classes`` is the number of training images (6000 for Flickr8k,
    about 29k for Flickr30k).
    The update is vectorised over the batch (``index_add_`` over the classes present), with no
    Python loop over samples or classes. Under DDP, gather ``x`` and ``y`` from all ranks before
    ``update_centers`` so that every rank moves its centres alike.
    """

    def __init__(self, num_classes: int, dim: int, alpha: float = 0.5):
        super().__init__()
        if num_classes < 1 or dim < 1:
            raise ValueError("num_classes and dim must be >= 1")
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.num_classes, self.dim, self.alpha = num_classes, dim, alpha
        self.register_buffer("centers", torch.zeros(num_classes, dim))

    def _check(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.dim() != 2 or x.size(1) != self.dim or y.shape != (x.size(0),):
            raise ValueError(f"expected x (B, {self.dim}) and y (B,), got {tuple(x.shape)} and {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"class ids must lie in [0, {self.num_classes})")

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``1/2 mean_i ||x_i - c_{y_i}||^2`` (a scalar; 0 for an empty batch)."""
        self._check(x, y)
        if x.size(0) == 0:
            return x.sum() * 0
        diff = x - self.centers[y].to(x.dtype)
        return 0.5 * diff.pow(2).sum(1).mean()

    @torch.no_grad()
    def update_centers(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One step of Wen et al.'s centre update with the batch's features ``x`` and classes ``y``."""
        self._check(x, y)
        if x.size(0) == 0:
            return
        classes, inverse = torch.unique(y, return_inverse=True)
        x = x.detach().to(self.centers.dtype)
        sums = torch.zeros(len(classes), self.dim, dtype=x.dtype, device=x.device).index_add_(0, inverse, x)
        counts = torch.bincount(inverse, minlength=len(classes)).to(x.dtype).unsqueeze(1)
        c = self.centers[classes]
        delta = (counts * c - sums) / (1 + counts)
        self.centers[classes] = c - self.alpha * delta
