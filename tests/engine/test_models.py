"""Every registered architecture builds at a small width and has the FeatureModel interface."""

import pytest
import torch

from lbfood.cli import common as cli
from lbfood.engine import models
from lbfood.engine.errors import ConfigError

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
    torch.testing.assert_close(m.forward_blocks(x)[-1], z)


def test_wrn_family_and_errors():
    assert models.build("wrn16_2", num_classes=3, width=0.5).forward_features(torch.randn(1, 3, 32, 32)).shape[1] == 64
    with pytest.raises(ConfigError, match="6n\\+4"):
        models.build("wrn27_2", num_classes=3)
    with pytest.raises(ConfigError, match="resnet18"):
        models.build("vgg16", num_classes=3)
    with pytest.raises(ConfigError):
        models.build("resnet18", num_classes=3, width=0)


def test_cli_help_lists_the_registry():
    for name in models.names():
        assert name in cli.ARCH_NAMES


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
