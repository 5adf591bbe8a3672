"""The built-in `shapes` segmentation set, drawn deterministically from a seed."""

from __future__ import annotations

import numpy as np

SHAPE_CLASSES = ["background", "circle", "square", "triangle"]


def draw_shapes(count: int = 1200, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic synthetic segmentation set: 1-3 shapes per image on a textured background.

    Each image holds 1-3 circles, squares or triangles (random size, position,
    rotation and colour; later shapes overwrite earlier ones) on a low-frequency
    colour gradient with a faint sinusoidal texture, plus Gaussian noise. Masks
    are 0 background, 1 circle, 2 square, 3 triangle. Every random number is
    drawn up front from one numpy generator, so `seed` fixes the whole set; the
    rasterisation is vectorised over the batch (no per-image Python loop).
    Returns images (N, 3, S, S) float32 in [0, 1] and masks (N, S, S) int64.
    """
    rng = np.random.default_rng(seed)
    n, s = count, size
    num_shapes = rng.integers(1, 4, size=n)
    kinds = rng.integers(0, 3, size=(n, 3))
    radius = (rng.uniform(0.1, 0.25, size=(n, 3)) * s).astype(np.float32)
    place = rng.uniform(0.0, 1.0, size=(n, 3, 2)).astype(np.float32)
    angle = rng.uniform(0.0, 2 * np.pi, size=(n, 3)).astype(np.float32)
    colour = rng.uniform(0.0, 1.0, size=(n, 3, 3)).astype(np.float32)
    ends = rng.uniform(0.0, 1.0, size=(n, 2, 3)).astype(np.float32)
    slope = rng.uniform(0.0, 2 * np.pi, size=n).astype(np.float32)
    texture = rng.uniform(-4.0, 4.0, size=(n, 3)).astype(np.float32)  # fx, fy, phase
    noise = rng.standard_normal((n, 3, s, s), dtype=np.float32) * np.float32(0.05)

    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + np.float32(0.5)
    image = _gradient_background(xx, yy, ends, slope, texture, s)
    # Keep shapes visible: a colour too close to the mean background moves 0.45 away per channel.
    mean_bg = ends.mean(axis=1, keepdims=True)
    close = np.linalg.norm(colour - mean_bg, axis=-1, keepdims=True) < 0.35
    away = np.where(mean_bg > 0.5, mean_bg - 0.45, mean_bg + 0.45)
    colour = np.where(close, away, colour)

    mask = np.zeros((n, s, s), dtype=np.int64)
    for k in range(3):
        r = radius[:, k, None, None]
        cx = r + place[:, k, 0, None, None] * (s - 2 * r)
        cy = r + place[:, k, 1, None, None] * (s - 2 * r)
        inside = _rasterise(kinds[:, k], xx[None] - cx, yy[None] - cy, r, angle[:, k, None, None])
        inside &= (k < num_shapes)[:, None, None]
        mask = np.where(inside, kinds[:, k, None, None] + 1, mask)
        image = np.where(inside[:, None], colour[:, k, :, None, None], image)
    image = np.clip(image + noise, 0.0, 1.0).astype(np.float32)
    return image, mask


def _gradient_background(
    xx: np.ndarray,
    yy: np.ndarray,
    ends: np.ndarray,
    slope: np.ndarray,
    texture: np.ndarray,
    s: int,
) -> np.ndarray:
    """(N, 3, S, S): a linear blend between two colours along a random direction, plus waves."""
    dx, dy = xx - s / 2, yy - s / 2
    t = dx[None] * np.cos(slope)[:, None, None] + dy[None] * np.sin(slope)[:, None, None]
    t = np.clip(t / (s * 0.7071) + 0.5, 0.0, 1.0)[:, None]
    start, stop = ends[:, 0, :, None, None], ends[:, 1, :, None, None]
    fx, fy, phase = (texture[:, i, None, None] for i in range(3))
    waves = 0.08 * np.sin(2 * np.pi * (fx * xx[None] + fy * yy[None]) / s + phase)
    return start + (stop - start) * t + waves[:, None]


def _rasterise(
    kind: np.ndarray, dx: np.ndarray, dy: np.ndarray, r: np.ndarray, theta: np.ndarray
) -> np.ndarray:
    """(N, S, S) bool: pixels inside a circle (0), square (1) or triangle (2) of radius r.

    The square has half-side 0.8 r; the triangle is equilateral with
    circumradius 1.2 r, i.e. three half-planes at distance 0.6 r from the centre.
    """
    circle = dx * dx + dy * dy <= r * r
    cos, sin = np.cos(theta), np.sin(theta)
    u, v = dx * cos + dy * sin, dy * cos - dx * sin
    square = np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
    triangle = np.ones_like(circle)
    for j in range(3):
        phi = theta + np.float32(2 * np.pi * j / 3)
        triangle &= dx * np.cos(phi) + dy * np.sin(phi) <= 0.6 * r
    k = kind[:, None, None]
    return np.where(k == 0, circle, np.where(k == 1, square, triangle))
