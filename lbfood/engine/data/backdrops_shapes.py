"""backdrops' shapes as exact signed-distance functions (negative inside, in units of the object radius).

Each class is a function of points q (B, H, W, 2) in the object's rotated, radius-normalised frame and
a per-image jitter j (B, 2) in [0, 1) that varies its proportions within the class.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def _polygon(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Exact signed distance from points q (B, H, W, 2) to polygons v ((K, 2) or per image (B, K, 2)).

    Inigo Quilez's sdPolygon, vectorised over the batch (winding test for the sign).
    """
    v = np.broadcast_to(v, (q.shape[0], *v.shape[-2:]))[:, None, None]  # (B, 1, 1, K, 2)
    px, py = q[..., 0], q[..., 1]
    d = (px - v[..., 0, 0]) ** 2 + (py - v[..., 0, 1]) ** 2
    s = np.ones_like(d)
    k = v.shape[-2]
    for i in range(k):
        j = i - 1
        vi, vj = v[..., i, :], v[..., j, :]
        ex, ey = vj[..., 0] - vi[..., 0], vj[..., 1] - vi[..., 1]
        wx, wy = px - vi[..., 0], py - vi[..., 1]
        h = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        bx, by = wx - ex * h, wy - ey * h
        d = np.minimum(d, bx * bx + by * by)
        c1 = py >= vi[..., 1]
        c2 = py < vj[..., 1]
        c3 = ex * wy > ey * wx
        flip = (c1 & c2 & c3) | (~c1 & ~c2 & ~c3)
        s = np.where(flip, -s, s)
    return s * np.sqrt(d)


def _unit(v: np.ndarray) -> np.ndarray:
    """Scale polygon vertices (..., K, 2) so the farthest vertex is at radius 1."""
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1).max(axis=-1)[..., None, None]


def _disc(q: np.ndarray, cx: float | np.ndarray = 0.0, cy: float | np.ndarray = 0.0,
          r: float | np.ndarray = 1.0) -> np.ndarray:
    return np.hypot(q[..., 0] - cx, q[..., 1] - cy) - r


def _box(q: np.ndarray, hx: float, hy: float) -> np.ndarray:
    ax, ay = np.abs(q[..., 0]) - hx, np.abs(q[..., 1]) - hy
    return np.hypot(np.maximum(ax, 0), np.maximum(ay, 0)) + np.minimum(np.maximum(ax, ay), 0)


def _jit(j: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """A per-image shape parameter in [lo, hi), shaped to broadcast over the pixel grid."""
    return (lo + (hi - lo) * j)[:, None, None]


def _regular(k: int, phase: float = math.pi / 2) -> np.ndarray:
    a = phase + 2 * math.pi * np.arange(k) / k
    return np.stack([np.cos(a), np.sin(a)], axis=-1).astype(np.float32)


def _star_vertices(inner: np.ndarray) -> np.ndarray:
    a = math.pi / 2 + math.pi * np.arange(10) / 5
    rad = np.where(np.arange(10) % 2 == 0, 1.0, inner[:, None])  # (B, 10)
    return np.stack([rad * np.cos(a), rad * np.sin(a)], axis=-1).astype(np.float32)


def _cross_vertices(w: np.ndarray) -> np.ndarray:
    a = np.sqrt(1 - w * w)  # arm length so that the arm corners lie on the unit circle
    z = np.zeros_like(w)
    pts = [(w, a), (w, w), (a, w), (a, -w), (w, -w), (w, -a),
           (-w, -a), (-w, -w), (-a, -w), (-a, w), (-w, w), (-w, a)]
    return np.stack([np.stack([x + z, y + z], axis=-1) for x, y in pts], axis=1).astype(np.float32)


_SQUARE = _unit([(1, 1), (-1, 1), (-1, -1), (1, -1)])
_DIAMOND = _unit([(0, 1), (-0.55, 0), (0, -1), (0.55, 0)])  # a rhombus: not a rotated square
_ARROW = _unit([(0, 1), (-0.65, 0.2), (-0.22, 0.2), (-0.22, -1), (0.22, -1), (0.22, 0.2), (0.65, 0.2)])
_LETTER_Z = _unit([(-0.7, 0.85), (0.7, 0.85), (0.7, 0.5), (-0.15, -0.5), (0.7, -0.5), (0.7, -0.85),
                   (-0.7, -0.85), (-0.7, -0.5), (0.15, 0.5), (-0.7, 0.5)])
_HOURGLASS = _unit([(-0.7, 0.9), (0.7, 0.9), (0.12, 0), (0.7, -0.9), (-0.7, -0.9), (-0.12, 0)])
_BOLT = _unit([(-0.15, 1), (0.55, 1), (0.12, 0.2), (0.6, 0.2), (-0.35, -1), (-0.05, -0.12), (-0.5, -0.12)])
_HEART_TIP = np.array([(-0.86, 0.05), (0, -0.95), (0.86, 0.05)], dtype=np.float32)


def _crescent(q: np.ndarray, j: np.ndarray) -> np.ndarray:
    """The unit disc minus a disc of radius rb at distance off: Inigo Quilez's exact sdMoon."""
    off, rb = _jit(j[:, 0], 0.35, 0.55), _jit(j[:, 1], 0.75, 0.9)
    x, y = q[..., 0], np.abs(q[..., 1])
    a = (1 - rb * rb + off * off) / (2 * off)  # where the two circles cross: (a, ±b)
    b = np.sqrt(np.maximum(1 - a * a, 0))
    tip = off * (x * b - y * a) > off * off * np.maximum(b - y, 0)
    return np.where(tip, np.hypot(x - a, y - b), np.maximum(np.hypot(x, y) - 1, rb - np.hypot(x - off, y)))


SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    # ID classes. `j` (B, 2) in [0, 1) jitters a shape's proportions within its class.
    "circle": lambda q, j: _disc(q, r=_jit(j[:, 0], 0.85, 1.0)),
    "square": lambda q, j: _polygon(q, _SQUARE),
    "triangle": lambda q, j: _polygon(q, _regular(3)),
    "cross": lambda q, j: _polygon(q, _cross_vertices(0.26 + 0.1 * j[:, 0])),
    "ring": lambda q, j: np.abs(_disc(q, r=_jit(j[:, 0], 0.68, 0.8))) - (1 - _jit(j[:, 0], 0.68, 0.8)),
    "star": lambda q, j: _polygon(q, _star_vertices(0.38 + 0.12 * j[:, 0])),
    "diamond": lambda q, j: _polygon(q, _DIAMOND),
    "crescent": _crescent,
    "arrow": lambda q, j: _polygon(q, _ARROW),
    "letter_z": lambda q, j: _polygon(q, _LETTER_Z),
    # Novel (OOD) shapes.
    "heart": lambda q, j: np.minimum(np.minimum(_disc(q, -0.43, 0.3, 0.5), _disc(q, 0.43, 0.3, 0.5)),
                                     _polygon(q, _HEART_TIP)),
    "hourglass": lambda q, j: _polygon(q, _HOURGLASS),
    "trefoil": lambda q, j: np.minimum.reduce([_disc(q, 0.52 * math.cos(a), 0.52 * math.sin(a), 0.45)
                                               for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)]),
    "frame": lambda q, j: np.maximum(_box(q, 0.7, 0.7), -_box(q, 0.4, 0.4)),
    "dumbbell": lambda q, j: np.minimum(np.minimum(_disc(q, -0.62, 0, 0.36), _disc(q, 0.62, 0, 0.36)),
                                        _box(q, 0.6, 0.13)),
    "bolt": lambda q, j: _polygon(q, _BOLT),
}
