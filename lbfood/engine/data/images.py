"""Image files: decode to 8-bit RGB, resize + centre crop, list a folder, and load small images into memory.

Preprocessing follows torchvision's test transform on the CIFAR benchmarks (`Resize(s)` then
`CenterCrop(s)` on a PIL image), so OOD folders decoded here match what ODIN/ReAct/CIDER evaluated.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from lbfood.engine.data.base import ImageSet, LoadOptions
from lbfood.engine.data.walk import special_kind, walk_files
from lbfood.engine.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
# Above this input size images stay on disk as a file list and a DataLoader decodes them per batch.
IN_MEMORY_MAX_SIZE = 64
# The most pixels one image may have (8000×8000, about 192 MB decoded as RGB); a larger file is refused
# before decoding. LBFOOD_MAX_PIXELS overrides it (PIL itself refuses more than twice its own ~89 MP).
MAX_PIXELS = 64_000_000


def max_pixels() -> int:
    """The most pixels (width × height) `decode` accepts: `LBFOOD_MAX_PIXELS`, else MAX_PIXELS."""
    text = os.environ.get("LBFOOD_MAX_PIXELS", "").strip()
    if not text:
        return MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"LBFOOD_MAX_PIXELS must be a positive whole number of pixels, got {text!r}; "
                          f"unset it for the default ({MAX_PIXELS:,})")
    return value


def _open_regular(path: Path):
    """`path` opened for binary reading, or DataError if it is not a regular file. Opened without
    blocking, so a named pipe with no writer is refused instead of waiting forever."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        kind = special_kind(os.fstat(fd))
        if kind is not None:
            raise DataError(f"{path}: not a regular file ({kind}); pass image files")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def decode(path: str | os.PathLike, *, exif_orientation: bool = False) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) RGB.

    Grayscale, palette, RGBA (alpha dropped, as torchvision's loader does) and 16-bit images become
    8-bit RGB; 16-bit values v are scaled as round(v / 257), so 65535 -> 255. A truncated, corrupt or
    non-image file, a named pipe or device, and an image of more than `max_pixels()` pixels (checked
    from the header, before decoding) raise DataError naming it (truncated images are never silently
    padded). `exif_orientation` applies the EXIF rotation; off by default because the benchmarks'
    loaders ignore it.
    """
    path = Path(path)
    cap = max_pixels()
    try:
        with _open_regular(path) as f:
            # Our cap replaces PIL's DecompressionBombWarning (emitted by Image.open above ~89 MP).
            # The filter is process-wide while active; it only ever silences that one PIL warning.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(f)
            with img:
                w, h = img.size
                if w * h > cap:
                    raise DataError(f"{path}: image is {w}×{h} ({w * h / 1e6:.0f} megapixels), more than the "
                                    f"{cap / 1e6:g} megapixels lbfood decodes; shrink it, or raise the limit "
                                    f"with LBFOOD_MAX_PIXELS={w * h}")
                img.load()  # forces a full decode: a truncated file fails here
                if exif_orientation:
                    img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except FileNotFoundError:
        kind = "broken symbolic link" if path.is_symlink() else "file not found"
        raise DataError(f"{path}: {kind}") from None
    except (PermissionError, IsADirectoryError) as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file PIL can read (expected one of "
                        f"{', '.join(IMAGE_EXTENSIONS)})") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: image too large to decode safely ({e}); shrink it") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL's truncated/corrupt-data errors
        raise DataError(f"{path}: cannot decode image ({e}); the file is truncated or corrupt") from None


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale (mode "I" is how older Pillow opens 16-bit PNGs); PIL's own convert clips.
        a = np.asarray(img).astype(np.int64)
        a = np.clip(a, 0, 65535)
        gray = ((a * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P":
        img = img.convert("RGBA")  # a palette with transparency must go through RGBA first
    if mode in ("LA", "La"):
        img = img.convert("L")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def resize_center_crop(arr: np.ndarray, size: int, resize: int | None = None) -> np.ndarray:
    """Resize the shorter side to `resize` (default `size`; bilinear, antialiased), then centre crop size×size.

    The same arithmetic as torchvision's `Resize(resize)` + `CenterCrop(size)` on a PIL image.
    Accepts uint8 (H, W), (H, W, 1) or (H, W, 3); returns uint8 (size, size, 3).
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    resize = resize or size
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    h, w = arr.shape[:2]
    if (h, w) != (size, size) or resize != size:
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = resize, int(resize * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_h, new_w) != (h, w):
            arr = np.asarray(Image.fromarray(arr).resize((new_w, new_h), Image.BILINEAR))
        h, w = arr.shape[:2]
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
        arr = arr[top:top + size, left:left + size]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr, dtype=np.uint8)


