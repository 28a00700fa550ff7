"""Other libraries' CNNs as lbfood models (engine/backbones.py) and outside weights (engine/weights.py):
the adapters keep the library's numbers, rebuild from their registry name, and `--init` maps names."""

import pytest
import torch

from lbfood.engine import backbones, models, weights
from lbfood.engine.errors import ConfigError

timm = pytest.importorskip("timm")


def test_torchvision_resnet_adapter_is_the_same_function():
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.resnet18(num_classes=5).eval()
    m = models.build("torchvision:resnet18", num_classes=5)
    assert weights.init_model(m, tv.state_dict(), "test") is True  # torchvision names, head kept
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        assert (m.eval()(x) - tv(x)).abs().max() <= 1e-5
        assert m.forward_features(x).shape == (2, 512, 2, 2) and len(m.forward_blocks(x)) == 8
    assert m.feature_dim == 512 and isinstance(m.head, torch.nn.Linear)


def test_init_with_another_class_count_keeps_a_fresh_head():
    import torchvision

    tv = torchvision.models.resnet18(num_classes=1000).eval()
    m = models.build("torchvision:resnet18", num_classes=3).eval()
    fresh = m.head.weight.clone()
    assert weights.init_model(m, tv.state_dict(), "test") is False
    assert torch.equal(m.head.weight, fresh)
    x = torch.randn(1, 3, 32, 32)
    body = torch.nn.Sequential(*(getattr(tv, n) for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2",
                                                            "layer3", "layer4")))
    with torch.no_grad():
        assert torch.equal(m.forward_features(x), body(x))


def test_timm_convnext_moves_the_head_norm_before_pooling():
    torch.manual_seed(0)
    net = timm.create_model("convnext_atto", num_classes=3).eval()
    m = models.build("timm:convnext_atto", num_classes=3).eval()
    weights.init_model(m, net.state_dict(), "test")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        z = net.forward_features(x)
        assert torch.allclose(m.forward_features(x), net.head.norm(z), atol=1e-6)
        assert torch.allclose(m(x), net.head.fc(net.head.norm(z).mean((2, 3))), atol=1e-5)
    assert len(m.forward_blocks(x)) == 2 + 2 + 6 + 2  # convnext_atto's depths


def test_timm_resnet_names_and_refusals():
    with pytest.raises(ConfigError, match="close matches: resnet10t"):
        models.build("timm:resnet10x", num_classes=2)
    with pytest.raises(ConfigError, match="--width applies to lbfood"):
        models.build("timm:resnet10t", num_classes=2, width=0.5)
    net = timm.create_model("vit_tiny_patch16_224", num_classes=2, img_size=32, patch_size=8)
    with pytest.raises(ConfigError, match=r"3-D \(1, 17, 192\) \(tokens\)"):
        backbones.refuse_unsupported(net, "timm:vit", 32)
    with pytest.raises(ConfigError, match="cannot wrap"):
        backbones.adapt(torch.nn.Conv2d(3, 3, 1), "x")


def test_sources_parse_and_defaults():
    s = weights.parse("torchvision:resnet50:IMAGENET1K_V2")
    assert (s.library, s.name, s.tag, s.arch, str(s)) == ("torchvision", "resnet50", "IMAGENET1K_V2",
                                                          "torchvision:resnet50", "torchvision:resnet50:IMAGENET1K_V2")
    s = weights.parse("timm:resnet50.a1_in1k")
    assert (s.name, s.tag, str(s)) == ("resnet50", "a1_in1k", "timm:resnet50.a1_in1k")
    assert weights.defaults(weights.parse("timm:resnet10t"))["input_size"] == 176  # its pretrained_cfg
    backbones.check_name("timm", weights.parse("timm:resnet10t.c3_in1k").full_name)  # a tagged name is known
    assert weights.classifier_key(weights.parse("timm:convnext_atto")) == "head.fc.weight"
    assert weights.defaults(weights.parse("torchvision:resnet18"))["input_size"] == 224
    with pytest.raises(ConfigError, match="torchvision:NAME"):
        weights.parse("resnet18")
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        weights._torchvision_weights(weights.parse("torchvision:resnet18:V9"))


def test_read_file_unwraps_checkpoints_and_refuses_pickled_code(tmp_path):
    sd = {"module.a": torch.ones(2), "module._orig_mod.b": torch.zeros(1)}
    torch.save({"epoch": 3, "state_dict": sd}, tmp_path / "ck.pth")
    got = weights.read_file(tmp_path / "ck.pth")
    assert list(got) == ["a", "b"] and torch.equal(got["a"], torch.ones(2))
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pth")
    with pytest.raises(ConfigError, match="needs code execution"):
        weights.read_file(tmp_path / "whole.pth")
    with pytest.raises(ConfigError, match="not found"):
        weights.read_file(tmp_path / "nope.pth")
    net = torch.nn.Linear(2, 3)
    with pytest.raises(ConfigError, match=r"2 missing \(weight, bias\); 1 unexpected \(x\)"):
        weights.load_strict(net, {"x": torch.ones(1)}, "w.pth")
