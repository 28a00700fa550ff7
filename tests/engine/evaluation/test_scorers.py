import math

import numpy as np
import pytest
import torch
from torch import nn

from lbfood.engine import io
from lbfood.engine.errors import ConfigError
from lbfood.engine.evaluation import scorers
from lbfood.engine.evaluation.features import Features, extract
from lbfood.engine.evaluation.scorers.ash import ash_s
from lbfood.engine.evaluation.scorers.base import head_of
from lbfood.engine.evaluation.scorers.mahalanobis import class_gaussians
from lbfood.engine.evaluation.scorers.vim import principal_dim
from lbfood.engine.models import build

# Parameters that make every scorer work on a 16-image training set.
TINY = {"knn": {"k": 3}}


def _head(weight, bias=None):
    w = torch.as_tensor(weight, dtype=torch.float32)
    head = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(torch.zeros(w.shape[0]) if bias is None else torch.as_tensor(bias, dtype=torch.float32))
    return head


def _feats(features, head, labels=None, **kw):
    f = torch.as_tensor(features, dtype=torch.float32)
    with torch.no_grad():
        return Features(logits=head(f), features=f, labels=labels, **kw)


def _lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


# -- logit scorers -------------------------------------------------------------------------------------

def test_logit_scorers_hand_made():
    f = Features(logits=torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]), features=torch.zeros(2, 1))
    e = math.exp
    assert scorers.get("msp").score(f).tolist() == pytest.approx([e(3) / (e(1) + e(2) + e(3)), 1 / 3])
    assert scorers.get("maxlogit").score(f).tolist() == [3.0, 0.0]
    assert scorers.get("energy").score(f).tolist() == pytest.approx([_lse(1, 2, 3), math.log(3)])
    assert scorers.get("energy", temperature=2).score(f).tolist() == pytest.approx(
        [2 * _lse(0.5, 1, 1.5), 2 * math.log(3)])
    assert scorers.get("energy").score(f).dtype == torch.float32


def test_react_hand_made():
    head = _head(torch.eye(3))
    train = _feats([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], head)  # 50th percentile of 0..5 is 2.5
    s = scorers.get("react", percentile=50).fit(train, head)
    assert s.state["threshold"].item() == 2.5
    test = _feats([[1.0, 3.0, 5.0]], head)
    assert s.score(test).tolist() == pytest.approx([_lse(1.0, 2.5, 2.5)])


def test_dice_hand_made():
    head = _head([[1.0, -1.0], [2.0, 0.5]])
    train = _feats([[1.0, 2.0], [3.0, 2.0]], head)  # mean feature (2, 2)
    # contributions [[2, -2], [4, 1]], median 1.5: keep w[0,0] and w[1,0]
    s = scorers.get("dice", p=50).fit(train, head)
    assert s.state["weight"].tolist() == [[1.0, 0.0], [2.0, 0.0]]
    assert s.score(_feats([[1.0, 1.0]], head)).tolist() == pytest.approx([_lse(1.0, 2.0)])
    # DICE+ReAct: clip at the 50th percentile of (1, 2, 3, 2) = 2, then the same masked weights
    s = scorers.get("dice_react", p=50, percentile=50).fit(train, head)
    assert s.score(_feats([[3.0, 1.0]], head)).tolist() == pytest.approx([_lse(2.0, 4.0)])


def test_ash_hand_made():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    k = math.exp(10 / 7)  # sum 10 before, 7 after keeping the top half
    assert ash_s(x, 50)[0].tolist() == pytest.approx([0.0, 0.0, 3 * k, 4 * k])
    assert ash_s(torch.zeros(1, 4), 50).tolist() == [[0.0] * 4]  # no NaN on an all-zero row
    head = _head(torch.eye(4))
    s = scorers.get("ash", p=50).fit(_feats(x, head), head)
    assert s.score(_feats(x, head)).tolist() == pytest.approx([_lse(0, 0, 3 * k, 4 * k)], rel=1e-5)


