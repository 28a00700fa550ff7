"""`backdrops`: the built-in benchmark, 32×32 shapes over textured backgrounds, made in memory.

Ten object classes (procedural shapes with a dark outline, random colour, size, position and a tilt
of up to ±30°) are drawn over procedural backgrounds (smooth noise, stripes, checkers, gradients,
blobs) that every class shares: the background family and colours are drawn independently of the
label, so they carry no class information. The outline and the tilt limit are what let a small
ResNet learn the classes in a few CPU epochs (full rotation or no outline: a long initial plateau). The OOD splits reuse the same background generator, which gives a controlled version
of the paper's observation (Sec. I, Fig. 1) that OOD images share background regions with ID ones:

- `scenes`: the backgrounds with no object (the hard case L_LFF targets),
- `novel`: unseen shapes on the same backgrounds (near OOD),
- `noise`: pixel noise (far OOD).

Every split is a pure function of (split, seed): numpy's PCG64 seeded by (seed, split, stream), with
the background and the object on separate streams, so an image's background does not depend on
whether an object is drawn over it. Shapes are signed-distance functions evaluated on the pixel grid
for a whole batch at once, with a one-pixel anti-aliased edge.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lbfood.engine.data import register
from lbfood.engine.data.backdrops_shapes import SHAPES
from lbfood.engine.data.base import DatasetSpec, ImageSet, LoadOptions
from lbfood.engine.errors import DataError

CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "cross", "ring", "star", "diamond", "crescent", "arrow", "letter_z",
)
# Shapes of the `novel` OOD split: none of them is one of CLASSES.
NOVEL_SHAPES: tuple[str, ...] = ("heart", "hourglass", "trefoil", "frame", "dumbbell", "bolt")
BACKGROUNDS: tuple[str, ...] = ("smooth", "stripes", "checkers", "gradient", "blobs")
NOISE_KINDS: tuple[str, ...] = ("uniform", "gaussian", "blocks")

SPLITS: dict[str, int] = {"train": 5000, "test": 1000, "scenes": 1000, "novel": 1000, "noise": 1000}
SIZE = 32
# Per-channel mean and std of the train split (seed 0) on [0, 1] pixels; a test recomputes them.
MEAN = (0.4596, 0.4627, 0.4586)
STD = (0.2628, 0.2664, 0.2642)

_SPLIT_CODE = {name: i for i, name in enumerate(SPLITS)}
_BG_STREAM, _OBJ_STREAM, _GRAIN_STREAM = 0, 1, 2
_CHUNK = 1000  # images rendered per batch: bounds the float32 temporaries to ~100 MB
_PX = 2.0 / SIZE  # one pixel in grid units (the image spans [-1, 1])
_BG_CONTRAST = (0.2, 0.45)  # RGB distance between a background's two colours
# The object's edge is a dark outline (a constant-polarity cue, whatever the fill and background colours).
_OUTLINE_PX = 1.5
_OUTLINE_SHADE = 0.15  # outline colour = this × fill colour
_MAX_TILT = math.pi / 6  # objects are rotated by up to ±30°
_MIN_OBJ_CONTRAST = 0.4  # RGB distance from the object colour to the background's colour segment

_ax = (np.arange(SIZE, dtype=np.float32) + 0.5) * _PX - 1.0
_GX, _GY = np.meshgrid(_ax, _ax, indexing="xy")  # (32, 32): x along columns, y along rows


def generate(split: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One split: (uint8 images (N, 32, 32, 3), int64 labels (N,)); OOD splits are labelled -1.

    `split` is one of "train", "test" (ID, balanced classes), "scenes", "novel", "noise" (OOD).
    Results are cached per (split, seed); the caller gets its own copy.
    """
    if split not in SPLITS:
        raise DataError(f"backdrops: unknown split {split!r}; valid: {', '.join(SPLITS)}")
    images, labels = _cached(split, int(seed))
    return images.clone(), labels.clone()


@functools.cache
def _cached(split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels, _ = _render(split, seed)
    return images, labels


def _rng(seed: int, split: str, stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _SPLIT_CODE[split], stream])))


