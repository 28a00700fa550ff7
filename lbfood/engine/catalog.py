"""Every model, dataset, scorer and fine-tuning objective name lbfood knows, declared without importing anything heavy.

The CLI builds its choices and `--help` text from these; the engine builds objects with `.load`.
Add a new architecture, dataset or scorer here and in its own module.
"""

from __future__ import annotations

from lbfood.engine.errors import ConfigError, DataError
from lbfood.engine.registry import Registry

_M = "lbfood.engine.models"
MODELS = Registry("architecture", ConfigError)
# channels: the widest layer at width 1 (for wrnD_K, per unit of K), so a width is bounded before building
MODELS.add("resnet18", f"{_M}:resnet18", input_size=32, channels=512)
MODELS.add("resnet34", f"{_M}:resnet34", input_size=32, channels=512)
MODELS.add("resnet50", f"{_M}:resnet50", input_size=32, channels=2048)
MODELS.add("wrn28_10", f"{_M}:wrn28_10", input_size=32, channels=640)
MODELS.add("resnet50_imagenet", f"{_M}:resnet50_imagenet", input_size=224, channels=2048)
MODELS.add_family(r"wrn(?P<depth>\d+)_(?P<widen>\d+)", f"{_M}:wide_resnet", "wrnD_K", input_size=32, channels=64)
# Other libraries' CNNs (engine/backbones.py): `lbfood import` records the weights' own input size.
MODELS.add_family(r"torchvision:(?P<name>[A-Za-z0-9_]+)", "lbfood.engine.backbones:torchvision_family",
                  "torchvision:NAME", input_size=224)
MODELS.add_family(r"timm:(?P<name>[A-Za-z0-9_]+)", "lbfood.engine.backbones:timm_family", "timm:NAME", input_size=224)

_S = "lbfood.engine.evaluation.scorers"
SCORERS = Registry("scorer", ConfigError)
for _name, _cls in (("msp", "msp:MSP"), ("maxlogit", "maxlogit:MaxLogit"), ("energy", "energy:Energy"),
                    ("odin", "odin:ODIN"), ("react", "react:ReAct"), ("mahalanobis", "mahalanobis:Mahalanobis"),
                    ("knn", "knn:KNN"), ("vim", "vim:ViM"), ("dice", "dice:DICE"), ("dice_react", "dice:DICEReAct"),
                    ("ash", "ash:ASH"), ("featurenorm", "featurenorm:FeatureNorm"),
                    ("fargate", "fargate:FarGate")):
    SCORERS.add(_name, f"{_S}.{_cls}")
SCORERS.add("bghead", f"{_S}.bghead:BgHead")

# Fine-tuning objectives: the extra loss added to CE (Eq. 7's λ·term); `help` is the CLI's one-line meaning,
# `lam` the objective's own default weight where its source gives one (else the dataset preset's λ).
_O = "lbfood.engine.training.objectives"
OBJECTIVES = Registry("objective", ConfigError)
OBJECTIVES.add("lff", f"{_O}:LFFHook", help="the paper's L_LFF: background norms above μ are pushed down (Eqs. 4-7)")
OBJECTIVES.add("lff-rel", f"{_O}:RelLFFHook",
               help="L_LFF with μ relative to the image's mean foreground norm (--mu relX, default rel0.5)")
OBJECTIVES.add("bg-energy", f"{_O}:BgEnergyHook", lam=0.1,
               help="energy-bounded outlier exposure (Liu et al. 2020) with background locations as outliers")
OBJECTIVES.add("bg-head", f"{_O}:BgHeadHook", lam=1.0,
               help="a linear background-vs-ID head trained with BCE (Pei et al. 2024); scored by --method bghead")

_D = "lbfood.engine.data"
DATASETS = Registry("dataset", DataError)
for _name, _module, _role in (
        ("backdrops", "backdrops", "id"), ("backdrops-scenes", "backdrops", "ood"),
        ("backdrops-novel", "backdrops", "ood"), ("backdrops-noise", "backdrops", "ood"),
        ("cifar10", "cifar", "id"), ("cifar100", "cifar", "id"), ("mnist", "digits", "id"),
        ("fashion-mnist", "digits", "id"), ("imagenet100", "imagenet", "id"), ("svhn", "svhn", "ood"),
        ("lsun_c", "folders", "ood"), ("lsun_r", "folders", "ood"), ("isun", "folders", "ood"),
        ("textures", "folders", "ood"), ("places365", "folders", "ood"), ("inaturalist", "imagenet", "ood"),
        ("sun", "imagenet", "ood"), ("places", "imagenet", "ood")):
    DATASETS.add(_name, f"{_D}.{_module}", role=_role)
DATASETS.add_family(r"imagefolder:(?P<path>.*)", f"{_D}.folders:imagefolder_family", "imagefolder:PATH", role="id")
DATASETS.add_family(r"folder:(?P<path>.*)", f"{_D}.folders:folder_family", "folder:PATH", role="ood")