def test_mahalanobis_hand_made():
    pts = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])
    head = _head(torch.eye(2))
    train = _feats(torch.cat([pts, pts + torch.tensor([4.0, 0.0])]), head, labels=[0] * 4 + [1] * 4)
    s = scorers.get("mahalanobis").fit(train, head)  # Σ = ½·I, so d² = 2‖x − μ‖²
    torch.testing.assert_close(s.state["precision"], 2 * torch.eye(2, dtype=torch.float64))
    assert s.score(_feats([[1.0, 0.0], [2.0, 1.0]], head)).tolist() == pytest.approx([-2.0, -10.0])
    with pytest.raises(ConfigError, match="labelled"):
        scorers.get("mahalanobis").fit(_feats(pts, head), head)


def test_fargate_hand_made():
    """Three views (pooled features, block means, log block norms), each a Mahalanobis distance in units of
    its cross-fitted 99.5 % training quantile; the score is minus the largest."""
    from lbfood.engine.evaluation.scorers import fargate

    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 4
    x = torch.randn(400, 6, generator=g) * torch.tensor([1.0, 2.0, 4.0, 0.5, 3.0, 1.0]) + \
        5.0 * nn.functional.one_hot(y, 6).float()
    means = torch.randn(400, 5, generator=g) + y[:, None].float()
    norms = torch.exp(0.1 * torch.randn(400, 3, generator=g) + torch.tensor([1.0, 2.0, 3.0]))
    head = _head(torch.randn(4, 6, generator=g))
    train = _feats(x, head, labels=y, block_norms=norms, block_means=means)
    s = scorers.get("fargate", shrinkage=0).fit(train, head)
    views = {"": x, "layer_": means, "norm_": norms.log()}

    def plain(v):  # Lee et al.'s class means and shared covariance on one view, as the Mahalanobis scorer
        h = _head(torch.randn(4, v.shape[1], generator=g))
        return scorers.get("mahalanobis").fit(_feats(v, h, labels=y), h), h

    for key, v in views.items():
        m, _ = plain(v)
        torch.testing.assert_close(s.state[f"{key}means"], m.state["means"])
        torch.testing.assert_close(s.state[f"{key}precision"], m.state["precision"])
    # Cross-fitting: each fold's distances come from statistics fitted on the other folds.
    crossed = fargate.cross_fitted(train, 0.0)
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(fargate.SEED))
    held, rest = perm[0::fargate.FOLDS], torch.ones(400, dtype=torch.bool)
    rest[held] = False
    mah = scorers.get("mahalanobis")
    alone = mah.fit(_feats(x[rest], head, labels=y[rest]), head).score(_feats(x[held], head))
    torch.testing.assert_close(crossed[held, 0].float(), -alone, rtol=1e-5, atol=1e-4)
    assert crossed[:, 0].mean() > (-mah.fit(train, head).score(train)).mean()  # in sample: biased low
    want_scales = [float(np.quantile(crossed[:, i].numpy(), 0.995)) for i in range(3)]
    assert s.state["scales"].tolist() == pytest.approx(want_scales)
    # The score: −max of the scaled distances; a point far in any one view scores low.
    test = _feats(torch.cat([x[:3], x[:1] + 30.0, x[:1], x[:1]]), head,
                  block_means=torch.cat([means[:4], means[:1] - 40.0, means[:1]]),
                  block_norms=torch.cat([norms[:5], norms[:1] / 100]))
    d = []
    for v, t in zip(views.values(), (test.features, test.block_means, test.block_norms.log()), strict=True):
        m, h = plain(v)
        d.append(-m.score(_feats(t, h)).double())
    want = -torch.stack([d[i] / want_scales[i] for i in range(3)], dim=1).amax(dim=1)
    torch.testing.assert_close(s.score(test).double(), want, rtol=1e-4, atol=1e-4)
    # γ_far keeps 99.7 % of the cross-fitted scores.
    thr = fargate.threshold(train, s)
    combined = -(crossed / torch.tensor(want_scales, dtype=torch.float64)).amax(dim=1)
    assert fargate.KEEP == 0.997 and thr == pytest.approx(float(np.quantile(combined.numpy(), 0.003)))
    assert (combined >= thr).double().mean().item() == pytest.approx(0.997, abs=0.003)
    assert (s.score(test)[:3] >= thr).all() and (s.score(test)[3:] < thr).all()
    # Shrinkage towards (tr Σ / D)·I: given, or Ledoit-Wolf's ("auto", the default); bad values refused.
    from sklearn.covariance import ledoit_wolf_shrinkage

    mu, cov = class_gaussians(x, y, "test")
    lw = ledoit_wolf_shrinkage((x.double() - mu[y]).numpy(), assume_centered=True)
    assert 0.01 < lw < 0.9
    for given, amount in ((0.5, 0.5), ("0.25", 0.25), ("auto", lw)):
        shrunk = scorers.get("fargate", shrinkage=given).fit(train, head)
        want_cov = (1 - amount) * cov + amount * torch.trace(cov) / 6 * torch.eye(6, dtype=torch.float64)
        torch.testing.assert_close(shrunk.state["precision"], torch.linalg.inv(want_cov))
    assert scorers.get("fargate").params == {"shrinkage": "auto"}
    for bad in (1, -0.1, "lots"):
        with pytest.raises(ConfigError, match="shrinkage must be auto or in"):
            scorers.get("fargate", shrinkage=bad)
    with pytest.raises(ConfigError, match="at least 10 training images"):
        fargate.threshold(_feats(x[:9], head, labels=y[:9], block_norms=norms[:9], block_means=means[:9]), s)
    with pytest.raises(ConfigError, match="block norms and means"):
        s.score(_feats(x[:2], head, block_norms=norms[:2]))


