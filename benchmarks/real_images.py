"""Real photographs as an ID/OOD benchmark, written in lbfood's folder layout from two Debian packages.

    DIR/id/train/<class>/*.png, DIR/id/test/<class>/*.png   ID: 5 classes (birds, mammals, fruit,
                                                            vegetables, flowers)
    DIR/ood/objects/*.png                                   OOD, near: household objects and vehicles
    DIR/ood/scenes/*.png                                    OOD, far: monuments, dams, wind and solar farms

Sources (nothing is downloaded; both install with apt-get):
- ID and `objects`: Tux Paint's photo stamps, Debian package `tuxpaint-stamps-default` (GPL-2, Tux Paint
  contributors), under /usr/share/tuxpaint/stamps/<category>/: photographs of one object each, cut out on
  a transparent background (the `cartoon` folders hold drawings and are left out). Each is cropped to its
  object and padded to a white square, so ID and `objects` share one style: `objects` is "unseen classes".
- `scenes`: GCompris' photographs, Debian package `gcompris-qt-data` (per-image public domain, CC0 or
  CC-BY(-SA), listed in the READMEs copied to DIR/licences/), read out of its Qt resource files
  (/usr/share/gcompris-qt/rcc/*.rcc): full-frame photos, centre-cropped to a square.
  `--no-scenes` builds without it.

It is small (about 170 ID photos, 50 + 100 OOD): a check that a method works on real photos, not a
benchmark to rank methods by. The split is fixed (a hash of each photo's path), so every size and every
machine gets the same one, and the images are the same bytes on every run.

    python benchmarks/real_images.py --out DIR [--size 32|64|224] [--test-fraction 0.3] [--no-scenes]
    lbfood pretrain --data imagefolder:DIR/id ...
    lbfood report --model RUN --ood objects=folder:DIR/ood/objects --ood scenes=folder:DIR/ood/scenes
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

TUXPAINT = Path("/usr/share/tuxpaint/stamps")
GCOMPRIS = Path("/usr/share/gcompris-qt/rcc")
INSTALL_TUXPAINT = "apt-get install tuxpaint-stamps-default"
INSTALL_GCOMPRIS = "apt-get install gcompris-qt-data"
MARKER = ".lbfood-real-images"  # an output folder this script wrote (and may rebuild)

# name -> Tux Paint stamp folders (searched recursively)
ID_CLASSES: dict[str, tuple[str, ...]] = {
    "birds": ("animals/birds",),
    "mammals": ("animals/mammals",),
    "fruit": ("food/fruit",),
    "vegetables": ("food/vegetables",),
    "flowers": ("plants/flowers",),
}
OBJECTS = ("household", "vehicles")
DRAWINGS = "cartoon"  # a Tux Paint folder of drawings, not photographs
# GCompris resource file -> folders inside it (searched recursively) that hold photos of scenes
SCENES: dict[str, tuple[str, ...]] = {
    "categorization.rcc": ("gcompris/src/activities/categorization/resource/images/monuments",
                           "gcompris/src/activities/categorization/resource/images/renewable"),
    "explore_monuments.rcc": ("gcompris/src/activities/explore_monuments/resource",),
}
PHOTO_SUFFIXES = (".webp", ".jpg", ".jpeg", ".png")
SAME_PHOTO = 0.99  # correlation of two 16x16 grey thumbnails above which they are one photo: the
# re-encoded repeats in GCompris measure 0.9998+, the closest two different photos (two cars) 0.95


class SourceError(Exception):
    """A package is missing, or a set came out empty: one line for the user."""


@dataclass(frozen=True)
class Photo:
    key: str  # unique, stable path ("tuxpaint/animals/birds/owl.png"): names the output and fixes the split
    read: Callable[[], bytes]
    fit: str  # "pad" (a cut-out object: whole, on white) or "crop" (a full-frame photo: centre square)


# ----------------------------------------------------------------------------- sources


def tuxpaint_photos(source: Path, folders: tuple[str, ...]) -> list[Photo]:
    """Every photo stamp (.png) under `folders`, without the drawings in `cartoon` folders."""
    if not source.is_dir():
        raise SourceError(f"no Tux Paint stamps at {source}: install the Debian package ({INSTALL_TUXPAINT}) "
                          "or pass --tuxpaint DIR")
    found = []
    for folder in folders:
        root = source / folder
        if not root.is_dir():
            raise SourceError(f"no folder {root}: is {source} Tux Paint's stamps folder? ({INSTALL_TUXPAINT})")
        found += [p for p in root.rglob("*.png") if DRAWINGS not in p.relative_to(source).parts[:-1]]
    return [Photo(f"tuxpaint/{p.relative_to(source).as_posix()}", p.read_bytes, "pad") for p in sorted(found)]


def read_rcc(data: bytes) -> dict[str, bytes]:
    """The files in a Qt resource file (rcc format 1-3): path -> bytes, zlib-compressed entries inflated.
    Layout (Qt's rcc.cpp): a header of offsets, a tree of 14/22-byte nodes, UTF-16 names, length-prefixed data."""
    if data[:4] != b"qres":
        raise SourceError("not a Qt resource file (no 'qres' header)")
    version, tree, blobs, names = struct.unpack(">IIII", data[4:20])
    node = 14 if version == 1 else 22

    def name(off: int) -> str:
        (n,) = struct.unpack(">H", data[names + off:names + off + 2])
        return data[names + off + 6:names + off + 6 + 2 * n].decode("utf-16-be")

    out: dict[str, bytes] = {}
    todo = [(0, "")]
    while todo:
        i, prefix = todo.pop()
        at = tree + i * node
        name_off, flags = struct.unpack(">IH", data[at:at + 6])
        path = f"{prefix}{name(name_off)}" if i else ""
        if flags & 2:  # a directory: its children are nodes first .. first + count
            count, first = struct.unpack(">II", data[at + 6:at + 14])
            todo += [(c, f"{path}/" if path else "") for c in range(first, first + count)]
            continue
        (off,) = struct.unpack(">I", data[at + 10:at + 14])
        (size,) = struct.unpack(">I", data[blobs + off:blobs + off + 4])
        blob = data[blobs + off + 4:blobs + off + 4 + size]
        if flags & 4:
            raise SourceError("this GCompris build compresses its resources with zstd, which this script cannot read")
        out[path] = zlib.decompress(blob[4:]) if flags & 1 else blob  # qCompress: 4-byte length, then zlib
    return out


def gcompris_photos(source: Path, licences: dict[str, bytes]) -> list[Photo]:
    """The scene photos in GCompris' resource files, one copy of each (some appear in two activities);
    their READMEs (per-image author, source and licence) go into `licences`."""
    if not source.is_dir():
        raise SourceError(f"no GCompris resources at {source}: install the Debian package ({INSTALL_GCOMPRIS}), "
                          "pass --gcompris DIR, or build without scenes (--no-scenes)")
    found, seen = [], set()
    for rcc, folders in SCENES.items():
        if not (source / rcc).is_file():
            raise SourceError(f"no {source / rcc}: is {source} GCompris' rcc folder? ({INSTALL_GCOMPRIS})")
        files = read_rcc((source / rcc).read_bytes())
        for path in sorted(files):
            if not any(path.startswith(f"{f}/") for f in folders):
                continue
            if path.rsplit("/", 1)[-1] == "README":
                licences[f"gcompris_{path.replace('/', '_')}.txt"] = files[path]
            elif path.lower().endswith(PHOTO_SUFFIXES):
                digest = hashlib.sha1(files[path]).hexdigest()
                if digest not in seen:
                    seen.add(digest)
                    found.append(Photo(f"gcompris/{rcc.removesuffix('.rcc')}/{path}",
                                       (lambda b=files[path]: b), "crop"))
    return found


# ----------------------------------------------------------------------------- split, images, output


def split(photos: list[Photo], test_fraction: float) -> tuple[list[Photo], list[Photo]]:
    """(train, test): the test set is the round(n * fraction) photos whose SHA-1 of the key is smallest
    (at least one, never all), so the split depends only on the names, not on order, size or machine."""
    ranked = sorted(photos, key=lambda p: hashlib.sha1(p.key.encode()).hexdigest())
    n_test = round(len(photos) * test_fraction)
    if len(photos) >= 2:
        n_test = min(max(n_test, 1), len(photos) - 1)
    test = {p.key for p in ranked[:n_test]}
    return [p for p in photos if p.key not in test], [p for p in photos if p.key in test]


def square(photo: Photo, size: int) -> Image.Image:
    """size x size RGB: a cut-out cropped to its alpha and centred on white, or a photo's centre square."""
    im = Image.open(io.BytesIO(photo.read())).convert("RGBA")
    if photo.fit == "pad":
        im = im.crop(im.getchannel("A").getbbox() or (0, 0, *im.size))
        side = max(im.size)
        canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
        canvas.alpha_composite(im, ((side - im.width) // 2, (side - im.height) // 2))
        im = canvas
    else:
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side))
    return im.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def distinct(sets: dict[str, list[Photo]]) -> dict[str, list[Photo]]:
    """`sets` without repeats: a photo whose 16x16 grey thumbnail correlates above SAME_PHOTO with one
    kept earlier (in `sets` order) is dropped, so no photo is in two sets, or in both train and test.
    GCompris ships some monuments in two activities, re-encoded (so their bytes differ)."""
    kept: list[np.ndarray] = []
    out: dict[str, list[Photo]] = {}
    for name, photos in sets.items():
        out[name] = []
        for p in photos:
            v = np.asarray(square(p, 16).convert("L"), dtype=np.float64).ravel()
            v = (v - v.mean()) / (v.std() * np.sqrt(v.size) or 1.0)
            if not kept or float(np.max(np.stack(kept) @ v)) <= SAME_PHOTO:
                kept.append(v)
                out[name].append(p)
    return out


def out_name(photo: Photo) -> str:
    """`tuxpaint/animals/mammals/bovines/cow.png` -> `animals_mammals_bovines_cow.png`: unique per set."""
    stem = photo.key.split("/", 1)[1].rsplit(".", 1)[0]
    return stem.replace("/", "_") + ".png"


def prepare_out(out: Path) -> None:
    """An empty or absent folder, or one this script wrote (its marker): never replace other files."""
    if out.exists() and not out.is_dir():
        raise SourceError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise SourceError(f"--out {out} is not empty and was not written by this script: choose another folder")
        for sub in ("id", "ood", "licences"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by benchmarks/real_images.py; rebuilt on the next run\n")


def write(photos: list[Photo], folder: Path, size: int, sources: list[str]) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    for p in photos:
        square(p, size).save(folder / out_name(p))
        sources.append(f"{folder.as_posix()}/{out_name(p)}\t{p.key}")
    return len(photos)


def build(out: Path, size: int, test_fraction: float, tuxpaint: Path = TUXPAINT,
          gcompris: Path | None = GCOMPRIS) -> dict[str, dict[str, int]]:
    """Write the ID classes (train/test) and OOD sets under `out` (scenes only when `gcompris` is given);
    return the counts {part: {class or set: n}}. Every source is read before anything is written."""
    classes = {name: tuxpaint_photos(tuxpaint, folders) for name, folders in ID_CLASSES.items()}
    ood = {"objects": tuxpaint_photos(tuxpaint, OBJECTS)}
    licences: dict[str, bytes] = {}
    if gcompris is not None:
        ood["scenes"] = gcompris_photos(gcompris, licences)
    unique = distinct({**classes, **ood})
    classes, ood = {k: unique[k] for k in classes}, {k: unique[k] for k in ood}
    for name, photos in unique.items():
        if not photos:
            raise SourceError(f"no photos for {name!r}: is the package complete? "
                              f"({INSTALL_TUXPAINT}; {INSTALL_GCOMPRIS})")
    prepare_out(out)
    counts: dict[str, dict[str, int]] = {"id/train": {}, "id/test": {}, "ood": {}}
    sources: list[str] = []
    for name, photos in classes.items():
        train, test = split(photos, test_fraction)
        counts["id/train"][name] = write(train, out / "id" / "train" / name, size, sources)
        counts["id/test"][name] = write(test, out / "id" / "test" / name, size, sources)
    for name, photos in ood.items():
        counts["ood"][name] = write(photos, out / "ood" / name, size, sources)
    (out / "licences").mkdir()
    (out / "licences" / "tuxpaint.txt").write_text(
        "Tux Paint stamps (Debian package tuxpaint-stamps-default): GPL-2, copyright 2002-2022 Bill Kendrick "
        "and the Tux Paint contributors; see /usr/share/doc/tuxpaint-stamps-default/copyright\n")
    for fname, text in licences.items():
        (out / "licences" / fname).write_bytes(text)
    rel = [s.removeprefix(out.as_posix() + "/") for s in sources]
    (out / "SOURCES.tsv").write_text("image\tsource (tuxpaint/: stamps folder; gcompris/: rcc file and path)\n"
                                     + "\n".join(rel) + "\n")
    return counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder to write (empty, absent, or written by this script)")
    p.add_argument("--size", type=int, choices=(32, 64, 224), default=32, help="image side in pixels")
    p.add_argument("--test-fraction", type=float, default=0.3, help="share of each ID class held out for test")
    p.add_argument("--tuxpaint", type=Path, default=TUXPAINT, help="Tux Paint's stamps folder")
    p.add_argument("--gcompris", type=Path, default=GCOMPRIS, help="GCompris' rcc folder (the scenes)")
    p.add_argument("--no-scenes", action="store_true", help="build without GCompris (no ood/scenes)")
    a = p.parse_args()
    if not 0.0 < a.test_fraction < 1.0:
        p.error("--test-fraction must be between 0 and 1")
    try:
        counts = build(a.out, a.size, a.test_fraction, a.tuxpaint, None if a.no_scenes else a.gcompris)
    except SourceError as e:
        print(f"real_images.py: {e}", file=sys.stderr)
        return 2
    print(f"real photos ({a.size}x{a.size} PNG) in {a.out}")
    for part, by_class in counts.items():
        cells = ", ".join(f"{k} {v}" for k, v in by_class.items())
        print(f"  {part:9s} {sum(by_class.values()):4d}  ({cells})")
    oods = " ".join(f"--ood {name}=folder:{a.out}/ood/{name}" for name in counts["ood"])
    print(f"use: lbfood pretrain --data imagefolder:{a.out}/id ...; lbfood report --model RUN {oods}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
