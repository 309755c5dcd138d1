"""Detector geometry from psana: pixel positions, image assembly, and the region round the beam.

Each detector's psana geometry file (hitveto_client.detectors names it: in the psana wheel, or in
geometry_data/ for those the wheel lacks) gives every raw pixel's position. Every function here
takes the detector's name (default the CSPAD, the first detector hitveto knew).

psana's default CSPAD geometry (`geometry-def-cspad.data`, shipped in the psana wheel) places the
32 2x1 sensors (185x388 pixels each) in a 1942x1940 assembled image (psana's own image grid,
`GeometryAccess.get_pixel_coord_indexes`). That file puts its origin at a corner of the detector,
not on the beam, and turns the whole detector 10 degrees about the beam, so the sensors sit at an
angle to the image grid: nearest-pixel assembly maps ~2.5% of the raw pixels onto a pixel already
taken (the last one wins, as in psana) and leaves as many holes inside the sensors. We take the beam
at the centre of the pixels' bounding box, the centre of the central hole (within 2 pixels of the
largest empty circle); a 350x350 region round it touches 4 of the 32 sensors.

Positions are in psana's LAB frame (`cframe=1`): x horizontal, y up (against gravity), z along the
beam, right-handed, with x = y = 0 on the beam. In the assembled image rows run down (-y) and
columns run towards -x (the detector seen from the interaction point).

The same centring (the pixels' bounding box) serves the other detectors: their files already put
the beam at the origin, within a pixel or two (Jungfrau 4M: exactly; ePix10k2M: 1.2 mm off, the
centre of its central hole).

psana is imported only to compute the tables once; they are cached in memory and on disk
(`$HITVETO_CACHE` or `~/.cache/hitveto/`, keyed by the detector and its geometry file's checksum),
so daemons and trainers that find the cache never import psana.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hitveto_client import detectors

RAW_SHAPE = detectors.CSPAD.raw_shape
PIXEL_SIZE_M = detectors.CSPAD.pixel_size_m
PSANA_GEOMETRY = "pscalib/geometry/data"  # in the psana package
OWN_GEOMETRY = Path(__file__).parent / "geometry_data"  # files psana's wheel lacks
CSPAD = "cspad"
CACHE_FORMAT = 2  # bump when the cached tables change meaning (v2: LAB frame)
_TABLES = ("x_um", "y_um", "z_um", "rows", "cols", "beam")


@dataclass(frozen=True, slots=True, kw_only=True)
class PixelMap:
    """Pixel positions in the lab frame: origin at the interaction point, beam along +z, metres."""

    x_m: np.ndarray  # float32, shape == frame shape
    y_m: np.ndarray
    z_m: np.ndarray
    mask: np.ndarray  # bool, True = a real pixel (False for gaps of the region layout)
    pixel_size_m: float


@dataclass(frozen=True, slots=True, kw_only=True)
class _Tables:
    x_um: np.ndarray  # LAB frame, the raw shape, beam at (0, 0)
    y_um: np.ndarray
    z_um: np.ndarray  # relative to the detector's mean plane
    rows: np.ndarray  # assembled-image row and column of each raw pixel (int32)
    cols: np.ndarray
    beam: np.ndarray  # (row, column) of the beam in the assembled image


def geometry_path(detector: str = CSPAD) -> Path:
    """The detector's geometry file: hitveto's own, else the one in the installed psana package
    (found without importing psana)."""
    name = detectors.get(detector).geometry_file
    if (OWN_GEOMETRY / name).exists():
        return OWN_GEOMETRY / name
    spec = importlib.util.find_spec("psana")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("psana is not installed (pip install psana mpich)")
    return Path(spec.origin).parent / PSANA_GEOMETRY / name


def cache_file(detector: str = CSPAD) -> Path:
    """The tables' cache file: `$HITVETO_CACHE` or ~/.cache/hitveto, named by the file's checksum."""
    digest = hashlib.sha256(geometry_path(detector).read_bytes()).hexdigest()[:16]
    folder = Path(os.environ.get("HITVETO_CACHE", Path.home() / ".cache" / "hitveto"))
    return folder / f"{detector}-geometry-v{CACHE_FORMAT}-{digest}.npz"


@functools.cache
def _tables(detector: str = CSPAD) -> _Tables:
    cached = cache_file(detector)
    try:
        with np.load(cached) as z:
            return _Tables(**{k: _read_only(z[k]) for k in _TABLES})
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        pass  # absent or damaged: compute again
    tables = _compute(geometry_path(detector))
    if tables.x_um.shape != detectors.get(detector).raw_shape:
        raise ValueError(
            f"{geometry_path(detector)}: pixels {tables.x_um.shape}, {detector} reads "
            f"{detectors.get(detector).raw_shape}"
        )
    tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp.npz")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **{k: getattr(tables, k) for k in _TABLES})
        tmp.replace(cached)  # atomic: concurrent processes never read half a file
    except OSError:
        tmp.unlink(missing_ok=True)  # the cache only saves time; a read-only home is no error
    return tables


def _compute(path: Path) -> _Tables:
    from hitveto.io.psana_import import import_psana

    geo = import_psana("psana.pscalib.geometry.GeometryAccess").GeometryAccess(str(path))
    rows, cols = geo.get_pixel_coord_indexes()  # psana's image grid (its frame 0)
    x, y, z = (np.array(a) for a in geo.get_pixel_coords(cframe=1))
    x0, y0 = (x.min() + x.max()) / 2, (y.min() + y.max()) / 2  # centre of the central hole
    # psana frame 0 is (x, y) = (-y_lab, -x_lab): the same point, for the image's indexing.
    beam = geo.point_coord_indexes(p_um=(-y0, -x0), cframe=0)
    return _Tables(
        x_um=_read_only((x - x0).astype(np.float32)),
        y_um=_read_only((y - y0).astype(np.float32)),
        z_um=_read_only((z - z.mean()).astype(np.float32)),
        rows=_read_only(rows.astype(np.int32)),
        cols=_read_only(cols.astype(np.int32)),
        beam=_read_only(np.array(beam, dtype=np.int64)),
    )


def image_shape(detector: str = CSPAD) -> tuple[int, int]:
    """Shape of the assembled image (CSPAD: 1942 x 1940)."""
    t = _tables(detector)
    return int(t.rows.max()) + 1, int(t.cols.max()) + 1


def beam_pixel(detector: str = CSPAD) -> tuple[int, int]:
    """(row, column) of the beam in the assembled image."""
    row, col = _tables(detector).beam
    return int(row), int(col)


@functools.cache
def roi_index(roi_size: int = 350, detector: str = CSPAD) -> np.ndarray:
    """int64 (roi_size, roi_size), read-only: flat raw-stack index of each region pixel, -1 in gaps.

    The region is the square of the assembled image centred on the beam; a region pixel holds the
    raw pixel that `assemble` puts there.
    """
    t = _tables(detector)
    image = np.full(image_shape(detector), -1, dtype=np.int64)
    image[t.rows, t.cols] = np.arange(t.rows.size).reshape(t.rows.shape)
    r0, c0 = (int(b) - roi_size // 2 for b in t.beam)
    if min(r0, c0) < 0 or r0 + roi_size > image.shape[0] or c0 + roi_size > image.shape[1]:
        raise ValueError(f"roi_size {roi_size}: the region leaves the {image.shape} image")
    return _read_only(image[r0 : r0 + roi_size, c0 : c0 + roi_size].copy())


def assemble(raw: np.ndarray, detector: str = CSPAD) -> np.ndarray:
    """The raw stack -> the assembled 2-D image of raw's dtype, gaps 0 (CSPAD: (32, 185, 388) ->
    1942 x 1940)."""
    t = _tables(detector)
    if raw.shape != t.rows.shape:
        raise ValueError(f"raw shape {raw.shape} != {detector}'s {t.rows.shape}")
    image = np.zeros(image_shape(detector), dtype=raw.dtype)
    image[t.rows, t.cols] = raw
    return image


@functools.cache
def pixel_map(layout: str, distance_m: float, roi_size: int = 350, detector: str = CSPAD) -> PixelMap:
    """Pixel positions for the raw stack ("raw") or the region ("roi") at a detector distance.

    The arrays are shared between callers and read-only. Gap pixels of the region get the
    positions a plane through the real ones gives, so that per-pixel physics stays smooth there.
    """
    t = _tables(detector)
    x, y = t.x_um * np.float32(1e-6), t.y_um * np.float32(1e-6)
    z = t.z_um * np.float32(1e-6) + np.float32(distance_m)
    if layout == "raw":
        coords: tuple[np.ndarray, ...] = (x, y, z)
        mask = np.ones(t.x_um.shape, bool)
    elif layout == "roi":
        index = roi_index(roi_size, detector)
        mask = index >= 0
        coords = tuple(_fill_gaps(c.ravel()[np.where(mask, index, 0)], mask) for c in (x, y, z))
    else:
        raise ValueError(f"layout {layout!r}: expected 'raw' or 'roi'")
    x_m, y_m, z_m = (_read_only(c) for c in coords)
    size = detectors.get(detector).pixel_size_m
    return PixelMap(x_m=x_m, y_m=y_m, z_m=z_m, mask=_read_only(mask), pixel_size_m=size)


def radius_px(pixels: PixelMap) -> np.ndarray:
    """Distance of each pixel from the beam axis, in pixels (float32; peakfinder8's pix_r)."""
    return (np.hypot(pixels.x_m, pixels.y_m) / pixels.pixel_size_m).astype(np.float32)


def panel_radius(pool: int, detector: str = CSPAD) -> np.ndarray:
    """Each pooled pixel's distance from the beam, in raw pixels: the raw layout's geometry input
    (n_panels, rows // pool, cols // pool), as preprocess.pool_panels lays the panels out."""
    radius = radius_px(pixel_map("raw", 0.1, detector=detector))  # x and y only: the distance does not matter
    return _pooled(radius, pool)


def panel_azimuth(pool: int, detector: str = CSPAD) -> np.ndarray:
    """Each pooled pixel's azimuth round the beam (radians, -pi to pi), laid out as panel_radius."""
    pixels = pixel_map("raw", 0.1, detector=detector)
    return np.arctan2(_pooled(pixels.y_m, pool), _pooled(pixels.x_m, pool)).astype(np.float32)


def _pooled(values: np.ndarray, pool: int) -> np.ndarray:
    """The mean of each pool x pool block of each panel (n_panels, rows, cols), float32."""
    n, rows, cols = values.shape
    r, c = rows // pool * pool, cols // pool * pool
    blocks = values[:, :r, :c].reshape(n, r // pool, pool, c // pool, pool)
    return blocks.mean(axis=(2, 4)).astype(np.float32)


def _fill_gaps(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    grid = np.indices(mask.shape)
    rows, cols = grid[0], grid[1]
    design = np.column_stack([rows[mask], cols[mask], np.ones(mask.sum())])
    coef, *_ = np.linalg.lstsq(design, values[mask], rcond=None)
    out = (coef[0] * rows + coef[1] * cols + coef[2]).astype(np.float32)
    out[mask] = values[mask]
    return out


def _read_only(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a
