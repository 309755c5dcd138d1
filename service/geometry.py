"""CSPAD geometry from psana: pixel positions, image assembly, and the region round the beam.

psana's default CSPAD geometry (`geometry-def-cspad.data`, shipped in the psana wheel) places the
32 2x1 sensors (185x388 pixels each) in a 1942x1940 assembled image. The beam passes through the
central hole between the four quadrants; we take it at the centre of the pixels' bounding box, where
a 350x350 region touches 4 of the 32 sensors (12% of it is gaps).

psana is imported only to compute the tables once; they are cached in memory and on disk
(`~/.cache/hitveto/`, keyed by the geometry file's checksum), so daemons and trainers that read the
cache never import psana.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RAW_SHAPE = (32, 185, 388)
PIXEL_SIZE_M = 109.92e-6
GEOMETRY_FILE = "pscalib/geometry/data/geometry-def-cspad.data"


@dataclass(frozen=True, slots=True, kw_only=True)
class PixelMap:
    """Pixel positions in the lab frame: origin at the interaction point, beam along +z, metres."""

    x_m: np.ndarray       # float32, shape == frame shape
    y_m: np.ndarray
    z_m: np.ndarray
    mask: np.ndarray      # bool, True = a real pixel (False for gaps of the region layout)
    pixel_size_m: float


@dataclass(frozen=True, slots=True, kw_only=True)
class _Tables:
    x_um: np.ndarray      # psana pixel coordinates, RAW_SHAPE, beam at (0, 0)
    y_um: np.ndarray
    z_um: np.ndarray      # relative to the detector's mean plane
    rows: np.ndarray      # assembled-image row and column of each raw pixel
    cols: np.ndarray
    beam_row: int
    beam_col: int


def geometry_path() -> Path:
    """The geometry file inside the installed psana package (found without importing psana)."""
    spec = importlib.util.find_spec("psana")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("psana is not installed (pip install psana mpich)")
    return Path(spec.origin).parent / GEOMETRY_FILE


@functools.cache
def _tables() -> _Tables:
    path = geometry_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("HITVETO_CACHE", Path.home() / ".cache" / "hitveto"))
    cached = cache / f"cspad-geometry-{digest}.npz"
    if cached.exists():
        with np.load(cached) as z:
            return _Tables(**{k: z[k] for k in ("x_um", "y_um", "z_um", "rows", "cols")},
                           beam_row=int(z["beam"][0]), beam_col=int(z["beam"][1]))
    tables = _compute(path)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp.npz")
    np.savez(tmp, x_um=tables.x_um, y_um=tables.y_um, z_um=tables.z_um, rows=tables.rows,
             cols=tables.cols, beam=np.array([tables.beam_row, tables.beam_col]))
    tmp.replace(cached)   # atomic: concurrent processes never read half a file
    return tables


def _compute(path: Path) -> _Tables:
    from psana.pscalib.geometry.GeometryAccess import GeometryAccess

    geo = GeometryAccess(str(path))
    x, y, z = geo.get_pixel_coords()
    rows, cols = geo.get_pixel_coord_indexes()
    x0, y0 = (x.min() + x.max()) / 2, (y.min() + y.max()) / 2   # centre of the central hole
    beam_row, beam_col = geo.point_coord_indexes(p_um=(x0, y0))
    return _Tables(x_um=(x - x0).astype(np.float32), y_um=(y - y0).astype(np.float32),
                   z_um=(z - z.mean()).astype(np.float32), rows=rows.astype(np.int32),
                   cols=cols.astype(np.int32), beam_row=int(beam_row), beam_col=int(beam_col))


@functools.cache
def roi_index(roi_size: int = 350) -> np.ndarray:
    """int64 (roi_size, roi_size): flat raw-stack index of each region pixel, -1 in the gaps.

    The region is the square of the assembled image centred on the beam.
    """
    t = _tables()
    image = np.full(_image_shape(t), -1, dtype=np.int64)
    image[t.rows, t.cols] = np.arange(t.rows.size).reshape(t.rows.shape)
    r0, c0 = t.beam_row - roi_size // 2, t.beam_col - roi_size // 2
    index = image[r0:r0 + roi_size, c0:c0 + roi_size].copy()
    index.setflags(write=False)
    return index


def beam_pixel() -> tuple[int, int]:
    """(row, column) of the beam in the assembled image."""
    t = _tables()
    return t.beam_row, t.beam_col


def assemble(raw: np.ndarray) -> np.ndarray:
    """(32, 185, 388) raw stack -> the assembled 2-D image (1942 x 1940), gaps 0."""
    t = _tables()
    image = np.zeros(_image_shape(t), dtype=raw.dtype)
    image[t.rows, t.cols] = raw
    return image


@functools.cache
def pixel_map(layout: str, distance_m: float, roi_size: int = 350) -> PixelMap:
    """Pixel positions for the raw stack ("raw") or the region ("roi") at a detector distance."""
    t = _tables()
    x, y, z = t.x_um * 1e-6, t.y_um * 1e-6, t.z_um * 1e-6 + np.float32(distance_m)
    if layout == "raw":
        return PixelMap(x_m=x, y_m=y, z_m=z, mask=np.ones(RAW_SHAPE, bool), pixel_size_m=PIXEL_SIZE_M)
    if layout != "roi":
        raise ValueError(f"layout {layout!r}: expected 'raw' or 'roi'")
    index = roi_index(roi_size)
    mask = index >= 0
    coords = [_fill_gaps(c.ravel()[np.where(mask, index, 0)], mask) for c in (x, y, z)]
    return PixelMap(x_m=coords[0], y_m=coords[1], z_m=coords[2], mask=mask, pixel_size_m=PIXEL_SIZE_M)


def radius_px(pixels: PixelMap) -> np.ndarray:
    """Distance of each pixel from the beam axis, in pixels (float32; peakfinder8's pix_r)."""
    return (np.hypot(pixels.x_m, pixels.y_m) / pixels.pixel_size_m).astype(np.float32)


def _fill_gaps(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Gap pixels get the positions an affine fit of the real ones gives (they are masked anyway)."""
    rows, cols = np.indices(mask.shape)
    design = np.column_stack([rows[mask], cols[mask], np.ones(mask.sum())])
    coef, *_ = np.linalg.lstsq(design, values[mask], rcond=None)
    out = (coef[0] * rows + coef[1] * cols + coef[2]).astype(np.float32)
    out[mask] = values[mask]
    return out


def _image_shape(t: _Tables) -> tuple[int, int]:
    return int(t.rows.max()) + 1, int(t.cols.max()) + 1
