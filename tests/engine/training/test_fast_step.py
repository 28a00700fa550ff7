"""The compiled training step (CE + λ·L_LFF): same CE, LFF statistics, weights and BN buffers as the eager `train_step`
after a few steps with a changing learning rate; used only where batches have a fixed shape.

backend="aot_eager" (the graphs dynamo and AOTAutograd capture, run without inductor's code generation):
on this shared 2-core CPU inductor's C++ compilation alone takes minutes, even for ResNet-18 at width
0.0625; what is tested here is the capture of forward, loss hook, backward and the SGD update.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lbfood.engine import models
from lbfood.engine.config import TrainConfig
from lbfood.engine.data.base import ImageSet
from lbfood.engine.data.loaders import DeviceLoader
from lbfood.engine.runtime import Runtime
from lbfood.engine.training import loop as train
from lbfood.engine.training.fast_step import CompiledStep, applies, compiled_step
from lbfood.engine.training.finetune import LFFHook

CPU = Runtime(torch.device("cpu"), "fp32", channels_last=False)


class Tiny(models.FeatureModel):
    """Two conv-BN-ReLU blocks and a linear head: a feature map and a head, as the LFF hook needs."""

    def __init__(self, classes: int = 4):
        super().__init__()
        b1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        b2 = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.stem = nn.Identity()
        self.stages = nn.ModuleList([nn.Sequential(b1), nn.Sequential(b2)])  # one block per stage
        self.head = nn.Linear(8, classes)


def _pair():
    torch.manual_seed(0)
    eager = Tiny()
    comp = copy.deepcopy(eager)
    cfg = TrainConfig(lr=0.1, momentum=0.9, weight_decay=5e-4)
    o1, o2 = train.make_optimizer(cfg, eager), train.make_optimizer(cfg, comp)
    h1, h2 = LFFHook(eager, delta=0.25, mu=0.5, lam=1.0), LFFHook(comp, delta=0.25, mu=0.5, lam=1.0)
    return eager, comp, o1, o2, h1, h2


def test_compiled_step_matches_eager():
    eager, comp, o1, o2, h1, h2 = _pair()
    step = CompiledStep(comp, o2, CPU, h2, label_smoothing=0.1, backend="aot_eager")
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, 8, 3, 8, 8, generator=gen), torch.randint(0, 4, (3, 8), generator=gen)
    for i, lr in enumerate((0.1, 0.05, 0.02)):  # a new learning rate each step, as the cosine schedule
        for g in o1.param_groups + o2.param_groups:
            g["lr"] = lr
        ce1, logits1, parts1 = train.train_step(eager, x[i], y[i], o1, scaler, CPU, h1, 0.1)
        ce2, logits2, parts2 = step(x[i], y[i])
        torch.testing.assert_close(ce2, ce1, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logits2, logits1, rtol=1e-5, atol=1e-5)
        assert parts2.keys() == parts1.keys() == {"mean_lff", "bg", "loc", "bg_norm", "fg_norm"}
        for k in parts1:
            torch.testing.assert_close(parts2[k], parts1[k], rtol=1e-5, atol=1e-5)
        assert parts2["loc"].item() == 8 * 4 * 4  # B·H·W locations of the 4×4 map
        assert 0 < parts2["bg"].item() < 8 * 4 * 4  # some background locations: L_LFF is active
    for (name, p1), p2 in zip(eager.state_dict().items(), comp.state_dict().values(), strict=True):
        torch.testing.assert_close(p2, p1, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(comp.head.weight, _pair()[1].head.weight)  # the steps did move the weights
    assert o2.param_groups[0]["lr"].item() == pytest.approx(0.02)  # the tensor holds the last rate


def _images(n: int) -> ImageSet:
    return ImageSet("fake", ("a", "b"), images=torch.zeros(n, 8, 8, 3, dtype=torch.uint8),
                    labels=torch.arange(n) % 2)


def test_applies_only_to_fixed_shape_device_batches():
    loader = DeviceLoader(_images(10), batch_size=4, mean=(0,) * 3, std=(1,) * 3, train=True)
    assert loader.drop_last and len(loader) == 2 and [len(y) for _, y in loader] == [4, 4]  # ragged 2 dropped
    assert applies(loader, CPU, distributed=False)
    assert not applies(loader, CPU, distributed=True)
    ragged = DeviceLoader(_images(10), batch_size=4, mean=(0,) * 3, std=(1,) * 3, train=True, drop_last=False)
    assert not applies(ragged, CPU, distributed=False)
    assert not applies([(torch.zeros(4, 3, 8, 8), torch.zeros(4))], CPU, distributed=False)
    fp16 = Runtime(torch.device("cuda"), "fp16", channels_last=False)  # GradScaler: the eager step
    assert not applies(loader, fp16, distributed=False)
    model = Tiny()
    opt = train.make_optimizer(TrainConfig(), model)
    assert compiled_step(False, loader, model, opt, CPU, None, 0.0, False) is None
    assert isinstance(compiled_step(True, loader, model, opt, CPU, None, 0.0, False), CompiledStep)