def _render(split: str, seed: int, objects: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, labels and object coverage alpha (N, 32, 32) in [0, 1] (zero where no object).

    `objects=False` renders the same images without their objects: the bare backgrounds.
    """
    n = SPLITS[split]
    if split == "noise":
        images = _noise(_rng(seed, split, _BG_STREAM), n)
        return _to_uint8(images), torch.full((n,), -1, dtype=torch.long), torch.zeros(n, SIZE, SIZE)
    bg = _background_params(_rng(seed, split, _BG_STREAM), n)
    draw = objects and split != "scenes"
    obj_rng = _rng(seed, split, _OBJ_STREAM)
    if split in ("train", "test"):
        shapes = CLASSES
        labels = kinds = obj_rng.permutation(np.arange(n) % len(CLASSES))  # exactly balanced
    else:  # scenes draws these too (and then no object), so nothing else depends on the split kind
        shapes = NOVEL_SHAPES
        labels, kinds = np.full(n, -1), obj_rng.integers(0, len(shapes), n)
    obj = _object_params(obj_rng, n, kinds, bg["c1"], bg["c2"])
    grain_rng = _rng(seed, split, _GRAIN_STREAM)
    out = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    alpha = np.zeros((n, SIZE, SIZE), dtype=np.float32)
    for lo in range(0, n, _CHUNK):
        sl = slice(lo, min(n, lo + _CHUNK))
        img = _draw_background({k: v[sl] for k, v in bg.items()})
        if draw:
            a, layer = _draw_objects({k: v[sl] for k, v in obj.items()}, shapes)
            img = img * (1.0 - a[..., None]) + layer
            alpha[sl] = a
        # Sensor-like grain over the whole image, drawn whether or not an object is present.
        img = img + grain_rng.standard_normal(img.shape, dtype=np.float32) * bg["grain"][sl, None, None, None]
        out[sl] = _to_uint8_np(img)
    return torch.from_numpy(out), torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(alpha)


def _to_uint8_np(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _to_uint8(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(_to_uint8_np(img))


# ---------------------------------------------------------------------------------------------------
# Backgrounds: a scalar texture t ∈ [0, 1] per pixel, mixed between two colours c1 and c2.


def _background_params(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    # c2: from c1 towards a uniform random colour, at an RGB distance drawn from _BG_CONTRAST.
    c1 = rng.random((n, 3), dtype=np.float32)
    towards = rng.random((n, 3), dtype=np.float32)
    dist = rng.uniform(*_BG_CONTRAST, (n, 1)).astype(np.float32)
    step = (towards - c1) / np.maximum(np.linalg.norm(towards - c1, axis=-1, keepdims=True), 1e-3)
    c2 = np.clip(c1 + dist * step, 0.0, 1.0)
    return {
        "family": rng.integers(0, len(BACKGROUNDS), n),
        "c1": c1,
        "c2": c2,
        "theta": rng.uniform(0, 2 * math.pi, (n, 6)).astype(np.float32),  # orientations
        "freq": rng.uniform(0, 1, (n, 6)).astype(np.float32),  # frequencies / sizes, rescaled per family
        "phase": rng.uniform(0, 2 * math.pi, (n, 6)).astype(np.float32),
        "centre": rng.uniform(-1.1, 1.1, (n, 6, 2)).astype(np.float32),
        "sign": rng.choice(np.array([-1.0, 1.0], dtype=np.float32), (n, 6)),
        "sharp": rng.uniform(0, 1, n).astype(np.float32),  # edge sharpness of the texture
        "grain": rng.uniform(0.0, 0.04, n).astype(np.float32),  # pixel noise σ
    }


def _along(theta: np.ndarray) -> np.ndarray:
    """The grid coordinate along direction theta: (..., 32, 32) for theta (...)."""
    return _GX * np.cos(theta)[..., None, None] + _GY * np.sin(theta)[..., None, None]


def _normalise(t: np.ndarray) -> np.ndarray:
    lo = t.min(axis=(-2, -1), keepdims=True)
    hi = t.max(axis=(-2, -1), keepdims=True)
    return (t - lo) / np.maximum(hi - lo, 1e-6)


def _contrast(t: np.ndarray, k: np.ndarray) -> np.ndarray:
    """An S-curve with gain k (B,) on t ∈ [0, 1] that keeps 0 and 1 fixed: larger k, harder edges."""
    k = k[:, None, None]
    return 0.5 + 0.5 * np.tanh(k * (2 * t - 1)) / np.tanh(k)


def _draw_background(p: dict[str, np.ndarray]) -> np.ndarray:
    b = len(p["family"])
    t = np.empty((b, SIZE, SIZE), dtype=np.float32)
    for f, name in enumerate(BACKGROUNDS):
        sel = np.flatnonzero(p["family"] == f)
        if len(sel):
            t[sel] = _TEXTURES[name]({k: v[sel] for k, v in p.items()})
    c1, c2 = p["c1"][:, None, None], p["c2"][:, None, None]
    return c1 + t[..., None] * (c2 - c1)


def _smooth(p: dict[str, np.ndarray]) -> np.ndarray:
    # A sum of four random plane waves of 0.5-2.5 cycles per image, amplitude ∝ 1/frequency.
    f = 0.5 + 2.0 * p["freq"][:, :4]
    waves = np.sin(math.pi * f[..., None, None] * _along(p["theta"][:, :4]) + p["phase"][:, :4, None, None])
    t = _normalise((waves / f[..., None, None]).sum(axis=1))
    return _contrast(t, 0.5 + 3.0 * p["sharp"])


def _stripes(p: dict[str, np.ndarray]) -> np.ndarray:
    f = 1.5 + 3.5 * p["freq"][:, 0]  # cycles per image
    s = np.sin(math.pi * f[:, None, None] * _along(p["theta"][:, 0]) + p["phase"][:, 0, None, None])
    return _contrast(0.5 + 0.5 * s, 0.5 + 4.0 * p["sharp"])


def _checkers(p: dict[str, np.ndarray]) -> np.ndarray:
    f = 1.5 + 2.5 * p["freq"][:, 0]
    u = _along(p["theta"][:, 0])
    v = _along(p["theta"][:, 0] + math.pi / 2)
    s = (np.sin(math.pi * f[:, None, None] * u + p["phase"][:, 0, None, None])
         * np.sin(math.pi * f[:, None, None] * v + p["phase"][:, 1, None, None]))
    return _contrast(0.5 + 0.5 * s, 1.0 + 4.0 * p["sharp"])


def _gradient(p: dict[str, np.ndarray]) -> np.ndarray:
    # Linear (sign > 0) or radial (sign < 0) ramp, with a faint wave so it is not perfectly flat.
    linear = _along(p["theta"][:, 0])
    c = p["centre"][:, 0]
    radial = np.hypot(_GX - c[:, 0, None, None], _GY - c[:, 1, None, None])
    t = np.where(p["sign"][:, 0, None, None] > 0, linear, radial)
    t = t + 0.15 * np.sin(math.pi * (1 + 2 * p["freq"][:, 1, None, None]) * _along(p["theta"][:, 1])
                          + p["phase"][:, 1, None, None])
    return _normalise(t)


def _blobs(p: dict[str, np.ndarray]) -> np.ndarray:
    # Six Gaussian bumps and dips of radius 0.12-0.35 (2-6 px).
    sigma = 0.12 + 0.23 * p["freq"]
    dx = _GX - p["centre"][..., 0, None, None]
    dy = _GY - p["centre"][..., 1, None, None]
    g = p["sign"][..., None, None] * np.exp(-(dx * dx + dy * dy) / (2 * sigma[..., None, None] ** 2))
    return _contrast(_normalise(g.sum(axis=1)), 1.0 + 4.0 * p["sharp"])


_TEXTURES: dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]] = {
    "smooth": _smooth, "stripes": _stripes, "checkers": _checkers, "gradient": _gradient, "blobs": _blobs,
}


# ---------------------------------------------------------------------------------------------------
# Objects: a signed distance d(q) (< 0 inside) in a local frame q where the shape fits the unit disc.


def _object_params(rng: np.random.Generator, n: int, kinds: np.ndarray, c1: np.ndarray,
                   c2: np.ndarray) -> dict[str, np.ndarray]:
    # Circumradius r in grid units (the image is 2 across): the object spans 40-70 % of the image.
    radius = rng.uniform(0.4, 0.7, n).astype(np.float32)
    centre = rng.uniform(-1, 1, (n, 2)).astype(np.float32) * (1 - radius[:, None])  # fully inside
    # Object colour: uniform over the RGB cube (as are background colours), but at least
    # _MIN_OBJ_CONTRAST from every colour on the background's c1-c2 segment, so the object stays visible.
    cand = rng.random((n, 16, 3), dtype=np.float32)
    d = _segment_distance(cand, c1[:, None], c2[:, None])
    ok = d >= _MIN_OBJ_CONTRAST
    pick = np.where(ok.any(axis=1), np.argmax(ok, axis=1), np.argmax(d, axis=1))
    return {
        "kind": kinds,
        "radius": radius,
        "centre": centre,
        "theta": rng.uniform(-_MAX_TILT, _MAX_TILT, n).astype(np.float32),
        "shape": rng.uniform(0, 1, (n, 2)).astype(np.float32),  # per-shape jitter (thickness, ...)
        "colour": cand[np.arange(n), pick],
        "shade": rng.uniform(-0.12, 0.12, n).astype(np.float32),  # linear shading across the object
        "shade_dir": rng.uniform(0, 2 * math.pi, n).astype(np.float32),
    }


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    h = np.clip(((p - a) * ab).sum(-1, keepdims=True) / np.maximum((ab * ab).sum(-1, keepdims=True), 1e-9), 0, 1)
    return np.linalg.norm(p - a - h * ab, axis=-1)


def _draw_objects(p: dict[str, np.ndarray], shapes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Coverage alpha (B, 32, 32) and the alpha-premultiplied colour (B, 32, 32, 3) of each object."""
    r = p["radius"][:, None, None]
    dx = _GX - p["centre"][:, 0, None, None]
    dy = _GY - p["centre"][:, 1, None, None]
    cos, sin = np.cos(p["theta"])[:, None, None], np.sin(p["theta"])[:, None, None]
    q = np.stack([cos * dx + sin * dy, -sin * dx + cos * dy], axis=-1) / r[..., None]  # (B, 32, 32, 2)
    d = np.empty(q.shape[:3], dtype=np.float32)
    for k, name in enumerate(shapes):
        sel = np.flatnonzero(p["kind"] == k)
        if len(sel):
            d[sel] = SHAPES[name](q[sel], p["shape"][sel])
    dpx = d * r / _PX  # signed distance in pixels
    fill = np.clip(0.5 - dpx, 0.0, 1.0)  # coverage with a one-pixel anti-aliased edge
    alpha = np.clip(0.5 - (dpx - _OUTLINE_PX), 0.0, 1.0)  # fill plus its dark outline
    shade = p["shade"][:, None, None] * _along(p["shade_dir"])
    colour = p["colour"][:, None, None, :] * (1.0 + shade[..., None])
    layer = colour * fill[..., None] + _OUTLINE_SHADE * p["colour"][:, None, None, :] * (alpha - fill)[..., None]
    return alpha.astype(np.float32), layer


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Far-OOD pixel noise, a third each: uniform, Gaussian (random mean/σ per channel), random blocks."""
    kind = rng.integers(0, len(NOISE_KINDS), n)
    uniform = rng.random((n, SIZE, SIZE, 3), dtype=np.float32)
    mean = rng.uniform(0.25, 0.75, (n, 1, 1, 3)).astype(np.float32)
    std = rng.uniform(0.1, 0.3, (n, 1, 1, 3)).astype(np.float32)
    gauss = mean + std * rng.standard_normal((n, SIZE, SIZE, 3), dtype=np.float32)
    cells = rng.choice(np.array([2, 4]), n)  # block side in pixels
    grid = rng.random((n, SIZE // 2, SIZE // 2, 3), dtype=np.float32)
    blocks = np.where((cells == 2)[:, None, None, None], grid.repeat(2, 1).repeat(2, 2),
                      grid[:, ::2, ::2].repeat(4, 1).repeat(4, 2))
    k = kind[:, None, None, None]
    return np.where(k == 0, uniform, np.where(k == 1, gauss, blocks))


# ---------------------------------------------------------------------------------------------------
# Registry entries. The benchmark is the same for everyone: always seed 0, whatever opts.seed says.

_LAYOUT = "generated in memory (no files)"
_OBTAIN = "built in (no download)"


def _path(opts: LoadOptions) -> Path:
    return Path("<generated>")


def _load_id(opts: LoadOptions, split: str) -> ImageSet:
    if split not in ("train", "test"):
        raise DataError(f"backdrops: no split {split!r}; it has 'train' and 'test'")
    images, labels = generate(split)
    return ImageSet("backdrops", CLASSES, images=images, labels=labels)


def _ood_loader(name: str, split_name: str) -> Callable[[LoadOptions, str], ImageSet]:
    def load(opts: LoadOptions, split: str) -> ImageSet:
        if split != "test":
            raise DataError(f"{name}: is an OOD set with only a 'test' split, not {split!r}")
        images, labels = generate(split_name)
        return ImageSet(name, (), images=images, labels=labels)

    return load


register(DatasetSpec(
    name="backdrops", role="id", image_size=SIZE, mean=MEAN, std=STD, layout=_LAYOUT, obtain=_OBTAIN,
    load=_load_id, count=lambda opts: SPLITS["train"] + SPLITS["test"], path=_path, generated=True,
    preset="backdrops",
))
for _split in ("scenes", "novel", "noise"):
    register(DatasetSpec(
        name=f"backdrops-{_split}", role="ood", image_size=SIZE, mean=MEAN, std=STD, layout=_LAYOUT,
        obtain=_OBTAIN, load=_ood_loader(f"backdrops-{_split}", _split), count=lambda opts: 1000,
        path=_path, generated=True, preset="backdrops",
    ))
