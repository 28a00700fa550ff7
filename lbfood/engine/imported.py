"""`lbfood import`: an existing classifier (torchvision or timm architecture + its weights) as a parent run.

`prepare` resolves and checks everything before a file is written: the name, the weights (loaded
strictly), the architecture (a CNN with a (B, C, H, W) map and a linear head, backbones.py), the data's
class count against the head's rows, and the model's accuracy on the data's test split, measured with
the input size and normalisation the weights were trained with (or the user's). A model at chance
(below 1.5/K, the pretraining guard's rule) is refused: its classes, normalisation or input size do not
line up with the data. `write` then saves the adapted weights and the run description (kind `imported`, status
`trained`, the accuracy in its metrics); pipeline.finish calibrates the threshold (Eq. 3) and marks it done.
With `--new-head` the classifier is replaced by a fresh linear layer: a backbone for `finetune`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lbfood.engine import backbones, checkpoint, runs, weights
from lbfood.engine.config import ImportConfig
from lbfood.engine.data import LoadOptions, default_root
from lbfood.engine.data import get as get_dataset
from lbfood.engine.data.loaders import make_loader
from lbfood.engine.errors import ConfigError
from lbfood.engine.events import Event, Note, Step
from lbfood.engine.models import FeatureModel
from lbfood.engine.runs import RunMeta
from lbfood.engine.runtime import Runtime, make_runtime


@dataclass
class Imported:
    """An import checked and measured, not yet written."""

    model: FeatureModel
    meta: RunMeta
    run_dir: Path
    rt: Runtime
    notes: list[Note]


def library_net(src: weights.Source, num_classes: int) -> nn.Module:
    """The library's model with random weights (unknown names raise with close matches)."""
    if src.library == "torchvision":
        return backbones.torchvision_net(src.name, num_classes)
    return backbones.timm_net(src.full_name, num_classes)


def source_weights(cfg: ImportConfig, src: weights.Source) -> tuple[dict[str, torch.Tensor], dict, str]:
    """(state dict, the weights' input size and normalisation, where they came from)."""
    backbones.check_name(src.library, src.full_name)  # refused before any file is read or downloaded
    if cfg.weights:
        return weights.read_file(cfg.weights), weights.defaults(src), str(cfg.weights)
    sd, found = weights.pretrained(src)
    return sd, found, f"{src} (pretrained)"


def head_rows(sd: dict[str, torch.Tensor], src: weights.Source, where: str) -> int:
    key = weights.classifier_key(src)
    if key not in sd or sd[key].ndim != 2:
        raise ConfigError(f"{where} has no classifier weight {key!r}; it is not a state dict of {src.arch} "
                          f"(first keys: {', '.join(list(sd)[:3])})")
    return int(sd[key].shape[0])


