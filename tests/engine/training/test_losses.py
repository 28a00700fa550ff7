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


# ---- the other background objectives (issue 23), on the same 2×2 case ------------------------------


def test_relative_margin_exact_and_gradient():
    z, head, y = _case()
    mask = losses.background_mask(z, head, y, 0.6)  # background: (0,3), (1,1), (0,0); foreground: (3,0)
    loss, _ = losses.rel_lff_from_mask(z, mask, 0.5)
    # μ = 0.5 × mean foreground norm = 0.5 × 3 = 1.5: only (0,3) is above it, by 1.5; mean over 3 locations
    assert loss.item() == pytest.approx(1.5 / 3)
    loss.backward()
    g = z.grad[0]
    assert g[:, 0, 1].tolist() == pytest.approx([0.0, 1 / 3])
    assert g[:, 0, 0].tolist() == [0.0, 0.0]  # the reference (foreground) gets no gradient: stop-gradient
    assert g[:, 1, 0].abs().sum() == 0 and g[:, 1, 1].abs().sum() == 0  # under the margin


def test_relative_margin_skips_an_image_without_foreground():
    z, head, y = _case()
    mask = losses.background_mask(z, head, y, 0.99)  # every location is background
    assert mask.all() and not losses.rel_mask(mask).any()
    loss, _ = losses.rel_lff_from_mask(z, mask, 0.5)
    loss.backward()
    assert loss.item() == 0.0 and z.grad.abs().sum() == 0


def test_energy_bounded_exact_and_gradient():
    """Liu et al.'s squared hinges: E = −logsumexp; ID image E(f(z̄)) above m_in and background location
    E(W z_j + b) below m_out are penalised (their code: relu(E_in − m_in)² + relu(m_out − E_out)², means)."""
    z, head, y = _case()
    logits = head(z.mean(dim=(2, 3)))  # z̄ = (1, 1): logits (1, 1)
    loc = losses.location_logits(z, head)
    logits.retain_grad()
    loc.retain_grad()
    mask = losses.background_mask(z, head, y, 0.1)  # only (0, 3)
    loss, e_in, e_loc = losses.energy_bounded(logits, loc, mask, m_in=-2.0, m_out=-1.0)
    e_id = -(1 + math.log(2))
    e_bg = -(3 + math.log(1 + math.exp(-3)))
    assert e_in.tolist() == pytest.approx([e_id]) and e_loc[0, 0, 1].item() == pytest.approx(e_bg)
    assert loss.item() == pytest.approx((e_id + 2) ** 2 + (-1 - e_bg) ** 2, rel=1e-6)
    loss.backward()
    # dL/dlogit_k = 2 (E − m_in) · (−softmax_k); softmax of (1, 1) is (1/2, 1/2)
    assert logits.grad[0].tolist() == pytest.approx([-(e_id + 2)] * 2)
    p = torch.tensor([0.0, 3.0]).softmax(0)
    assert loc.grad[0, :, 0, 1].tolist() == pytest.approx((2 * (-1 - e_bg) * p).tolist())
    assert loc.grad[0, :, 0, 0].abs().sum() == 0  # foreground locations take no part


def test_energy_bounded_margins_met_give_zero():
    z, head, y = _case()
    mask = losses.background_mask(z, head, y, 0.1)
    loss, _, _ = losses.energy_bounded(head(z.mean(dim=(2, 3))), losses.location_logits(z, head), mask,
                                       m_in=0.0, m_out=-5.0)
    assert loss.item() == 0.0


def test_bg_head_bce_exact_and_gradient():
    """BCE of g(v) = w·v + b: pooled feature labelled ID (1), background locations OOD (0), each set's mean."""
    z, head, y = _case()
    bg = nn.Linear(2, 1)
    with torch.no_grad():
        bg.weight.copy_(torch.tensor([[1.0, -1.0]]))
        bg.bias.zero_()
    mask = losses.background_mask(z, head, y, 0.1)  # only (0, 3): g = −3
    loss, g_in, g_loc = losses.bg_head_bce(z, bg, mask)
    assert g_in.tolist() == [0.0] and g_loc[0, 0, 1].item() == -3.0
    assert loss.item() == pytest.approx(math.log(2) + math.log(1 + math.exp(-3)), rel=1e-6)
    loss.backward()
    s3 = 1 / (1 + math.exp(3))  # σ(−3)
    # ∂/∂w: −σ(−g_in)·z̄ + σ(g_loc)·z_j = −0.5·(1, 1) + σ(−3)·(0, 3)
    assert bg.weight.grad[0].tolist() == pytest.approx([-0.5, -0.5 + 3 * s3])
    assert bg.bias.grad.tolist() == pytest.approx([-0.5 + s3])
    # ∂/∂z_j: the pooled term spreads −σ(0)·w/4 over every location; the background one adds σ(−3)·w
    assert z.grad[0, :, 0, 0].tolist() == pytest.approx([-0.125, 0.125])
    assert z.grad[0, :, 0, 1].tolist() == pytest.approx([s3 - 0.125, 0.125 - s3])
    assert head.weight.grad is None  # the mask carries no gradient
