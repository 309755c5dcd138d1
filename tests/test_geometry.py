"""CSPAD geometry from psana: the region round the beam, its positions, and image assembly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np

from hitveto.io import geometry
from hitveto.io.psana_import import import_psana

PITCH = geometry.PIXEL_SIZE_M


def psana_geometry():
    access = import_psana("psana.pscalib.geometry.GeometryAccess")
    return access, access.GeometryAccess(str(geometry.geometry_path()))


def test_region_holds_exactly_the_assembled_pixels_round_the_beam():
    index = geometry.roi_index(350)
    coded = geometry.assemble(np.arange(1, 1 + np.prod(geometry.RAW_SHAPE)).reshape(geometry.RAW_SHAPE))
    r, c = geometry.beam_pixel()
    assert np.array_equal(index, coded[r - 175 : r + 175, c - 175 : c + 175] - 1)  # gaps: 0 - 1
    real = index[index >= 0]
    assert len(np.unique(real // (185 * 388))) == 4
    assert 0.05 < (index < 0).mean() < 0.2  # the central hole, sensor gaps, grid holes
    raw = geometry.pixel_map("raw", 0.1)
    x, y = raw.x_m.ravel(), raw.y_m.ravel()
    assert np.abs(x[real]).max() < 176 * PITCH and np.abs(y[real]).max() < 176 * PITCH
    inside = np.flatnonzero(np.maximum(np.abs(x), np.abs(y)) < 174 * PITCH)
    missing = np.setdiff1d(inside, real)  # only raw pixels that share an image pixel
    assert len(missing) < 0.04 * len(inside)


def test_region_positions_agree_with_raw_positions_through_the_index():
    raw, roi = geometry.pixel_map("raw", 0.12), geometry.pixel_map("roi", 0.12)
    index = geometry.roi_index(350)
    real = index >= 0
    for a, b in ((raw.x_m, roi.x_m), (raw.y_m, roi.y_m), (raw.z_m, roi.z_m)):
        assert b.dtype == np.float32 and np.array_equal(a.ravel()[index[real]], b[real])
    assert np.array_equal(roi.mask, real) and roi.mask.dtype == bool
    assert abs(float(roi.z_m.mean()) - 0.12) < 1e-3 and roi.pixel_size_m == PITCH
    assert np.hypot(roi.x_m[175, 175], roi.y_m[175, 175]) < 2 * PITCH  # beam at the centre


def test_lab_frame_x_horizontal_y_up_beam_along_z():
    roi = geometry.pixel_map("roi", 0.1)
    rows, cols = np.indices(roi.mask.shape)
    design = np.column_stack([rows[roi.mask], cols[roi.mask], np.ones(roi.mask.sum())])
    (x_row, x_col, _), *_ = np.linalg.lstsq(design, roi.x_m[roi.mask], rcond=None)
    (y_row, y_col, _), *_ = np.linalg.lstsq(design, roi.y_m[roi.mask], rcond=None)
    # The image grid is the lab's (the sensors sit at 10 degrees to it): columns run towards -x,
    # rows run down.
    assert np.allclose([x_row, x_col, y_row, y_col], [0, -PITCH, -PITCH, 0], atol=PITCH * 0.01)
    raw = geometry.pixel_map("raw", 0.1)
    assert raw.z_m.min() > 0.0997 and raw.z_m.max() < 0.1003 and not raw.x_m.flags.writeable


def test_assembly_matches_psana_image():
    access, geo = psana_geometry()
    raw = np.random.default_rng(1).integers(0, 1000, geometry.RAW_SHAPE).astype(np.float32)
    rows, cols = geo.get_pixel_coord_indexes()
    image = geometry.assemble(raw)
    assert image.shape == geometry.image_shape() == (1942, 1940)
    assert np.array_equal(image, access.img_from_pixel_arrays(rows, cols, W=raw))


def test_cached_tables_need_no_psana(tmp_path):
    geometry.roi_index(350)  # fills the cache in this process
    shutil.copy(geometry.cache_file(), tmp_path)
    probe = (
        "import sys; from hitveto.io import geometry as g; assert 'psana' not in sys.modules; "
        "g.roi_index(350); g.pixel_map('roi', 0.1); g.assemble(g.pixel_map('raw', 0.1).x_m); "
        "assert 'psana' not in sys.modules, 'psana imported'"
    )
    env = {**os.environ, "HITVETO_CACHE": str(tmp_path)}
    subprocess.run([sys.executable, "-c", probe], env=env, check=True, timeout=60)
