"""Model zoo: CIFAR-form ResNets, WideResNets and torchvision's ImageNet ResNet-50.

Every model has a `width` multiplier (for CPU-sized experiments), `forward_blocks(x)` (the output of
every residual block in order: FeatureNorm's candidates, 8 for ResNet-18, 16 for ResNet-34/50, 12 for
WRN-28-10), `forward_features(x)` (the last feature map z, (B, C, H, W), before pooling: the map L_LFF
works on), a linear `head`, and `forward(x) = head(GAP(z))` (paper Eq. 1).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lbfood.engine.catalog import MODELS
from lbfood.engine.errors import ConfigError


def names() -> list[str]:
    """Registered architectures (any `wrnD_K` with D = 6n+4 also builds)."""
    return MODELS.names()


def input_size(name: str) -> int:
    """The input resolution an architecture expects (its registry entry's `input_size`)."""
    return int(MODELS.entry(name).meta["input_size"])


# Limits, so that a typo (`--width 1e9`, `wrn1000000_1`, an edited run.json) is one line, not an
# allocator error, an hour of building or a 30 GB resize. Each is far beyond what the paper uses.
MAX_CHANNELS = 8192  # the widest layer: one 3×3 convolution this wide holds 604 M parameters (2.4 GB)
MAX_DEPTH = 1000  # WideResNet depth: ResNet-1001 is the deepest published; deeper takes minutes to build
MAX_INPUT_SIZE = 1024  # pixels; the largest architecture takes 224 (one 1024-px batch of 256 is 3 GB)


def check(name: str, width: float = 1.0) -> None:
    """Raise ConfigError for an unknown architecture or a bad width, without building anything."""
    if not (isinstance(width, int | float) and math.isfinite(width) and width > 0):
        raise ConfigError(f"--width must be a finite number > 0, got {width}")
    MODELS.load(name)  # unknown names and bad WideResNet depths raise here
    entry = MODELS.entry(name)
    if "channels" not in entry.meta:  # another library's backbone (torchvision:/timm:): built as published
        return
    base = entry.meta["channels"] * int(entry.args.get("widen", 1))
    if _ch(base, width) > MAX_CHANNELS:
        raise ConfigError(f"width {width:g} makes {name}'s widest layer {_ch(base, width):,} channels, over the "
                          f"{MAX_CHANNELS:,} lbfood builds (one 3×3 convolution that wide holds 604 M parameters): "
                          f"use a width of at most {MAX_CHANNELS / base:g}")


def check_input_size(size: int) -> None:
    """Raise ConfigError for an input size (pixels) over MAX_INPUT_SIZE: every image is resized to it."""
    if size > MAX_INPUT_SIZE:
        raise ConfigError(f"input size {size} px is over the {MAX_INPUT_SIZE} px lbfood resizes images to "
                          f"(the largest architecture takes 224 px)")


def build(name: str, *, num_classes: int, width: float = 1.0, bg_head: bool = False) -> FeatureModel:
    """Build `name` with a `width` multiplier on every layer's channel count (and a `bg_head`)."""
    check(name, width)
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    model = MODELS.load(name)(num_classes=num_classes, width=width)
    return add_bg_head(model) if bg_head else model


def add_bg_head(model: FeatureModel) -> FeatureModel:
    """Give `model` a background-vs-ID head `bg_head` (Linear(C, 1) on the feature space; the objective
    bg-head trains it, the scorer bghead reads it), zero-initialised: no random numbers are drawn, and
    it starts at probability 1/2 everywhere. Its weights are part of the model's state dict."""
    model.bg_head = nn.Linear(model.feature_dim, 1)
    nn.init.zeros_(model.bg_head.weight)
    nn.init.zeros_(model.bg_head.bias)
    return model


def _ch(c: int, width: float) -> int:
    return max(4, int(round(c * width)))


class FeatureModel(nn.Module):
    """Base: subclasses set `self.head`, and `self.stem` and `self.stages` (a sequence of nn.Sequential of
    residual blocks) or override `stem_forward` and `stage_list`."""

    head: nn.Linear
    # bg_head: nn.Linear, only on bg-head runs (add_bg_head; read it with getattr(model, "bg_head", None)).

    def stem_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def stage_list(self) -> Sequence[nn.Sequential]:
        return self.stages

    def forward_blocks(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every residual block, in order (as the FeatureNorm reference enumerates them)."""
        x = self.stem_forward(x)
        outs = []
        for stage in self.stage_list():
            for block in stage:
                x = block(x)
                outs.append(x)
        return outs

    def features_from_last_block(self, last: torch.Tensor) -> torch.Tensor:
        """z from the last block's output (the same tensor, except where a final BN-ReLU follows)."""
        return last

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """z = h(x), the last feature map (B, C, H, W)."""
        x = self.stem_forward(x)
        for stage in self.stage_list():
            x = stage(x)
        return self.features_from_last_block(x)

    def forward(self, x: torch.Tensor, with_features: bool = False):
        """Logits `head(GAP(z))`; with `with_features`, `(logits, z)` from the same pass (used by the
        training step, so DataParallel wrappers see an ordinary forward call)."""
        z = self.forward_features(x)
        logits = self.head(z.mean(dim=(2, 3)))
        return (logits, z) if with_features else logits

    @property
    def feature_dim(self) -> int:
        return self.head.in_features


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(FeatureModel):
    """ResNet in the CIFAR form (He et al., 2016): 3×3 stem, no max-pool, 32×32 input."""

    def __init__(self, block, layers: list[int], num_classes: int, width: float = 1.0):
        super().__init__()
        c = _ch(64, width)
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        cin = c
        stages = []
        for i, n in enumerate(layers):
            planes = _ch(64 * 2**i, width)
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if (i > 0 and j == 0) else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(cin, num_classes)
        _init(self)


class WideBlock(nn.Module):
    """Pre-activation wide basic block (Zagoruyko & Komodakis, 2016)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(FeatureModel):
    """WRN-depth-widen for 32×32 inputs; the last feature map is taken after the final BN-ReLU.

    `forward_blocks` gives the raw (pre-activation) block outputs, the last one before that BN-ReLU,
    as the FeatureNorm reference reads them; FeatureNorm's own ReLU is applied when it is computed.
    """

    def __init__(self, depth: int, widen: int, num_classes: int, width: float = 1.0):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ConfigError(f"WideResNet depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        chans = [_ch(16, width)] + [_ch(c * widen, width) for c in (16, 32, 64)]
        self.stem = nn.Conv2d(3, chans[0], 3, 1, 1, bias=False)
        stages, cin = [], chans[0]
        for i in range(3):
            blocks = [WideBlock(cin if j == 0 else chans[i + 1], chans[i + 1], (1 if i == 0 else 2) if j == 0 else 1)
                      for j in range(n)]
            cin = chans[i + 1]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.bn = nn.BatchNorm2d(cin)
        self.head = nn.Linear(cin, num_classes)
        _init(self)

    def features_from_last_block(self, last):
        return F.relu(self.bn(last))


class ImageNetResNet50(FeatureModel):
    """torchvision's ResNet-50 (224×224 input) exposed through the FeatureModel interface."""

    def __init__(self, num_classes: int, width: float = 1.0):
        super().__init__()
        from torchvision.models.resnet import Bottleneck as TvBottleneck
        from torchvision.models.resnet import ResNet

        base = _ch(64, width)
        net = ResNet(TvBottleneck, [3, 4, 6, 3], num_classes=num_classes)
        if width != 1.0:  # rebuild the stem and stages at the narrower width
            net.inplanes = base
            net.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
            net.bn1 = nn.BatchNorm2d(base)
            net.layer1 = net._make_layer(TvBottleneck, base, 3)
            net.layer2 = net._make_layer(TvBottleneck, base * 2, 4, stride=2)
            net.layer3 = net._make_layer(TvBottleneck, base * 4, 6, stride=2)
            net.layer4 = net._make_layer(TvBottleneck, base * 8, 3, stride=2)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.head = nn.Linear(base * 8 * TvBottleneck.expansion, num_classes)

    @staticmethod
    def from_library(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """torchvision's names: only its classifier `fc.*` is called `head.*` here."""
        return {("head." + k[3:]) if k.startswith("fc.") else k: v for k, v in sd.items()}

    def stem_forward(self, x):
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def stage_list(self):
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def load_torchvision(self, path: Path) -> None:
        """Load a torchvision ResNet-50 state dict (`fc.*` becomes `head.*` when the class count matches)."""
        if not Path(path).is_file():
            raise ConfigError(f"--init: {path} not found; pass a torchvision ResNet-50 state dict (.pth)")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is the user's file
            raise ConfigError(f"--init: {path} is not a readable state dict ({type(e).__name__}); "
                              "save one with torch.save(model.state_dict(), path)") from None
        if not isinstance(sd, dict):
            raise ConfigError(f"--init: {path} holds a {type(sd).__name__}, not a state dict")
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        head = {k.replace("fc.", "head.", 1): v for k, v in sd.items() if k.startswith("fc.")}
        body = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        if head and head["head.weight"].shape == self.head.weight.shape:
            body.update(head)
        missing, unexpected = self.load_state_dict(body, strict=False)
        missing = [k for k in missing if not k.startswith("head.")]
        if missing or unexpected:
            raise ConfigError(f"--init: {path} does not match resnet50_imagenet at this width "
                              f"({len(missing)} missing, {len(unexpected)} unexpected keys)")


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resnet18(*, num_classes: int, width: float = 1.0) -> FeatureModel:
    return CifarResNet(BasicBlock, [2, 2, 2, 2], num_classes, width)


def resnet34(*, num_classes: int, width: float = 1.0) -> FeatureModel:
    return CifarResNet(BasicBlock, [3, 4, 6, 3], num_classes, width)


def resnet50(*, num_classes: int, width: float = 1.0) -> FeatureModel:
    return CifarResNet(Bottleneck, [3, 4, 6, 3], num_classes, width)


def wrn28_10(*, num_classes: int, width: float = 1.0) -> FeatureModel:
    return WideResNet(28, 10, num_classes, width)


def resnet50_imagenet(*, num_classes: int, width: float = 1.0) -> FeatureModel:
    return ImageNetResNet50(num_classes, width)


def wide_resnet(*, depth: str, widen: str):
    """The builder of `wrnD_K` (depth D = 6n+4, widening factor K), for the `wrnD_K` registry family."""
    d, k = int(depth), int(widen)
    if d > MAX_DEPTH:
        raise ConfigError(f"WideResNet depth {d} is over the {MAX_DEPTH} lbfood builds (the deepest published "
                          f"ResNets are about this deep); use wrn28_{k} or another depth 6n+4 up to {MAX_DEPTH}")
    if (d - 4) % 6 or d < 10:
        raise ConfigError(f"WideResNet depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {d}")
    if k < 1:
        raise ConfigError(f"WideResNet widening factor must be >= 1, got {k}")
    return functools.partial(_wrn, d, k)


def _wrn(depth: int, widen: int, *, num_classes: int, width: float = 1.0) -> FeatureModel:
    return WideResNet(depth, widen, num_classes, width)