def test_knn_hand_made():
    head = _head(torch.eye(2))
    train = _feats([[1.0, 0.0], [0.0, 5.0], [-2.0, 0.0]], head)  # unit vectors after normalising
    test = _feats([[2.0, 0.0], [0.0, -3.0]], head)
    r2 = math.sqrt(2)
    for chunk in (1, 4096):
        for k, want in ((1, [0.0, -r2]), (2, [-r2, -r2]), (3, [-2.0, -2.0])):
            s = scorers.get("knn", k=k, chunk=chunk).fit(train, head)
            assert s.score(test).tolist() == pytest.approx(want, abs=1e-6)
    with pytest.raises(ConfigError, match="k=50"):
        scorers.get("knn").fit(train, head)


def test_knn_chunking_matches_full():
    g = torch.Generator().manual_seed(0)
    head = _head(torch.randn(3, 8, generator=g))
    train, test = _feats(torch.randn(37, 8, generator=g), head), _feats(torch.randn(11, 8, generator=g), head)
    full = scorers.get("knn", k=5).fit(train, head).score(test)
    torch.testing.assert_close(scorers.get("knn", k=5, chunk=3).fit(train, head).score(test), full)
    d = torch.cdist(nn.functional.normalize(test.features), nn.functional.normalize(train.features))
    torch.testing.assert_close(full, -d.sort(dim=1).values[:, 4], rtol=1e-5, atol=1e-5)