def prepare(cfg: ImportConfig) -> Imported:
    """Build, load, check and measure the model; raises LbfoodError (nothing written) on any problem."""
    cfg.check()
    src = weights.parse(cfg.source)
    spec = get_dataset(cfg.data)
    if spec.role != "id":
        raise ConfigError(f"{cfg.data} is an OOD set (no class labels); pass the ID data the model classifies")
    sd, found, where = source_weights(cfg, src)
    rows = head_rows(sd, src, where)
    net = library_net(src, rows)
    backbones.refuse_unsupported(net, str(src), int(found["input_size"]))
    weights.load_strict(net, sd, where)
    model = backbones.adapt(net, str(src)).eval()
    size = cfg.input_size or int(found["input_size"])
    mean = list(cfg.mean or found["mean"])
    std = list(cfg.std or found["std"])

    opts = LoadOptions(root=Path(cfg.data_root) if cfg.data_root else default_root(), download=cfg.download,
                       val_split=cfg.val_split, classes_file=Path(cfg.classes_file) if cfg.classes_file else None,
                       image_size=size, seed=0)
    test = spec.load(opts, "test")
    if cfg.limit is not None:
        test = test.subset(torch.arange(min(cfg.limit, len(test))))
    k = len(test.classes)
    if len(test) == 0:
        raise ConfigError(f"{cfg.data}: the test split is empty; the import measures accuracy on it")
    if rows != k and not cfg.new_head:
        raise ConfigError(f"{src}'s head has {rows} classes but {cfg.data} has {k}; pass the data the head was "
                          "trained on (its classes in the head's order), or --new-head to replace the head")
    if cfg.new_head:
        torch.manual_seed(cfg.seed)
        model.head = nn.Linear(model.head.in_features, k)

    rt = make_runtime(cfg.device, "fp32", training=False)
    model = model.to(rt.device)
    acc = accuracy(model, test, mean=mean, std=std, size=size, rt=rt, batch_size=cfg.batch_size, workers=cfg.workers)
    if not cfg.new_head and acc < 1.5 / k:
        raise ConfigError(
            f"{src} scores {acc:.1%} on the {len(test)} {cfg.data} test images, chance is {1 / k:.1%}: its classes do "
            f"not line up with the data's; check the head's class order against the data's ({', '.join(test.classes[:3])}"
            f"{', …' if k > 3 else ''}), the normalisation (--mean/--std, now {_fmt(mean)}/{_fmt(std)}) and the "
            f"input size (--input-size, now {size}); or import it as a backbone with --new-head")

    run_dir = runs.output_dir(cfg.out, resume=False, data=cfg.data, arch=src.arch, suffix="imported")
    source = {"model": str(src), "weights": where, "head_rows": rows, "new_head": cfg.new_head}
    if cfg.weights:
        source["sha256"] = hashlib.sha256(Path(cfg.weights).read_bytes()).hexdigest()
    meta = RunMeta(kind="imported", arch=src.arch, width=1.0, classes=list(test.classes), input_size=size, mean=mean,
                   std=std, data=cfg.data, preset=spec.preset, config=cfg.to_dict(), status="trained",
                   metrics={"test_acc": acc}, source=source)
    what = "a fresh head (--new-head): the accuracy of a random head" if cfg.new_head else "its head"
    notes = [Note(f"{src}: {acc:.2%} accuracy on {len(test)} {cfg.data} test images with {what} "
                  f"({size} px, mean {_fmt(mean)}, std {_fmt(std)})", data={"test_acc": acc})]
    if isinstance(model, backbones.ConvNeXtAdapter):
        notes.append(Note("ConvNeXt: its head's LayerNorm is applied at every location before pooling (so a "
                          "per-location head exists for L_LFF): logits differ slightly from the original's"))
    return Imported(model, meta, run_dir, rt, notes)


@torch.inference_mode()
def accuracy(model: nn.Module, images, *, mean, std, size: int, rt: Runtime, batch_size: int, workers: int) -> float:
    """Top-1 accuracy of `model` on a labelled ImageSet (fp32, no augmentation)."""
    loader = make_loader(images, batch_size=batch_size, mean=mean, std=std, image_size=size, train=False,
                         device=rt.device, workers=workers)
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y.to(rt.device)).sum())
        total += len(y)
    return correct / max(total, 1)


def write(imp: Imported) -> Iterator[Event]:
    """Save the weights and the run description (status `trained`) under the run's lock; then calibrate and mark done."""
    from lbfood.engine import pipeline

    with checkpoint.lock(imp.run_dir):
        if not runs.startable(imp.run_dir):
            raise ConfigError(runs.not_startable_message(imp.run_dir))
        yield Step(f"writing {imp.run_dir}")
        runs.save_model(imp.run_dir, imp.model)
        runs.write(imp.run_dir, dataclasses.replace(imp.meta, run_dir=None))
        yield from pipeline.finish(imp.run_dir, imp.model, imp.rt, batch_size=max(imp.meta.config["batch_size"], 64),
                                   workers=imp.meta.config["workers"])


def _fmt(v) -> str:
    return ",".join(f"{x:g}" for x in v)
