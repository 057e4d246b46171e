"""CenterLoss (Wen et al. 2016; Revisiting Eq. 1) against hand computation and the closed-form update."""
from __future__ import annotations

import pytest
import torch

from xmr.losses import CenterLoss


def tiny() -> tuple[CenterLoss, torch.Tensor, torch.Tensor]:
    cl = CenterLoss(num_classes=3, dim=2, alpha=0.5)
    cl.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]))
    x = torch.tensor([[1.0, 2.0],    # class 0: ||(1,2)-(0,0)||^2 = 5
                      [3.0, 0.0],    # class 0: ||(3,0)-(0,0)||^2 = 9
                      [1.0, 3.0]])   # class 1: ||(1,3)-(1,1)||^2 = 4
    y = torch.tensor([0, 0, 1])
    return cl, x, y


def test_loss_matches_hand_computation():
    cl, x, y = tiny()
    # 1/2 * mean(5, 9, 4) = 1/2 * 6 = 3
    assert cl(x, y).item() == pytest.approx(3.0)


def test_gradient_reaches_features_not_centres():
    cl, x, y = tiny()
    x.requires_grad_(True)
    cl(x, y).backward()
    # d/dx_i of 1/2 mean ||x_i - c||^2 = (x_i - c_{y_i}) / m, m = 3
    expected = (x.detach() - cl.centers[y]) / 3
    assert torch.allclose(x.grad, expected)
    assert not cl.centers.requires_grad and list(cl.parameters()) == []


def test_forward_does_not_move_centres():
    cl, x, y = tiny()
    before = cl.centers.clone()
    cl(x, y)
    cl.eval()
    cl(x, y)
    assert torch.equal(cl.centers, before)


def test_update_is_the_closed_form_rule():
    cl, x, y = tiny()
    cl.update_centers(x, y)
    # class 0: n=2, dc = (2*(0,0) - ((1,2)+(3,0))) / 3 = (-4/3, -2/3); c <- c - 0.5 dc = (2/3, 1/3)
    # class 1: n=1, dc = ((1,1) - (1,3)) / 2 = (0, -1);               c <- (1,1) + (0, 0.5) = (1, 1.5)
    # class 2: absent, unchanged
    expected = torch.tensor([[2 / 3, 1 / 3], [1.0, 1.5], [5.0, 5.0]])
    assert torch.allclose(cl.centers, expected)


def test_centres_move_toward_their_members():
    cl, x, y = tiny()
    def dist(c):
        return torch.stack([(x[y == j] - c[j]).norm(dim=1).sum() for j in (0, 1)])
    before = dist(cl.centers.clone())
    cl.update_centers(x, y)
    assert (dist(cl.centers) < before).all()
    # repeated updates with the same batch converge to the members' mean
    for _ in range(200):
        cl.update_centers(x, y)
    assert torch.allclose(cl.centers[0], x[:2].mean(0), atol=1e-5)
    assert torch.allclose(cl.centers[1], x[2], atol=1e-5)


def test_absent_classes_do_not_move():
    cl = CenterLoss(10, 4)
    cl.centers.copy_(torch.randn(10, 4, generator=torch.Generator().manual_seed(0)))
    before = cl.centers.clone()
    y = torch.tensor([2, 7, 7])
    cl.update_centers(torch.randn(3, 4), y)
    absent = torch.ones(10, dtype=torch.bool)
    absent[y] = False
    assert torch.equal(cl.centers[absent], before[absent])
    assert not torch.equal(cl.centers[~absent], before[~absent])


def test_many_classes_image_and_captions_share_a_center():
    # Flickr8k-sized: 6000 training images; a batch of 45 images, each with its 5 encoded captions.
    g = torch.Generator().manual_seed(1)
    k, d, alpha = 6000, 128, 0.5
    cl = CenterLoss(k, d, alpha)
    cl.centers.copy_(torch.randn(k, d, generator=g))
    images = torch.randperm(k, generator=g)[:45]
    y = images.repeat_interleave(6)  # the image and its 5 captions: one class id
    x = torch.randn(len(y), d, generator=g)
    c0 = cl.centers.clone()
    loss = cl(x, y)
    assert loss.item() == pytest.approx(0.5 * ((x - c0[y]) ** 2).sum(1).mean().item(), rel=1e-6)
    cl.update_centers(x, y)
    expected = c0.clone()
    for j in images.tolist():  # the reference, one class at a time
        members = x[y == j]
        expected[j] = c0[j] - alpha * (len(members) * c0[j] - members.sum(0)) / (1 + len(members))
    assert torch.allclose(cl.centers, expected, atol=1e-5)
    untouched = torch.ones(k, dtype=torch.bool)
    untouched[images] = False
    assert torch.equal(cl.centers[untouched], c0[untouched])


def test_rejects_bad_labels_and_shapes():
    cl = CenterLoss(3, 2)
    with pytest.raises(ValueError):
        cl(torch.zeros(2, 2), torch.tensor([0, 3]))
    with pytest.raises(ValueError):
        cl.update_centers(torch.zeros(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        CenterLoss(3, 2, alpha=0.0)