def test_vim_hand_made():
    head = _head([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # b = 0, so the origin u = 0
    a, b, c = 3.0, 2.0, 1.0
    train = _feats([[a, 0, 0], [-a, 0, 0], [0, b, 0], [0, -b, 0], [0, 0, c], [0, 0, -c]], head)
    s = scorers.get("vim", dim=2).fit(train, head)  # residual space = the z axis
    # α = mean max-logit / mean residual norm = ((a + b) / 6) / (2c / 6) = 2.5
    assert s.state["alpha"].item() == pytest.approx(2.5)
    test = _feats([[1.0, 1.0, 2.0]], head)
    assert s.score(test).tolist() == pytest.approx([_lse(1.0, 1.0) - 2.5 * 2.0])
    biased = _head([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], bias=[1.0, -1.0])
    s = scorers.get("vim", dim=2).fit(train, biased)
    assert s.state["origin"].tolist() == pytest.approx([-1.0, 1.0, 0.0])  # u = −W⁺b
    assert (principal_dim(2048), principal_dim(768), principal_dim(512)) == (1000, 512, 256)
    with pytest.raises(ConfigError, match="dim"):
        scorers.get("vim", dim=3).fit(train, head)


def test_featurenorm_hand_made():
    head = _head(torch.eye(1))
    bn = torch.tensor([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]])
    jig = torch.tensor([[1.0, 1.0, 6.0], [1.0, 4.0, 1.0]])  # ratios (1, 2, ½), (2, ½, 2): means 1.5, 1.25, 1.25
    train = _feats([[0.0], [0.0]], head, block_norms=bn, jigsaw_block_norms=jig)
    s = scorers.get("featurenorm").fit(train, head)
    assert s.block == 0 and s.state["norm_ratio"].tolist() == pytest.approx([1.5, 1.25, 1.25])
    assert s.score(train).tolist() == [1.0, 2.0]
    fixed = scorers.get("featurenorm", block=-1)
    assert fixed.fitted and fixed.score(train).tolist() == [3.0, 2.0]
    with pytest.raises(ConfigError, match="jigsaw"):
        scorers.get("featurenorm").fit(_feats([[0.0]], head, block_norms=bn[:1]), head)
    with pytest.raises(ConfigError, match="does not exist"):
        scorers.get("featurenorm", block=5).score(train)
    assert s.state["num_blocks"].tolist() == [3]
    # statistics saved before blocks were residual blocks (no num_blocks) are refitted, not read
    with pytest.raises(ConfigError, match="num_blocks"):
        scorers.get("featurenorm").load_state_dict({"block": torch.tensor([0]), "norm_ratio": torch.ones(3)})
    with pytest.raises(ConfigError, match="fitted on features with 3 blocks"):
        s.score(_feats([[0.0]], head, block_norms=torch.ones(1, 4)))


@pytest.mark.parametrize("arch, blocks", [("resnet18", 8), ("resnet34", 16), ("resnet50", 16), ("wrn28_10", 12),
                                          ("resnet50_imagenet", 16)])
def test_featurenorm_selects_among_every_residual_block(arch, blocks):
    from lbfood.engine.evaluation.features import extract
    from lbfood.engine.models import build, input_size

    torch.manual_seed(0)
    model = build(arch, num_classes=3, width=0.125)
    size = 64 if input_size(arch) > 32 else 32
    train = extract(model, [(torch.randn(6, 3, size, size), None)], jigsaw=True)
    s = scorers.get("featurenorm").fit(train, model.head)
    ratio = s.state["norm_ratio"]
    assert ratio.shape == (blocks,) and train.block_norms.shape == (6, blocks)
    expected = (train.block_norms.double() / train.jigsaw_block_norms.double()).mean(dim=0).float()
    torch.testing.assert_close(ratio, expected)
    assert ratio[s.block] == ratio.max()
    assert s.score(train).tolist() == train.block_norms[:, s.block].tolist()


def test_odin_hand_made():
    m = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0]])

    class Linear(nn.Module):
        def forward(self, x):
            return x.flatten(1) @ m.T

    x = torch.tensor([[0.3, 0.2, -0.1]])
    t, eps, std = 1000.0, 0.1, (0.5, 0.25, 2.0)
    s = scorers.get("odin", epsilon=eps, std=std)
    got = s.score_images(Linear(), [(x.view(1, 3, 1, 1), torch.zeros(1))])
    # ∇ₓ CE(Mx/T, ŷ) = Mᵀ(p − e_ŷ)/T; x̃ = x − ε·sign(∇)/std
    logits = x @ m.T
    y = logits.argmax(dim=1)
    p = torch.softmax(logits / t, dim=1)
    grad = (p - nn.functional.one_hot(y, 2).float()) @ m / t
    x_adv = x - eps * torch.where(grad >= 0, 1.0, -1.0) / torch.tensor(std)
    want = torch.softmax(x_adv @ m.T / t, dim=1).amax(dim=1)
    torch.testing.assert_close(got, want)
    assert scorers.get("odin").needs_images
    with pytest.raises(ConfigError, match="score_images"):
        s.score(Features(logits=torch.zeros(1, 2), features=torch.zeros(1, 1)))