def eval_transform(arr: np.ndarray, size: int) -> np.ndarray:
    """A decoded uint8 image as evaluation sees it at a run's input size, (size, size, 3).

    Small runs (≤ 64 px, the CIFAR benchmarks): shorter side resized to `size`, then centre crop.
    Larger runs (ImageNet): `Resize(round(size·256/224))` + `CenterCrop(size)`, the standard test transform.
    """
    return resize_center_crop(arr, size, size if size <= IN_MEMORY_MAX_SIZE else int(round(size * 256 / 224)))


def resize_all(images: np.ndarray, size: int) -> np.ndarray:
    """`resize_center_crop` over a uint8 (N, H, W[, C]) array; a no-op when already size×size."""
    if images.shape[1:3] == (size, size) and images.ndim == 4 and images.shape[3] == 3:
        return images
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = resize_center_crop(img, size)
    return out


def resize_in_memory(images: np.ndarray, size: int, name: str) -> torch.Tensor:
    """An in-memory dataset's uint8 (N, H, W[, C]) images at `size` px, as a tensor.

    Raises DataError above 64 px: a whole array dataset at ImageNet size would not fit in memory.
    """
    if size > IN_MEMORY_MAX_SIZE:
        h, w = images.shape[1:3]
        raise DataError(f"{name} is {h}×{w} and held in memory; image sizes above {IN_MEMORY_MAX_SIZE} px are "
                        f"not supported for it (asked for {size}): use a 32-px architecture")
    return torch.from_numpy(np.ascontiguousarray(resize_all(images, size)))


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files in `folder` (by extension, case-insensitive), sorted; hidden files are skipped.

    Hidden files include macOS `._name.jpg` resource forks, which some OOD tarballs carry. Links are
    followed, but each real folder is walked once and each real file listed once (see `walk`).
    """
    return walk_files(folder, recursive=recursive, keep=is_image_name)


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _decode_small(path: Path, size: int) -> np.ndarray | None:
    try:
        return resize_center_crop(decode(path), size)
    except DataError:
        return None


def load_folder_small(files: Sequence[str | os.PathLike], size: int,
                      workers: int | None = None) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Decode, resize and centre-crop `files` into memory.

    Returns (uint8 (N, size, size, 3), number of undecodable files skipped, LongTensor of the kept
    files' positions in `files`). PIL releases the GIL while decoding, so threads give a real speed-up.
    """
    files = [Path(f) for f in files]
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    ok = np.zeros(len(files), dtype=bool)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for i, arr in enumerate(pool.map(lambda f: _decode_small(f, size), files)):
            if arr is not None:
                out[i] = arr
                ok[i] = True
    kept = np.flatnonzero(ok)
    images = torch.from_numpy(out[kept] if len(kept) < len(files) else out)
    return images, int(len(files) - len(kept)), torch.from_numpy(kept).long()


def image_set(name: str, files: Sequence[Path], opts: LoadOptions, *, classes: tuple[str, ...] = (),
              labels: Sequence[int] | None = None, where: Path | None = None) -> ImageSet:
    """An ImageSet from image files, following the image-size rule.

    `opts.image_size` <= 64: decoded into memory (undecodable files are left out and counted in
    `skipped`); larger: a file list for the DataLoader. `where` names the folder in the error raised
    when not one file decodes.
    """
    label_t = torch.full((len(files),), -1, dtype=torch.long) if labels is None \
        else torch.as_tensor(list(labels), dtype=torch.long)
    if opts.image_size > IN_MEMORY_MAX_SIZE:
        return ImageSet(name, classes, files=tuple(str(f) for f in files), labels=label_t)
    images, skipped, kept = load_folder_small(files, opts.image_size)
    if files and not len(kept):
        raise DataError(f"{name}: none of the {len(files)} image files under {where or Path(files[0]).parent} "
                        "could be decoded; they are corrupt or not images")
    return ImageSet(name, classes, images=images, labels=label_t[kept], skipped=skipped)
