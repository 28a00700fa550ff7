"""Other libraries' classifiers as lbfood models: torchvision ResNets and timm's ResNet and ConvNeXt families.

Each is wrapped in a `FeatureModel` adapter (models.py) so L_LFF (Eqs. 4–7), FeatureNorm's block norms,
the scorers, `explain` and `export` see the same interface as lbfood's own zoo: `forward_features(x)`
the last (B, C, H, W) map, a linear `head` on its average (Eq. 1) and `forward_blocks(x)`.

Names are registry families (`torchvision:NAME`, `timm:NAME`, catalog.py), so a run is rebuilt from
run.json alone (`models.build(meta.arch, ...)`): the builders here never download (random weights; a
run's own model.safetensors is loaded over them). Refused, with the reason: models whose features are
tokens (ViTs, MLP-Mixers) or whose classifier is not linear on the averaged map.

ConvNeXt's head is LayerNorm → linear on the pooled vector, fc(LN(GAP z)); a per-location head (Eq. 4)
needs a linear map on each location, so the adapter applies that LayerNorm to every location before
pooling, fc(GAP(LN z)), as timm's own `head_norm_first` ConvNeXts do. Its logits therefore differ a
little from the original's: `lbfood import` measures and records the adapted model's accuracy.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Sequence

import torch
from torch import nn

from lbfood.engine.errors import ConfigError
from lbfood.engine.models import FeatureModel

SUPPORTED = "torchvision ResNet/ResNeXt/Wide-ResNet, timm ResNet and ConvNeXt families"


class ResNetAdapter(FeatureModel):
    """torchvision's or timm's ResNet: stem conv1-bn1-act-maxpool, stages layer1..4, head = its `fc`."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.head = net.fc
        net.fc = nn.Identity()
        self.body = net

    @staticmethod
    def from_library(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The library's state-dict names (conv1.*, fc.*) as this adapter's (body.conv1.*, head.*)."""
        return {("head." + k[3:]) if k.startswith("fc.") else "body." + k: v for k, v in sd.items()}

    def stem_forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.body
        act = b.relu if hasattr(b, "relu") else b.act1  # torchvision: relu, timm: act1
        return b.maxpool(act(b.bn1(b.conv1(x))))

    def stage_list(self) -> Sequence[nn.Sequential]:
        b = self.body
        return (b.layer1, b.layer2, b.layer3, b.layer4)


class ConvNeXtAdapter(FeatureModel):
    """timm's ConvNeXt: the head's LayerNorm moves before pooling (see the module docstring)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.head = net.head.fc
        self.norm = net.head.norm
        net.head = nn.Identity()
        self.body = net

    @staticmethod
    def from_library(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """timm's names (stem.*, head.norm.*, head.fc.*) as this adapter's (body.stem.*, norm.*, head.*)."""
        out = {}
        for k, v in sd.items():
            if k.startswith("head.fc."):
                out["head." + k[8:]] = v
            elif k.startswith("head.norm."):
                out["norm." + k[10:]] = v
            else:
                out["body." + k] = v
        return out

    def forward_blocks(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.body.stem(x)
        outs = []
        for stage in self.body.stages:
            x = stage.downsample(x)
            for block in stage.blocks:
                x = block(x)
                outs.append(x)
        return outs

    def features_from_last_block(self, last: torch.Tensor) -> torch.Tensor:
        return self.norm(self.body.norm_pre(last))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_from_last_block(self.body.stages(self.body.stem(x)))


def refuse_unsupported(net: nn.Module, source: str, input_size: int = 224) -> None:
    """Raise ConfigError (one line, the reason) unless `adapt` can wrap `net`."""
    from torchvision.models import ResNet as TvResNet

    kind, timm_model = type(net).__name__, type(net).__module__.startswith("timm.")
    if isinstance(net, TvResNet):
        return
    if timm_model and kind == "ResNet":
        if getattr(net.global_pool, "pool_type", "avg") != "avg" or not isinstance(net.fc, nn.Linear):
            raise ConfigError(f"{source}: this ResNet pools with {net.global_pool.pool_type!r} or has a non-linear "
                              "classifier; lbfood needs a linear head on the average of the last map (Eq. 1)")
        return
    if timm_model and kind == "ConvNeXt":
        head = net.head
        if not (hasattr(head, "norm") and isinstance(getattr(head, "fc", None), nn.Linear)
                and isinstance(getattr(head, "pre_logits", None), nn.Identity)):
            raise ConfigError(f"{source}: this ConvNeXt's head has a hidden layer; lbfood needs a linear head on "
                              "the averaged map (Eq. 1): pick a ConvNeXt without head_hidden_size")
        return
    shape = None
    if hasattr(net, "forward_features"):  # what it gives: tokens (ViTs, Mixers) or a map
        with torch.no_grad():
            shape = tuple(net.eval().forward_features(torch.zeros(1, 3, input_size, input_size)).shape)
    if shape is not None and len(shape) != 4:
        raise ConfigError(f"{source} is a {kind} whose features are {len(shape)}-D {shape} (tokens), not a (B, C, H, W) "
                          f"map of locations, so L_LFF has no background locations to find; use a CNN ({SUPPORTED})")
    raise ConfigError(f"{source} is a {kind}, which lbfood cannot wrap yet (it needs the last feature map and a "
                      f"linear head on its average); supported: {SUPPORTED}")


def adapt(net: nn.Module, source: str) -> FeatureModel:
    """`net` (a torchvision or timm classifier) as a FeatureModel; ConfigError names why another is refused."""
    refuse_unsupported(net, source)
    return ConvNeXtAdapter(net) if type(net).__name__ == "ConvNeXt" else ResNetAdapter(net)


def check_width(name: str, width: float) -> None:
    if width != 1.0:
        raise ConfigError(f"--width {width:g}: {name} has the library's own widths; --width applies to lbfood's "
                          "architectures (resnet18, ...) only: leave it at 1")


def check_name(library: str, name: str) -> None:
    """Raise ConfigError for a name the library does not have, with close matches (nothing is built)."""
    if library == "torchvision":
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if name not in known:
            close = difflib.get_close_matches(name, known, n=4)
            raise ConfigError(f"unknown torchvision model {name!r}" + (f"; did you mean {', '.join(close)}?"
                              if close else "; see torchvision.models.list_models()"))
        return
    try:
        import timm
    except ImportError:
        raise ConfigError(f"timm:{name} needs timm: pip install 'lbfood[timm]'") from None
    if not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=4, cutoff=0.6)
        raise ConfigError(f"unknown timm model {name!r}" + (f"; close matches: {', '.join(close)}" if close
                          else "; list them with timm.list_models('PATTERN')"))


def torchvision_net(name: str, num_classes: int) -> nn.Module:
    """torchvision's classifier `name` with random weights and `num_classes` outputs (never downloads)."""
    import torchvision

    check_name("torchvision", name)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def timm_net(name: str, num_classes: int) -> nn.Module:
    """timm's model `name` (an architecture, optionally `.tag`) with random weights (never downloads)."""
    check_name("timm", name)
    import timm

    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def _build(library: str, name: str, *, num_classes: int, width: float = 1.0) -> FeatureModel:
    check_width(f"{library}:{name}", width)
    net = torchvision_net(name, num_classes) if library == "torchvision" else timm_net(name, num_classes)
    return adapt(net, f"{library}:{name}")


def torchvision_family(name: str):
    """The builder of `torchvision:NAME` (catalog.py)."""
    return functools.partial(_build, "torchvision", name)


def timm_family(name: str):
    """The builder of `timm:NAME` (catalog.py)."""
    return functools.partial(_build, "timm", name)
