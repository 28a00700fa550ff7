"""Folder datasets: the user's `imagefolder:PATH` (ID) and `folder:PATH` (OOD), and the CIFAR benchmark's
OOD sets as released with ODIN / ReAct / KNN / CIDER (folders of images under the data root)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from lbfood.engine.data import register
from lbfood.engine.data.base import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetSpec,
    ImageSet,
    LoadOptions,
    missing,
    root_problem,
)
from lbfood.engine.data.images import image_set, is_image_name, list_images
from lbfood.engine.data.walk import Key, aliased_subfolders, subfolders, walk_keyed
from lbfood.engine.errors import DataError

SPLITS = ("train", "test")


def check_split(name: str, split: str, allowed: Sequence[str] = SPLITS) -> None:
    if split not in allowed:
        raise DataError(f"{name}: no {split!r} split (it has {', '.join(allowed)})")


def not_found(name: str, expected: Path, layout: str, obtain: str, root: Path | None = None) -> DataError:
    """`missing()`, plus a hint when the data root itself does not exist; the real cause when it is a file."""
    if root is not None and (problem := root_problem(root)):
        return DataError(f"{name}: {problem}")
    err = missing(name, expected, layout, obtain)
    if root is not None and not Path(root).is_dir():
        err = DataError(f"{err} (the data root {root} does not exist: set $LBFOOD_DATA or pass the data root)")
    return err


# ----------------------------------------------------------------------------- OOD folders (named)


def ood_folder_spec(name: str, subdirs: Sequence[str], *, layout: str, obtain: str, image_size: int,
                    mean=CIFAR10_MEAN, std=CIFAR10_STD) -> DatasetSpec:
    """An unlabelled OOD set: every image under the first of `subdirs` (relative to the root) that exists.

    Loading follows `opts.image_size` (in memory at <= 64 px, a file list above), so one spec serves
    both the CIFAR (32 px) and ImageNet (224 px) benchmarks.
    """

    def path(opts: LoadOptions) -> Path:
        for sub in subdirs:
            if (opts.root / sub).is_dir():
                return opts.root / sub
        return opts.root / subdirs[0]

    def count(opts: LoadOptions) -> int | None:
        p = path(opts)
        return len(list_images(p)) if p.is_dir() else None

    def load(opts: LoadOptions, split: str = "test") -> ImageSet:
        check_split(name, split, ("test",))
        p = path(opts)
        if not p.is_dir():
            raise not_found(name, p, layout, obtain, opts.root)
        files = list_images(p)
        if not files:
            raise DataError(f"{name}: no image files under {p} (expected {layout}); {obtain}")
        return image_set(name, files, opts, where=p)

    return DatasetSpec(name=name, role="ood", image_size=image_size, mean=mean, std=std, layout=layout,
                       obtain=obtain, load=load, count=count, path=path, preset="custom")


_ATOM = "the ODIN/ATOM release used by ReAct, KNN and CIDER"
CIFAR_OOD = {
    "lsun_c": (("LSUN",), "LSUN/**/*.jpg (the LSUN.tar.gz release unpacks to LSUN/test/*.jpg)",
               f"download LSUN.tar.gz ({_ATOM}): https://www.dropbox.com/s/fhtsw1m3qxlwj6h/LSUN.tar.gz "
               "and unpack it in the data root"),
    "lsun_r": (("LSUN_resize",), "LSUN_resize/**/*.jpg (the release unpacks to LSUN_resize/LSUN_resize/*.jpg)",
               f"download LSUN_resize.tar.gz ({_ATOM}): "
               "https://www.dropbox.com/s/moqh2wh8696c3yl/LSUN_resize.tar.gz and unpack it in the data root"),
    "isun": (("iSUN",), "iSUN/**/*.jpeg (the release unpacks to iSUN/iSUN_patches/*.jpeg)",
             f"download iSUN.tar.gz ({_ATOM}): https://www.dropbox.com/s/ssz7qxfqae0cca5/iSUN.tar.gz "
             "and unpack it in the data root"),
    "textures": (("dtd/images",), "dtd/images/<category>/*.jpg (DTD r1.0.1)",
                 "download DTD: https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz "
                 "and unpack it in the data root (gives dtd/images/)"),
    "places365": (("places365", "Places365"),
                  "places365/<subfolder>/*.jpg (10,000 images sampled from Places365 test_256, as in KNN/CIDER)",
                  "sample 10,000 images of http://data.csail.mit.edu/places/places365/test_256.tar into "
                  "places365/<subfolder>/ (KNN-OOD/SNN publish their sample on Google Drive: "
                  "https://drive.google.com/file/d/19MShiqHGdOZge0M9gQhwYfnZOJkVZ-mx)"),
}

for _name, (_dirs, _layout, _obtain) in CIFAR_OOD.items():
    register(ood_folder_spec(_name, _dirs, layout=_layout, obtain=_obtain, image_size=32))


# ----------------------------------------------------------------------------- folder:PATH (OOD)


def _folder_family(arg: str) -> DatasetSpec:
    folder = Path(arg).expanduser()
    name = f"folder:{arg}"
    layout = f"{folder}/**/*.<jpg|png|...>"

    def count(opts: LoadOptions) -> int | None:
        return len(list_images(folder)) if folder.is_dir() else None

    def load(opts: LoadOptions, split: str = "test") -> ImageSet:
        check_split(name, split, ("test",))
        if not folder.is_dir():
            raise DataError(f"{name}: folder {folder} not found (expected a folder of images, searched recursively)")
        files = list_images(folder)
        if not files:
            raise DataError(f"{name}: no image files under {folder} (looked recursively for "
                            ".jpg .jpeg .png .bmp .gif .tif .tiff .webp .ppm)")
        return image_set(name, files, opts, where=folder)

    return DatasetSpec(name=name, role="ood", image_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       layout=layout, obtain="your own images", load=load, count=count,
                       path=lambda opts: folder, preset="custom")


# ----------------------------------------------------------------------------- imagefolder:PATH (ID)

_IF_LAYOUT = "PATH/train/<class>/*.jpg and PATH/test/<class>/*.jpg (or val/), or PATH/<class>/*.jpg with --val-split"


def _class_dirs(folder: Path, name: str) -> list[Path]:
    """The class folders; a link back up the tree (a cycle) is not a class, a link to another class is
    refused (it would be silently one class, or the same images under two labels)."""
    if aliases := aliased_subfolders(folder):
        link, target = aliases[0]
        raise DataError(f"{name}: the class folder {link} is a link to the class folder {target}: one folder "
                        "cannot be two classes; remove the link, or copy the images if it is a class of its own")
    return subfolders(folder)


def _no_classes(folder: Path, name: str) -> DataError:
    """What is wrong with a folder that has no class folders: it is empty, or its images lie loose."""
    loose = len(list_images(folder, recursive=False))
    if loose:
        return DataError(f"{name}: no class folders in {folder}: its {loose} image(s) lie directly in it; put "
                         f"each class in its own folder, {folder}/<class>/*.jpg (expected {_IF_LAYOUT})")
    what = "is empty" if not any(_visible(folder)) else "holds no class folders and no images"
    return DataError(f"{name}: {folder} {what}; expected {_IF_LAYOUT}")


def _visible(folder: Path):
    try:
        return (p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError:
        return iter(())


def _scan_keyed(folder: Path, name: str) -> dict[str, dict[Key, Path]]:
    """class name -> {file identity: image file}; no classes, an empty class, or one file in two
    classes (through a link) raises."""
    dirs = _class_dirs(folder, name)
    if not dirs:
        raise _no_classes(folder, name)
    found = {d.name: walk_keyed(d, keep=is_image_name) for d in dirs}
    empty = [c for c, files in found.items() if not files]
    if empty:
        shown = ", ".join(str(folder / c) for c in empty[:3]) + (" ..." if len(empty) > 3 else "")
        raise DataError(f"{name}: {len(empty)} class folder(s) hold no images: {shown}; "
                        f"remove them or add images (expected {_IF_LAYOUT})")
    owner: dict[Key, Path] = {}
    for files in found.values():
        for key, f in files.items():
            if key in owner:
                raise _same_file(name, owner[key], f, "two classes")
            owner[key] = f
    return found


def _same_file(name: str, a: Path, b: Path, where: str) -> DataError:
    return DataError(f"{name}: {a} and {b} are the same file (a symbolic or hard link) in {where}; an image "
                     "must belong to one class and one split: remove the link or copy the file")


def _sorted(found: dict[str, dict[Key, Path]]) -> dict[str, list[Path]]:
    return {c: sorted(files.values(), key=str) for c, files in found.items()}


def _scan(folder: Path, name: str) -> dict[str, list[Path]]:
    """class name -> sorted image files; no classes, an empty class or a file in two classes raises."""
    return _sorted(_scan_keyed(folder, name))


def _scan_pair(train_dir: Path, test_dir: Path, name: str) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """The train and test class folders; a file in both (a link between them) raises: test images
    must never be trained on."""
    train, test = _scan_keyed(train_dir, name), _scan_keyed(test_dir, name)
    in_train = {k: f for files in train.values() for k, f in files.items()}
    for files in test.values():
        for key, f in files.items():
            if key in in_train:
                raise _same_file(name, in_train[key], f, "both the train and the test split")
    return _sorted(train), _sorted(test)


def stratified_split(labels: torch.Tensor, val_split: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices: per class, a seeded shuffle puts round(n * val_split) items in test
    (at least one when the class has two or more items, and never all of them)."""
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_test = min(max(round(len(idx) * val_split), 1 if len(idx) >= 2 else 0), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(test)).values


