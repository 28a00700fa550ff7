"""Weights from outside lbfood: a local file (safetensors, or a torch.save file read with weights_only) or a
library's pretrained weights (torchvision's weights API, timm's Hugging Face cache), loaded strictly.

Nothing here unpickles code: a checkpoint that needs it (a whole pickled model) is refused with the way to
save a plain state dict. Offline and not in the cache, a pretrained source names the file to place there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lbfood.engine.errors import ConfigError

_WRAPPERS = ("state_dict", "model", "model_state_dict", "net", "module")  # training checkpoints' usual keys
_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


@dataclass(frozen=True)
class Source:
    """`torchvision:NAME[:WEIGHTS]` or `timm:NAME[.TAG]`, parsed."""

    library: str  # torchvision | timm
    name: str  # the architecture (timm: without its .tag)
    tag: str | None = None  # torchvision: a weights enum member (IMAGENET1K_V1); timm: the pretrained tag

    @property
    def arch(self) -> str:
        """The lbfood architecture name (catalog.py's families): rebuilt without any download."""
        return f"{self.library}:{self.name}"

    @property
    def full_name(self) -> str:
        """The name as the library takes it (timm: NAME.TAG)."""
        return f"{self.name}.{self.tag}" if self.library == "timm" and self.tag else self.name

    def __str__(self) -> str:
        sep = ":" if self.library == "torchvision" else "."
        return self.arch + (f"{sep}{self.tag}" if self.tag else "")


def parse(text: str) -> Source:
    library, _, rest = text.partition(":")
    if library not in ("torchvision", "timm") or not rest:
        raise ConfigError(f"{text!r}: name the model as torchvision:NAME[:WEIGHTS] (e.g. torchvision:resnet50:"
                          "IMAGENET1K_V2) or timm:NAME (e.g. timm:resnet50.a1_in1k)")
    if library == "torchvision":
        name, _, tag = rest.partition(":")
    else:
        name, _, tag = rest.partition(".")
    return Source(library, name, tag or None)


def read_file(path: str | os.PathLike, flag: str = "--weights") -> dict[str, torch.Tensor]:
    """A state dict from `path`: safetensors, or torch.load(weights_only=True); a training checkpoint's
    wrapper (`state_dict`, `model`, ...) and DDP/compile prefixes are removed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{flag}: {path} not found; pass a state dict file (.safetensors, .pth, .pt)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
            raise ConfigError(f"{flag}: {path} is not a readable safetensors file ({type(e).__name__})") from None
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is the user's file
            code = "weights only" in str(e).lower() or "unsupported global" in str(e).lower()
            why = ("is a pickle that needs code execution to load (a whole model object?), which lbfood refuses"
                   if code else f"is not a readable state dict ({type(e).__name__})")
            raise ConfigError(f"{flag}: {path} {why}; save the weights alone: torch.save(model.state_dict(), "
                              "path) or safetensors") from None
    for key in _WRAPPERS:
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not (isinstance(sd, dict) and sd and all(isinstance(v, torch.Tensor) for v in sd.values())):
        raise ConfigError(f"{flag}: {path} holds a {type(sd).__name__} that is not a state dict (names → "
                          "tensors); save one with torch.save(model.state_dict(), path)")
    out = {}
    for k, v in sd.items():
        for p in _PREFIXES:
            while k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def load_strict(net: nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """Load `sd` into `net`; missing, unexpected or mis-shaped keys raise one line with the first few and counts."""
    own = net.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)):
            if keys:
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', …' if len(keys) > 3 else ''})")
        raise ConfigError(f"{what} does not match the model: keys {'; '.join(parts)}; pass the weights of "
                          "this very architecture")
    net.load_state_dict(sd, strict=True)


def for_init(text: str) -> dict[str, torch.Tensor]:
    """`--init`'s weights: FILE, torchvision:NAME[:WEIGHTS] or timm:NAME (from the library's cache)."""
    if text.startswith(("torchvision:", "timm:")):
        src = parse(text)
        from lbfood.engine.backbones import check_name

        check_name(src.library, src.full_name)  # an unknown name: close matches, before any download
        return pretrained(src)[0]
    return read_file(text, flag="--init")


def init_model(model: nn.Module, sd: dict[str, torch.Tensor], what: str) -> bool:
    """Load `--init` weights into an lbfood model (library names mapped by the model's `from_library`); a
    classifier with another number of classes is left fresh. Returns whether the head was kept."""
    if hasattr(model, "from_library") and not any(k in model.state_dict() for k in sd):
        sd = model.from_library(sd)
    own = model.state_dict()
    heads = [k for k in sd if k.startswith("head.")]
    kept = bool(heads) and all(k in own and sd[k].shape == own[k].shape for k in heads)
    if not kept:
        sd = {**{k: v for k, v in sd.items() if not k.startswith("head.")},
              **{k: v for k, v in own.items() if k.startswith("head.")}}
    load_strict(model, sd, what)
    return kept


def classifier_key(src: Source) -> str:
    """The state-dict name of the classifier's weight (its rows are the classes)."""
    if src.library == "timm":
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(src.name)
        return f"{(cfg.classifier if cfg is not None else None) or 'fc'}.weight"
    return "fc.weight"


def pretrained(src: Source) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, defaults) of a library's pretrained weights, from its cache (downloading when online).
    defaults: input_size, mean, std, as the weights were trained."""
    if src.library == "torchvision":
        return _torchvision(src)
    return _timm(src)


def defaults(src: Source) -> dict:
    """input_size, mean, std the weights were trained with (ImageNet's at 224 px when nothing says)."""
    out = {"input_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    if src.library == "timm":
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(src.full_name)
        if cfg is not None:
            out = {"input_size": int(cfg.input_size[-1]), "mean": list(cfg.mean), "std": list(cfg.std)}
        return out
    w = _torchvision_weights(src, required=False)
    if w is not None:
        t = w.transforms()
        out = {"input_size": int(t.crop_size[0]), "mean": list(t.mean), "std": list(t.std)}
    return out


def _torchvision_weights(src: Source, required: bool = True):
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(src.name)
    except (ValueError, KeyError):
        return None
    if src.tag is None:
        return enum.DEFAULT if required else None
    try:
        return enum[src.tag]
    except KeyError:
        raise ConfigError(f"torchvision:{src.name} has no weights {src.tag!r}; it has "
                          f"{', '.join(m.name for m in enum)}") from None


def _torchvision(src: Source) -> tuple[dict[str, torch.Tensor], dict]:
    w = _torchvision_weights(src)
    if w is None:
        raise ConfigError(f"torchvision:{src.name} has no pretrained weights in torchvision; pass --weights FILE")
    file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
    if not file.is_file():
        try:
            if offline():
                raise FileNotFoundError("offline")
            torch.hub.download_url_to_file(w.url, str(file), progress=False)
        except Exception as e:  # noqa: BLE001 - no network, DNS, proxy, HTTP errors
            file.unlink(missing_ok=True)
            raise ConfigError(f"torchvision:{src.name}: its weights are not cached and could not be downloaded "
                              f"({type(e).__name__}); offline, place {w.url} at {file}, or pass --weights FILE"
                              ) from None
    return read_file(file, flag=str(src)), defaults(src)


def offline() -> bool:
    """HF_HUB_OFFLINE=1 or LBFOOD_OFFLINE=1: use the caches only, never try the network."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "LBFOOD_OFFLINE"))


def _timm(src: Source) -> tuple[dict[str, torch.Tensor], dict]:
    import timm
    from timm.models import get_pretrained_cfg

    name = src.full_name
    cfg = get_pretrained_cfg(name)
    hub = getattr(cfg, "hf_hub_id", None) or name
    cached = _hf_cached(hub)
    try:
        if cached is not None:
            net = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": cached})
        elif offline():
            raise FileNotFoundError("offline")
        else:
            from huggingface_hub.utils import logging as hf_logging

            hf_logging.set_verbosity_error()  # no retry chatter: the one error line says it
            net = timm.create_model(name, pretrained=True)
    except Exception as e:  # noqa: BLE001 - huggingface_hub raises many types offline
        raise ConfigError(f"timm:{name}: its weights are not cached and could not be downloaded ({type(e).__name__}); "
                          f"place the Hugging Face repo {hub} (model.safetensors) in the cache "
                          f"({_hf_cache()}), e.g. `hf download {hub}` where online, or pass --weights FILE") from None
    return net.state_dict(), defaults(src)


def _hf_cached(repo: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return found
    return None


def _hf_cache() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except ImportError:
        return "~/.cache/huggingface/hub"
