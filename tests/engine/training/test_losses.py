"""L_LFF (paper Eqs. 4–6) on hand-made cases with values computed by hand."""

import math

import pytest
import torch
from torch import nn

from lbfood.engine import models
from lbfood.engine.training import losses


def _case():
    # One image, C = 2 channels, a 2×2 map; the head is the identity (logit k = channel k).
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
        head.bias.zero_()
    # Locations (row-major): (3, 0), (0, 3), (1, 1), (0, 0).
    z = torch.tensor([[[3.0, 0.0], [1.0, 0.0]], [[0.0, 3.0], [1.0, 0.0]]]).unsqueeze(0).requires_grad_(True)
    y = torch.tensor([0])
    return z, head, y


def test_mask_exact():
    z, head, y = _case()
    # p_j(y=0): e^3/(e^3+1) = 0.953, 1/(1+e^3) = 0.047, 0.5, 0.5
    assert losses.background_mask(z, head, y, 0.1).tolist() == [[[False, True], [False, False]]]
    assert losses.background_mask(z, head, y, 0.6).tolist() == [[[False, True], [True, True]]]
    assert not losses.background_mask(z, head, y, 0.6).requires_grad


def test_loss_exact_and_gradient():
    z, head, y = _case()
    loss = losses.lff_loss(z, head, y, delta=0.1, mu=1.0)
    assert loss.item() == pytest.approx(2.0)  # only (0, 3): max(3 - 1, 0), mean over 1 location
    loss = losses.lff_loss(z, head, y, delta=0.6, mu=1.0)
    expected = (2.0 + (math.sqrt(2) - 1) + 0.0) / 3  # (0,3), (1,1), (0,0)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    g = z.grad[0]
    # d/dz of ‖z‖/3 at (0, 3) is (0, 1)/3; at (1, 1) it is (1, 1)/(√2·3); (0, 0) is under the margin.
    assert g[:, 0, 1].tolist() == pytest.approx([0.0, 1 / 3])
    assert g[:, 1, 0].tolist() == pytest.approx([1 / (3 * math.sqrt(2))] * 2)
    assert g[:, 0, 0].tolist() == [0.0, 0.0]  # foreground gets no L_LFF gradient
    assert head.weight.grad is None  # the mask carries no gradient to the head


def test_empty_mask_is_zero_with_finite_gradient():
    z, head, y = _case()
    loss = losses.lff_loss(z, head, y, delta=1e-9, mu=1.0)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() == 0


def test_head_of_gap_is_mean_of_location_logits():
    torch.manual_seed(0)
    m = models.build("resnet18", num_classes=5, width=0.125).eval()
    x = torch.randn(3, 3, 32, 32)
    z = m.forward_features(x)
    per_loc = losses.location_logits(z, m.head).mean(dim=(2, 3))
    torch.testing.assert_close(per_loc, m(x), rtol=1e-5, atol=1e-5)


def test_optimisation_lowers_background_norm():
    torch.manual_seed(0)
    m = models.build("resnet18", num_classes=4, width=0.125).eval()  # fixed BN statistics
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 4, (16,))
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)

    def bg_norm():
        with torch.no_grad():
            z = m.forward_features(x)
            mask = losses.background_mask(z, m.head, y, 0.25)
            return z.norm(dim=1)[mask].mean().item()

    before = bg_norm()
    for _ in range(5):
        loss = losses.lff_loss(m.forward_features(x), m.head, y, delta=0.25, mu=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert bg_norm() < 0.8 * before