def _imagefolder_family(arg: str) -> DatasetSpec:
    root = Path(arg).expanduser()
    name = f"imagefolder:{arg}"

    def _parts() -> tuple[Path | None, Path | None]:
        train = root / "train"
        if not train.is_dir():
            return None, None
        for test_name in ("test", "val"):
            if (root / test_name).is_dir():
                return train, root / test_name
        return train, None

    def count(opts: LoadOptions) -> int | None:
        return len(list_images(root)) if root.is_dir() else None

    def load(opts: LoadOptions, split: str) -> ImageSet:
        check_split(name, split)
        if not root.is_dir():
            raise DataError(f"{name}: folder {root} not found; expected {_IF_LAYOUT}")
        train_dir, test_dir = _parts()
        if train_dir is not None and test_dir is not None:
            train, test = _scan_pair(train_dir, test_dir, name)
            classes = tuple(train)
            if split == "train":
                return _build(train, classes, opts)
            unknown = sorted(set(test) - set(train))
            if unknown:
                raise DataError(f"{name}: {test_dir} has class folders not in {train_dir}: "
                                f"{', '.join(unknown[:5])}; test classes must be a subset of train classes")
            return _build(test, classes, opts)
        # A single pool of class folders (PATH/<class>/ or only PATH/train/): split it.
        pool_dir = train_dir or root
        if not 0.0 < opts.val_split < 1.0:
            if train_dir is None and not _class_dirs(root, name):
                raise _no_classes(root, name)
            where = (f"{root} has train/ but no test/ or val/" if train_dir is not None
                     else f"{root} has class folders but no train/ and test/")
            raise DataError(f"{name}: {where}; pass --val-split (e.g. 0.2) to hold out a share of each class "
                            f"as the test split, or use the layout {_IF_LAYOUT}")
        pool = _scan(pool_dir, name)
        classes = tuple(pool)
        files, labels = _flatten(pool, classes)
        tr, te = stratified_split(labels, opts.val_split, opts.seed)
        pick = tr if split == "train" else te
        if not len(pick):
            raise DataError(f"{name}: --val-split {opts.val_split} leaves the {split} split of {pool_dir} empty "
                            "(too few images per class); use a larger share or train/ and test/ folders")
        return image_set(name, [files[i] for i in pick.tolist()], opts, classes=classes,
                         labels=labels[pick].tolist(), where=pool_dir)

    def _build(found: dict[str, list[Path]], classes: tuple[str, ...], opts: LoadOptions) -> ImageSet:
        files, labels = _flatten(found, classes)
        return image_set(name, files, opts, classes=classes, labels=labels.tolist(), where=root)

    return DatasetSpec(name=name, role="id", image_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       layout=_IF_LAYOUT.replace("PATH", str(root)), obtain="your own labelled images",
                       load=load, count=count, path=lambda opts: root, preset="custom")


def _flatten(found: dict[str, list[Path]], classes: tuple[str, ...]) -> tuple[list[Path], torch.Tensor]:
    index = {c: i for i, c in enumerate(classes)}
    files: list[Path] = []
    labels: list[int] = []
    for c, fs in found.items():
        files.extend(fs)
        labels.extend([index[c]] * len(fs))
    return files, torch.tensor(labels, dtype=torch.long)




def imagefolder_family(path: str) -> DatasetSpec:
    """`imagefolder:PATH` (declared in lbfood/engine/catalog.py)."""
    return _imagefolder_family(path)


def folder_family(path: str) -> DatasetSpec:
    """`folder:PATH` (declared in lbfood/engine/catalog.py)."""
    return _folder_family(path)
