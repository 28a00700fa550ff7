"""ImageNet-100 (the ID set of the paper's large-scale benchmark) and its OOD sets from the MOS release
(Huang & Li, 2021): iNaturalist, SUN and Places, de-duplicated against ImageNet-1k; Textures is shared
with the CIFAR benchmark (folders.py)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from lbfood.engine.data import register
from lbfood.engine.data.base import IMAGENET_MEAN, IMAGENET_STD, DatasetSpec, ImageSet, LoadOptions
from lbfood.engine.data.folders import check_split, not_found, ood_folder_spec
from lbfood.engine.data.images import image_set, list_images
from lbfood.engine.errors import DataError

NAME = "imagenet100"
DEFAULT_CLASSES = "imagenet100_classes.txt"  # shipped beside this module (package data)
ROOT_DIRS = ("imagenet", "imagenet100")  # ImageNet-1k, or an already-subsetted copy
LAYOUT = "imagenet/{train,val}/<wnid>/*.JPEG (ImageNet-1k with val/ sorted into wnid folders)"
OBTAIN = ("download ILSVRC-2012 from https://image-net.org (registration needed), unpack train/ and val/ into "
          "<root>/imagenet/ and sort val/ into one folder per wnid (e.g. with the valprep.sh script); "
          "only the 100 listed classes are read")


def read_class_list(path: Path | None) -> tuple[str, ...]:
    """Class folder names, one per line (`#` comments and blank lines ignored; extra columns dropped).

    None reads the shipped ImageNet-100 list (the MCM/NPOS classes).
    """
    if path is None:
        text = resources.files("lbfood.engine.data").joinpath(DEFAULT_CLASSES).read_text(encoding="utf-8")
        where = f"the shipped {DEFAULT_CLASSES}"
    else:
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataError(f"{NAME}: class list {path} not found; pass a text file with one wnid per line")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{NAME}: cannot read class list {path} ({e}); expected one wnid per line") from None
        where = str(path)
    classes = [line.split("#", 1)[0].split()[0] for line in text.splitlines() if line.split("#", 1)[0].strip()]
    if not classes:
        raise DataError(f"{NAME}: class list {where} names no classes; expected one wnid per line")
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    if dupes:
        raise DataError(f"{NAME}: class list {where} repeats {', '.join(dupes[:5])}")
    return tuple(sorted(classes))  # sorted, as ImageFolder orders class indices


def _root(opts: LoadOptions) -> Path:
    for sub in ROOT_DIRS:
        if (opts.root / sub / "train").is_dir():
            return opts.root / sub
    return opts.root / ROOT_DIRS[0]


def _split_files(opts: LoadOptions, split: str, classes: tuple[str, ...]) -> tuple[list[Path], list[int], Path]:
    folder = _root(opts) / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise not_found(NAME, folder, LAYOUT, OBTAIN, opts.root)
    absent = [c for c in classes if not (folder / c).is_dir()]
    if absent:
        hint = ""
        if split == "test" and list_images(folder, recursive=False):
            hint = " (val/ holds loose images: sort them into wnid folders, e.g. with valprep.sh)"
        raise DataError(f"{NAME}: {len(absent)} of the {len(classes)} listed classes have no folder in {folder}: "
                        f"{', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''}{hint}; "
                        "check the class list (--classes-file) and the layout " + LAYOUT)
    files: list[Path] = []
    labels: list[int] = []
    for i, c in enumerate(classes):
        found = list_images(folder / c)
        if not found:
            raise DataError(f"{NAME}: class folder {folder / c} holds no images (expected {LAYOUT})")
        files.extend(found)
        labels.extend([i] * len(found))
    return files, labels, folder


def _load(opts: LoadOptions, split: str) -> ImageSet:
    check_split(NAME, split)
    classes = read_class_list(opts.classes_file)
    files, labels, folder = _split_files(opts, split, classes)
    return image_set(NAME, files, opts, classes=classes, labels=labels, where=folder)


def _count(opts: LoadOptions) -> int | None:
    try:
        classes = read_class_list(opts.classes_file)
        return sum(len(_split_files(opts, s, classes)[0]) for s in ("train", "test"))
    except DataError:
        return None


register(DatasetSpec(name=NAME, role="id", image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, layout=LAYOUT,
                     obtain=OBTAIN, load=_load, count=_count, path=_root, preset="imagenet100"))

_MOS = "http://pages.cs.wisc.edu/~huangrui/imagenet_ood_dataset"
for _name, _dir, _desc in (("inaturalist", "iNaturalist", "iNaturalist (10,000 images, 110 plant classes)"),
                           ("sun", "SUN", "SUN (10,000 images, 50 scene classes)"),
                           ("places", "Places", "Places (10,000 images, 50 scene classes)")):
    register(ood_folder_spec(
        _name, (_dir, f"ImageNet_OOD_dataset/{_dir}"),
        layout=f"{_dir}/**/*.jpg (the MOS release unpacks to {_dir}/images/*.jpg)",
        obtain=f"download {_desc} from the MOS release: {_MOS}/{_dir}.tar.gz and unpack it in the data root",
        image_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD))