def test_bghead_hand_made():
    """The bg-head run's head: log-odds g(z̄) = w·z̄ + b; combine=msp adds log max softmax (Pei et al.'s product)."""
    head = _head([[1.0, 0.0], [0.0, 1.0]])
    bg = _head([[2.0, -1.0]], [0.5])
    feats = _feats([[1.0, 1.0], [0.0, 3.0]], head)
    s = scorers.get("bghead").fit(feats, bg)
    assert s.score(feats).tolist() == pytest.approx([1.5, -2.5])
    both = scorers.get("bghead", combine="msp").fit(feats, bg).score(feats)
    want = [math.log(0.5) + math.log(1 / (1 + math.exp(-1.5))),
            3 - _lse(0, 3) + math.log(1 / (1 + math.exp(2.5)))]
    assert both.tolist() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ConfigError, match="combine"):
        scorers.get("bghead", combine="energy")
    with pytest.raises(ConfigError, match="bg-head"):  # a run without the head is refused in one line
        head_of(s, build("resnet18", num_classes=2, width=0.125))


# -- on a tiny model -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build("resnet18", num_classes=3, width=0.125, bg_head=True)
    with torch.no_grad():
        model.bg_head.weight.normal_()  # zero-initialised: give the bghead scorer something to read
    g = torch.Generator().manual_seed(0)
    x_train, x_test = torch.randn(16, 3, 32, 32, generator=g), torch.randn(8, 3, 32, 32, generator=g)
    train = extract(model, [(x_train, torch.arange(16) % 3)], jigsaw=True)
    test = extract(model, [(x_test, torch.full((8,), -1))])
    return model, train, test, x_test


@pytest.mark.parametrize("name", scorers.names())
def test_every_scorer_on_a_tiny_model(name, tiny, tmp_path):
    model, train, test, x_test = tiny
    s = scorers.get(name, **TINY.get(name, {}))
    if s.needs_images:
        scores = s.score_images(model, [(x_test[:5], None), (x_test[5:], None)])
    else:
        scores = s.fit(train, head_of(s, model)).score(test)
    assert scores.shape == (8,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    if name in ("msp", "odin"):
        assert ((scores > 1 / 3 - 1e-6) & (scores <= 1)).all()
    if name in ("knn",):
        assert (scores <= 0).all() and (scores >= -2).all()
    if name == "mahalanobis":
        assert (scores <= 1e-6).all()
    if name == "featurenorm":
        assert (scores >= 0).all()
    if s.needs_fit:  # fitted statistics survive a safetensors round trip
        io.save_tensors(tmp_path / "s.safetensors", s.state_dict())
        fresh = scorers.get(name, **TINY.get(name, {})).load_state_dict(io.load_tensors(tmp_path / "s.safetensors"))
        assert torch.equal(fresh.score(test), scores)
        with pytest.raises(ConfigError, match="not fitted"):
            scorers.get(name, **TINY.get(name, {})).score(test)
    assert isinstance(s.params, dict) and s.__doc__


def test_react_100_is_energy(tiny):
    model, train, test, _ = tiny
    react = scorers.get("react", percentile=100).fit(train, model.head)
    torch.testing.assert_close(react.score(test), scorers.get("energy").score(test))
    react90 = scorers.get("react").fit(train, model.head)
    assert react90.state["threshold"].item() == pytest.approx(
        torch.quantile(train.features.flatten().double(), 0.9).item(), rel=1e-5)


def test_odin_epsilon_zero_is_tempered_msp(tiny):
    model, _, test, x_test = tiny
    got = scorers.get("odin", epsilon=0).score_images(model, [(x_test, None)])
    want = torch.softmax(test.logits / 1000, dim=1).amax(dim=1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# -- registry ---------------------------------------------------------------------------------------------

def test_registry_errors():
    assert {"msp", "maxlogit", "energy", "react", "odin", "featurenorm", "mahalanobis", "knn", "vim", "dice",
            "dice_react", "ash"} <= set(scorers.names())
    with pytest.raises(ConfigError, match="valid: .*energy"):
        scorers.get("nope")
    with pytest.raises(ConfigError, match="unknown parameter.*valid: temperature"):
        scorers.get("energy", temp=2)
    with pytest.raises(ConfigError, match="must be like"):
        scorers.get("react", percentile="high")
    with pytest.raises(ConfigError, match="percentile"):
        scorers.get("react", percentile=0)
    assert scorers.get("knn", k="7").params["k"] == 7  # CLI text is converted

    from lbfood.engine.catalog import SCORERS

    with pytest.raises(ValueError, match="twice"):
        SCORERS.add("msp", "lbfood.engine.evaluation.scorers.msp:MSP")
