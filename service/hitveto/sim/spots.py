"""Where Bragg rays meet a segmented detector, and painting their spot profiles onto its pixels.

Each segment (a CSPAD 2x1, or the whole of a square region) is an affine pixel grid
position(row, col) = origin + row * row_step + col * col_step in metres, fitted once. A ray is
intersected with every segment's plane and mapped back to (row, col); the spot is then evaluated
only in a small window of pixels around that point, at the pixels' true positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hitveto.sim.bragg import Reflections


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Segments:
    """Affine pixel grids of the segments, (S, 3) arrays in metres; `to_grid` maps offsets to (row, col)."""

    origin: np.ndarray
    row_step: np.ndarray
    col_step: np.ndarray
    normal: np.ndarray  # unit, pointing away from the interaction point
    to_grid: np.ndarray  # (S, 2, 3) pseudo-inverse of [row_step col_step]
    shape: tuple[int, int]  # rows, cols of one segment
    positions: tuple[np.ndarray, np.ndarray, np.ndarray]  # flat x, y, z of every pixel, m


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Spots:
    """One crystal's spots: a footprint per (reflection, segment) whose window touches the segment."""

    reflections: Reflections
    sigma_m: float  # rms of the spot's Gaussian footprint
    margin_px: int  # half-width of the painted window
    spot: np.ndarray  # (m,) index into reflections
    segment: np.ndarray  # (m,)
    row: np.ndarray  # (m,) centre in the segment's pixel grid (float; beyond the segment
    col: np.ndarray  #   if the window only overlaps it)
    pixel_row: np.ndarray  # (m,) the pixel nearest the centre, clipped to the segment (int)
    pixel_col: np.ndarray
    position_m: np.ndarray  # (m, 3) where the ray meets the segment's plane
    inside: np.ndarray  # (m,) bool: the centre lies on the segment's pixels


