"""Real photographs as an ID/OOD benchmark: Tux Paint's photo stamps, written in lbfood's folder layout.

Source: the Debian package `tuxpaint-stamps-default` (`apt-get install tuxpaint-stamps-default`, 161 MB;
GPL-2, copyright Bill Kendrick and the Tux Paint contributors), which installs Tux Paint's stamps under
/usr/share/tuxpaint/stamps/<category>/...: photographs of single objects cut out on a transparent
background (the folders named `cartoon` hold drawings and are left out). Nothing is downloaded.

    DIR/id/train/<class>/*.png, DIR/id/test/<class>/*.png   ID: 5 classes (birds, mammals, fruit,
                                                            vegetables, flowers)
    DIR/ood/objects/*.png                                   OOD: household objects and vehicles

ID and OOD are different photos of different kinds of thing, in the same style (one object, centred,
on white): the OOD set is "unseen classes", not a change of background. It is small (about 170 ID
photos, 50 OOD): a check that a method works on real photos, not a benchmark to rank methods by.
Each photo is cropped to its object, padded to a white square and resized (--size). The split is
fixed (a hash of each file's path), so every size and every machine gets the same one.

    python benchmarks/real_images.py --out DIR [--size 32|64|224] [--test-fraction 0.3]
    lbfood pretrain --data imagefolder:DIR/id ...
    lbfood report RUN --ood folder:DIR/ood/objects
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

from PIL import Image

DEFAULT_SOURCE = Path("/usr/share/tuxpaint/stamps")
INSTALL = "apt-get install tuxpaint-stamps-default"
MARKER = ".lbfood-real-images"  # an output folder this script wrote (and may rebuild)

# name -> the stamp folders (relative to the source, searched recursively) it is made of
ID_CLASSES: dict[str, tuple[str, ...]] = {
    "birds": ("animals/birds",),
    "mammals": ("animals/mammals",),
    "fruit": ("food/fruit",),
    "vegetables": ("food/vegetables",),
    "flowers": ("plants/flowers",),
}
OOD_SETS: dict[str, tuple[str, ...]] = {
    "objects": ("household", "vehicles"),
}
LEFT_OUT = "cartoon"  # a folder of drawings, not photographs


class SourceError(Exception):
    """The stamps are missing or a class came out empty: one line for the user."""


def stamps(source: Path, folders: tuple[str, ...]) -> list[Path]:
    """Every photo stamp (.png) under `folders`, sorted, without the drawings in `cartoon` folders."""
    found = []
    for folder in folders:
        root = source / folder
        if not root.is_dir():
            raise SourceError(f"no folder {root}: install the Debian package ({INSTALL}) or pass --source DIR")
        found += [p for p in root.rglob("*.png") if LEFT_OUT not in p.relative_to(source).parts[:-1]]
    return sorted(found)


def out_name(path: Path, source: Path) -> str:
    """`animals/mammals/bovines/cow.png` -> `animals_mammals_bovines_cow.png`: unique across sub-folders."""
    return "_".join(path.relative_to(source).parts)


def split(paths: list[Path], source: Path, test_fraction: float) -> tuple[list[Path], list[Path]]:
    """(train, test): the test set is the round(n * fraction) paths whose SHA-1 of the relative path is
    smallest, so the split depends only on the file names, not on the order, the size or the machine."""
    def key(p: Path) -> str:
        return hashlib.sha1(p.relative_to(source).as_posix().encode()).hexdigest()

    ranked = sorted(paths, key=key)
    n_test = round(len(paths) * test_fraction)
    if len(paths) >= 2:
        n_test = min(max(n_test, 1), len(paths) - 1)
    test = set(ranked[:n_test])
    return [p for p in paths if p not in test], [p for p in paths if p in test]


def square(path: Path, size: int) -> Image.Image:
    """The stamp's object, cropped to its alpha, centred on a white square, resized to size x size RGB."""
    im = Image.open(path).convert("RGBA")
    box = im.getchannel("A").getbbox() or (0, 0, *im.size)
    im = im.crop(box)
    side = max(im.size)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(im, ((side - im.width) // 2, (side - im.height) // 2))
    return canvas.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def prepare_out(out: Path) -> None:
    """An empty or absent folder, or one this script wrote (its marker): never replace other files."""
    if out.exists() and not out.is_dir():
        raise SourceError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise SourceError(f"--out {out} is not empty and was not written by this script: choose another folder")
        for sub in ("id", "ood"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by benchmarks/real_images.py; rebuilt on the next run\n")


def write(paths: list[Path], source: Path, folder: Path, size: int, sources: list[str]) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        name = out_name(p, source)
        square(p, size).save(folder / name)
        sources.append(f"{(folder / name).as_posix()}\t{p.as_posix()}")
    return len(paths)


def build(source: Path, out: Path, size: int, test_fraction: float) -> dict[str, dict[str, int]]:
    """Write the ID classes (train/test) and OOD sets under `out`; return the counts {set: {class: n}}."""
    if not source.is_dir():
        raise SourceError(f"no Tux Paint stamps at {source}: install the Debian package ({INSTALL}) "
                          "or pass --source DIR")
    picked = {name: stamps(source, folders) for name, folders in {**ID_CLASSES, **OOD_SETS}.items()}
    for name, paths in picked.items():
        if not paths:
            raise SourceError(f"no photo stamps for {name!r} under {source}: is it Tux Paint's stamps folder?")
    prepare_out(out)
    counts: dict[str, dict[str, int]] = {"id/train": {}, "id/test": {}, "ood": {}}
    sources: list[str] = []
    for name in ID_CLASSES:
        train, test = split(picked[name], source, test_fraction)
        counts["id/train"][name] = write(train, source, out / "id" / "train" / name, size, sources)
        counts["id/test"][name] = write(test, source, out / "id" / "test" / name, size, sources)
    for name in OOD_SETS:
        counts["ood"][name] = write(picked[name], source, out / "ood" / name, size, sources)
    (out / "SOURCES.tsv").write_text("image\tstamp (GPL-2, Tux Paint)\n"
                                     + "\n".join(s.removeprefix(out.as_posix() + "/") for s in sources) + "\n")
    return counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder to write (empty, absent, or written by this script)")
    p.add_argument("--size", type=int, choices=(32, 64, 224), default=32, help="image side in pixels")
    p.add_argument("--test-fraction", type=float, default=0.3, help="share of each ID class held out for test")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="Tux Paint's stamps folder")
    a = p.parse_args()
    if not 0.0 < a.test_fraction < 1.0:
        p.error("--test-fraction must be between 0 and 1")
    try:
        counts = build(a.source, a.out, a.size, a.test_fraction)
    except SourceError as e:
        print(f"real_images.py: {e}", file=sys.stderr)
        return 2
    print(f"real images from {a.source} ({a.size}x{a.size} PNG) in {a.out}")
    for part, by_class in counts.items():
        cells = ", ".join(f"{k} {v}" for k, v in by_class.items())
        print(f"  {part:9s} {sum(by_class.values()):4d}  ({cells})")
    print(f"use: lbfood pretrain --data imagefolder:{a.out}/id ...; "
          f"lbfood report RUN --ood folder:{a.out}/ood/objects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
