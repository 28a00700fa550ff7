"""Every registered architecture builds at a small width and has the FeatureModel interface."""

import pytest
import torch

from lbfood.engine import models
from lbfood.engine.errors import ConfigError

BLOCKS = {"resnet18": 8, "resnet34": 16, "resnet50": 16, "wrn28_10": 12, "resnet50_imagenet": 16}
EXPECTED = {"resnet18": (64, 4), "resnet34": (64, 4), "resnet50": (256, 4), "wrn28_10": (80, 8),
            "resnet50_imagenet": (256, 7)}


@pytest.mark.parametrize("name", models.names())
def test_shapes(name):
    torch.manual_seed(0)
    m = models.build(name, num_classes=7, width=0.125).eval()
    s = models.input_size(name)
    x = torch.randn(2, 3, s, s)
    z = m.forward_features(x)
    c, hw = EXPECTED[name]
    assert z.shape == (2, c, hw, hw)
    assert m.head.in_features == c and m.head.out_features == 7
    logits = m(x)
    assert logits.shape == (2, 7)
    torch.testing.assert_close(logits, m.head(z.mean(dim=(2, 3))))
    logits2, z2 = m(x, with_features=True)
    torch.testing.assert_close(logits2, logits)
    torch.testing.assert_close(m.features_from_last_block(m.forward_blocks(x)[-1]), z)


@pytest.mark.parametrize("name", models.names())
def test_forward_blocks_is_every_residual_block(name):
    """FeatureNorm's candidates: one output per residual block, in order, as each block's module returns it."""
    from torchvision.models.resnet import Bottleneck as TvBottleneck

    torch.manual_seed(0)
    m = models.build(name, num_classes=3, width=0.125).eval()
    kinds = (models.BasicBlock, models.Bottleneck, models.WideBlock, TvBottleneck)
    residual = [mod for mod in m.modules() if isinstance(mod, kinds)]
    seen = []
    hooks = [mod.register_forward_hook(lambda _m, _i, out: seen.append(out)) for mod in residual]
    s = 64 if name.endswith("_imagenet") else 32
    with torch.no_grad():
        outs = m.forward_blocks(torch.randn(2, 3, s, s))
    for h in hooks:
        h.remove()
    assert len(outs) == len(residual) == BLOCKS[name]
    assert all(torch.equal(o, h) for o, h in zip(outs, seen, strict=True))


def test_wrn_family_and_errors():
    assert models.build("wrn16_2", num_classes=3, width=0.5).forward_features(torch.randn(1, 3, 32, 32)).shape[1] == 64
    with pytest.raises(ConfigError, match="6n\\+4"):
        models.build("wrn27_2", num_classes=3)
    with pytest.raises(ConfigError, match="resnet18"):
        models.build("vgg16", num_classes=3)
    with pytest.raises(ConfigError):
        models.build("resnet18", num_classes=3, width=0)


def test_pretrain_help_lists_every_architecture():
    """What the user reads: `lbfood pretrain --help` names every registered architecture and the wrnD_K family."""
    from typer.testing import CliRunner

    from lbfood.cli import app

    text = "".join(CliRunner().invoke(app, ["pretrain", "--help"], terminal_width=400).output.split())
    for name in [*models.names(), "wrnD_K"]:
        assert name in text, name


def test_resnet50_imagenet_init(tmp_path):
    import torchvision

    tv = torchvision.models.resnet50(num_classes=4)
    torch.save(tv.state_dict(), tmp_path / "r50.pth")
    m = models.build("resnet50_imagenet", num_classes=4)
    m.load_torchvision(tmp_path / "r50.pth")
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(m.eval()(x), tv.eval()(x))
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable state dict"):
        m.load_torchvision(tmp_path / "bad.pth")


@pytest.mark.parametrize("name", [*models.names(), "wrn16_2"])
def test_declared_widest_layer_is_the_widest_conv(name):
    """The registry's `channels` (what the width limit is computed from) is the widest layer built."""
    from lbfood.engine.catalog import MODELS

    e = MODELS.entry(name)
    m = models.build(name, num_classes=3, width=0.125)
    widest = max(c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv2d))
    assert widest == models._ch(e.meta["channels"] * int(e.args.get("widen", 1)), 0.125)


@pytest.mark.parametrize(("args", "message"), [
    (("--width", "1e9"), "width 1e+09 makes resnet18's widest layer 512,000,000,000 channels, over the 8,192 lbfood "
                         "builds (one 3×3 convolution that wide holds 604 M parameters): use a width of at most 16"),
    (("--width", "17"), "use a width of at most 16"),
    (("--arch", "wrn28_200"), "wrn28_200's widest layer 12,800 channels"),
    (("--arch", "wrn1000000_1"), "WideResNet depth 1000000 is over the 1000 lbfood builds"),
])
def test_width_and_depth_are_bounded_in_one_line(tmp_path, monkeypatch, args, message):
    """Refused before any data is read or anything is built or written (was: an allocator error, a hang)."""
    from cli_checks import one_error_line
    from typer.testing import CliRunner

    from lbfood.cli import app

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["pretrain", "--epochs", "1", "--device", "cpu", "--out", "r", *args])
    one_error_line(r, message)
    assert list(tmp_path.iterdir()) == []
    models.check("resnet18", 16)  # the limit itself builds
    models.check("wrn994_1")
    with pytest.raises(ConfigError, match="input size 1025 px is over the 1024 px"):
        models.check_input_size(1025)