def fit_segments(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, mask: np.ndarray, shape: tuple[int, ...]
) -> Segments:
    """Least-squares affine fit of each segment (the last two axes of `shape`) to flat positions."""
    rows, cols = shape[-2:]
    xyz = np.stack([np.asarray(a, dtype=float).reshape(-1, rows, cols) for a in (x, y, z)], axis=-1)
    mask = np.asarray(mask, dtype=bool).reshape(-1, rows, cols)
    step = max(1, min(rows, cols) // 32)  # a sparse sample fits an affine grid exactly enough
    rr, cc = np.mgrid[0:rows:step, 0:cols:step]
    design = np.stack([np.ones(rr.size), rr.ravel(), cc.ravel()], axis=1)
    coef = np.empty((len(xyz), 3, 3))
    for s, (seg, seg_mask) in enumerate(zip(xyz, mask)):
        use = seg_mask[::step, ::step].ravel()
        use = use if use.sum() >= 3 else np.ones_like(use)
        coef[s] = np.linalg.lstsq(design[use], seg[::step, ::step].reshape(-1, 3)[use], rcond=None)[0]
    origin, row_step, col_step = coef[:, 0], coef[:, 1], coef[:, 2]
    normal = np.cross(row_step, col_step)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    normal *= np.sign((normal * origin).sum(axis=1))[:, None]
    to_grid = np.linalg.pinv(np.stack([row_step, col_step], axis=2))
    return Segments(
        origin=origin,
        row_step=row_step,
        col_step=col_step,
        normal=normal,
        to_grid=to_grid,
        shape=(rows, cols),
        positions=(x, y, z),
    )


def project(segments: Segments, refl: Reflections, *, sigma_m: float, margin_px: int) -> Spots:
    """Intersect each reflection's ray with every segment plane; keep footprints near a segment."""
    d = refl.direction
    dn = d @ segments.normal.T  # (n, S)
    height = (segments.origin * segments.normal).sum(axis=1)  # plane distance from the sample
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(dn > 1e-9, height / dn, np.inf)  # ray length to each plane, m
    # (row, col) of t d is linear in d: to_grid (t d - origin) = t (to_grid d) - to_grid origin
    grid_d = (d @ segments.to_grid.reshape(-1, 3).T).reshape(len(d), len(segments.origin), 2)  # n may be 0
    grid_origin = np.einsum("sij,sj->si", segments.to_grid, segments.origin)
    with np.errstate(invalid="ignore"):
        rc = t[:, :, None] * grid_d - grid_origin
    rows, cols = segments.shape
    lo, hi_r, hi_c = -0.5 - margin_px, rows - 0.5 + margin_px, cols - 0.5 + margin_px
    near = np.isfinite(t) & (rc[..., 0] > lo) & (rc[..., 0] < hi_r) & (rc[..., 1] > lo) & (rc[..., 1] < hi_c)
    spot, seg = np.nonzero(near)
    point = t[spot, seg, None] * d[spot]
    pixel_row, pixel_col, row, col = _refine(segments, seg, rc[spot, seg], point)
    inside = (row > -0.5) & (row < rows - 0.5) & (col > -0.5) & (col < cols - 0.5)
    return Spots(
        reflections=refl,
        sigma_m=sigma_m,
        margin_px=margin_px,
        spot=spot,
        segment=seg,
        row=row,
        col=col,
        pixel_row=pixel_row,
        pixel_col=pixel_col,
        position_m=point,
        inside=inside,
    )


def _refine(segments: Segments, seg: np.ndarray, rc: np.ndarray, point: np.ndarray) -> tuple[np.ndarray, ...]:
    """The pixel nearest `point` (row, col), and that plus the offset in its local grid (floats).

    A Newton step from the guessed pixel's true position, then the nearest of the 3 x 3 pixels
    around it, absorbs departures from the affine fit such as a CSPAD 2x1's 2.5-pixel-wide columns.
    """
    rows, cols = segments.shape
    r, c = _nearest_pixel(rc[:, 0], rc[:, 1], rows, cols)
    step = _grid_offset(segments, seg, r, c, point)
    r, c = _nearest_pixel(r + step[:, 0], c + step[:, 1], rows, cols)
    dr, dc = (a.ravel() for a in np.mgrid[-1:2, -1:2])
    r9 = np.clip(r[:, None] + dr, 0, rows - 1)  # (n, 9) candidates
    c9 = np.clip(c[:, None] + dc, 0, cols - 1)
    flat9 = (seg[:, None] * rows + r9) * cols + c9
    dist = sum((a[flat9] - point[:, i, None]) ** 2 for i, a in enumerate(segments.positions))
    pick = np.arange(len(seg)), np.argmin(dist, axis=1)
    r, c = r9[pick], c9[pick]
    step = _grid_offset(segments, seg, r, c, point)
    return r, c, r + step[:, 0], c + step[:, 1]


def _nearest_pixel(row: np.ndarray, col: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.clip(np.rint(row), 0, rows - 1).astype(np.int64),
        np.clip(np.rint(col), 0, cols - 1).astype(np.int64),
    )


def _grid_offset(
    segments: Segments, seg: np.ndarray, r: np.ndarray, c: np.ndarray, point: np.ndarray
) -> np.ndarray:
    """(d_row, d_col) from pixel (r, c) to `point` in the segment's nominal grid."""
    rows, cols = segments.shape
    flat = (seg * rows + r) * cols + c
    offset = point - np.stack([a[flat] for a in segments.positions], axis=1)
    return np.einsum("nij,nj->ni", segments.to_grid[seg], offset)


def paint_spots(
    image: np.ndarray, det: Any, spots: Spots, *, background: np.ndarray, read_var: float
) -> tuple[np.ndarray, np.ndarray]:
    """Add the spots' photons to `image` (flat, in place); per reflection (signal, noise) in photons.

    Signal and noise are taken over real pixels within 2 sigma of the centre: noise^2 = signal +
    background photons there + n_pixels x read_var (read noise variance in photons^2).
    """
    n = len(spots.reflections.photons)
    if not len(spots.spot):
        return np.zeros(n), np.zeros(n)
    flat, inb, d2 = _windows(det, spots)
    sigma2 = spots.sigma_m**2
    amp = spots.reflections.photons[spots.spot] * det.pixel_area_m2 / (2 * np.pi * sigma2)
    prof = amp[:, None, None] * np.exp(-0.5 * d2 / sigma2) * det.transmission[flat] * inb
    np.add.at(image, flat[inb], prof[inb].astype(image.dtype))
    core = inb & det.mask[flat] & (d2 <= 4 * sigma2)
    signal = np.bincount(spots.spot, (prof * core).sum(axis=(1, 2)), minlength=n)
    bg = np.bincount(spots.spot, (background[flat] * core).sum(axis=(1, 2)), minlength=n)
    npx = np.bincount(spots.spot, core.sum(axis=(1, 2)), minlength=n)
    return signal, np.sqrt(signal + bg + npx * read_var)


def _windows(det: Any, spots: Spots) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat pixel indices, in-segment flags and squared distances (m^2) of each footprint's window."""
    rows, cols = det.segments.shape
    off = np.arange(-spots.margin_px, spots.margin_px + 1)
    r = spots.pixel_row[:, None, None] + off[None, :, None]
    c = spots.pixel_col[:, None, None] + off[None, None, :]
    inb = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
    flat = (spots.segment[:, None, None] * rows + np.clip(r, 0, rows - 1)) * cols + np.clip(c, 0, cols - 1)
    p = spots.position_m
    d2 = (
        (det.x[flat] - p[:, 0, None, None]) ** 2
        + (det.y[flat] - p[:, 1, None, None]) ** 2
        + (det.z[flat] - p[:, 2, None, None]) ** 2
    )
    return flat, inb, d2
