"""Tiny fake datasets in each real on-disk format, for tests (no downloads).

Every writer returns what it wrote (pixels, labels, paths) so tests can assert exact values.
Pixels follow `pattern(i, h, w)`: deterministic and different for every image.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGENET_CLASSES = ["n01498041", "n01518878", "n01580077", "n01601694"]  # from the ImageNet-100 list


def pattern(i: int, h: int, w: int, channels: int = 3) -> np.ndarray:
    """uint8 (h, w, channels) image number i: a smooth ramp offset by i, so images differ."""
    y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(channels), indexing="ij")
    return ((i * 37 + y * 7 + x * 3 + c * 50) % 256).astype(np.uint8)


def _cifar_pickle(obj: dict) -> bytes:
    """Protocol 2 with numpy.core names, like the official (Python 2 era) CIFAR batches."""
    return pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def _cifar_arrays(n: int, start: int, n_classes: int) -> tuple[np.ndarray, list[int]]:
    images = np.stack([pattern(start + i, 32, 32) for i in range(n)]) if n else np.zeros((0, 32, 32, 3), np.uint8)
    labels = [(start + i) % n_classes for i in range(n)]
    return images, labels


def _rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> CIFAR's (N, 3072) rows: the R plane, then G, then B, each row-major."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_cifar10(root: Path, n_train: int = 10, n_test: int = 4) -> dict:
    """root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}; train images spread over 5 batches."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = _cifar_arrays(n_train, 0, 10)
    test_x, test_y = _cifar_arrays(n_test, 1000, 10)
    for b, idx in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        batch = {"batch_label": f"training batch {b} of 5", "labels": [train_y[i] for i in idx],
                 "data": _rows(train_x[idx]), "filenames": [f"img_{i}.png" for i in idx]}
        (folder / f"data_batch_{b}").write_bytes(_cifar_pickle(batch))
    test = {"batch_label": "testing batch 1 of 1", "labels": test_y, "data": _rows(test_x),
            "filenames": [f"test_{i}.png" for i in range(n_test)]}
    (folder / "test_batch").write_bytes(_cifar_pickle(test))
    meta = {"num_cases_per_batch": 10000, "label_names": CIFAR10_CLASSES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(_cifar_pickle(meta))
    return {"train": (train_x, np.array(train_y)), "test": (test_x, np.array(test_y)), "classes": CIFAR10_CLASSES}


def write_cifar100(root: Path, n_train: int = 6, n_test: int = 3) -> dict:
    """root/cifar-100-python/{train,test,meta} with fine and coarse labels."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    classes = [f"class_{i:02d}" for i in range(100)]
    out = {"classes": classes}
    for split, n, start in (("train", n_train, 0), ("test", n_test, 500)):
        x, y = _cifar_arrays(n, start, 100)
        batch = {"filenames": [f"{split}_{i}.png" for i in range(n)], "batch_label": f"{split} batch",
                 "fine_labels": y, "coarse_labels": [v // 5 for v in y], "data": _rows(x)}
        (folder / split).write_bytes(_cifar_pickle(batch))
        out[split] = (x, np.array(y))
    meta = {"fine_label_names": classes, "coarse_label_names": [f"super_{i}" for i in range(20)]}
    (folder / "meta").write_bytes(_cifar_pickle(meta))
    return out


def write_svhn(root: Path, n: int = 5, in_subdir: bool = True) -> np.ndarray:
    """SVHN's test_32x32.mat (X: uint8 (32, 32, 3, N), y: (N, 1) in 1..10) under root/svhn/ (or root/)."""
    import scipy.io

    folder = Path(root) / "svhn" if in_subdir else Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    images = np.stack([pattern(i + 7, 32, 32) for i in range(n)])
    y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(str(folder / "test_32x32.mat"), {"X": images.transpose(1, 2, 3, 0), "y": y})
    return images


def write_idx(root: Path, which: str = "mnist", n_train: int = 6, n_test: int = 3, gz: bool = False) -> dict:
    """torchvision's raw layout: root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]."""
    folder = Path(root) / {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}[which] / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, split, n, start in (("train", "train", n_train, 0), ("t10k", "test", n_test, 100)):
        x = np.stack([pattern(start + i, 28, 28, 1)[..., 0] for i in range(n)])
        y = (np.arange(n) + start) % 10
        _write_file(folder / f"{prefix}-images-idx3-ubyte", struct.pack(">IIII", 0x803, n, 28, 28) + x.tobytes(), gz)
        _write_file(folder / f"{prefix}-labels-idx1-ubyte", struct.pack(">II", 0x801, n) + y.astype(np.uint8).tobytes(),
                    gz)
        out[split] = (x, y)
    return out


def _write_file(path: Path, data: bytes, gz: bool) -> None:
    if gz:
        Path(f"{path}.gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def write_png(path: Path, arr: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")
    return arr


def write_jpeg(path: Path, arr: np.ndarray, quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="JPEG", quality=quality)


def write_image_folder(root: Path, classes: list[str], n_per_class: int = 2, size: tuple[int, int] = (32, 32),
                       start: int = 0) -> dict[str, list[np.ndarray]]:
    """root/<class>/img_<k>.png (lossless, so pixels are exact); returns class -> images in file order."""
    out: dict[str, list[np.ndarray]] = {}
    k = start
    for c in classes:
        out[c] = []
        for j in range(n_per_class):
            out[c].append(write_png(Path(root) / c / f"img_{j:03d}.png", pattern(k, size[1], size[0])))
            k += 1
    return out


def write_flat_folder(path: Path, n: int = 3, size: tuple[int, int] = (32, 32), ext: str = "png",
                      start: int = 0) -> list[np.ndarray]:
    """path/img_<k>.<ext>; png keeps exact pixels, jpg/jpeg are lossy (compare with decode())."""
    images = []
    for k in range(n):
        arr = pattern(start + k, size[1], size[0])
        p = Path(path) / f"img_{k:03d}.{ext}"
        if ext.lower() in ("jpg", "jpeg"):
            write_jpeg(p, arr)
        else:
            write_png(p, arr)
        images.append(arr)
    return images


def write_class_list(path: Path, classes: list[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# test class list\n" + "\n".join(classes) + "\n")
    return path


def write_imagenet_subset(root: Path, classes: list[str] | None = None, n: int = 2,
                          size: tuple[int, int] = (40, 30)) -> dict[str, dict[str, list[Path]]]:
    """root/imagenet/{train,val}/<wnid>/<wnid>_<k>.JPEG (JPEG, like ILSVRC-2012)."""
    classes = classes or IMAGENET_CLASSES
    out: dict[str, dict[str, list[Path]]] = {"train": {}, "val": {}}
    k = 0
    for split in ("train", "val"):
        for c in classes:
            out[split][c] = []
            for j in range(n):
                p = Path(root) / "imagenet" / split / c / f"{c}_{j}.JPEG"
                write_jpeg(p, pattern(k, size[1], size[0]))
                out[split][c].append(p)
                k += 1
    return out


def png16(path: Path, arr: np.ndarray) -> None:
    """Write a 16-bit PNG (uint16 (H, W) gray or (H, W, 3) RGB) with a minimal encoder (PIL cannot write 16-bit RGB)."""
    arr = np.asarray(arr, dtype=">u2")
    h, w = arr.shape[:2]
    color = 2 if arr.ndim == 3 else 0
    raw = b"".join(b"\x00" + arr[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                           + chunk(b"IEND", b""))


def write_mixed_images(folder: Path) -> dict[str, np.ndarray | None]:
    """One file per case `lbfood score` must handle; value = expected uint8 RGB, or None when undecodable.

    rgb.png, photo.jpg (expected None: lossy, compare with decode), gray.png, rgba.png, gray16.png,
    palette.png, truncated.jpg (bad), notes.txt (bad, and not an image extension), fake.png (text named .png).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, np.ndarray | None] = {}
    rgb = pattern(1, 8, 12)
    out["rgb.png"] = write_png(folder / "rgb.png", rgb)
    write_jpeg(folder / "photo.jpg", pattern(2, 16, 16))
    out["photo.jpg"] = None
    gray = pattern(3, 8, 8, 1)[..., 0]
    write_png(folder / "gray.png", gray)
    out["gray.png"] = np.repeat(gray[..., None], 3, axis=2)
    rgba = pattern(4, 8, 8, 4)
    write_png(folder / "rgba.png", rgba)
    out["rgba.png"] = rgba[..., :3].copy()
    g16 = np.array([[0, 257, 65535, 1000, 32768, 128]], dtype=np.uint16)
    png16(folder / "gray16.png", g16)
    out["gray16.png"] = np.repeat(np.array([[0, 1, 255, 4, 128, 0]], np.uint8)[..., None], 3, axis=2)
    pal = Image.fromarray(pattern(5, 6, 6)).convert("P", palette=Image.ADAPTIVE, colors=8)
    pal.save(folder / "palette.png")
    out["palette.png"] = np.asarray(pal.convert("RGB"))
    buf = io.BytesIO()
    Image.fromarray(pattern(6, 64, 64)).save(buf, format="JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    out["truncated.jpg"] = None
    (folder / "notes.txt").write_text("not an image\n")
    out["notes.txt"] = None
    (folder / "fake.png").write_text("not a png either\n")
    out["fake.png"] = None
    return out
