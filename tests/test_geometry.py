"""CSPAD geometry from psana: the region round the beam, its positions, and image assembly."""

from __future__ import annotations

import numpy as np

from service import geometry


def test_region_comes_from_four_sensors_round_the_beam():
    index = geometry.roi_index(350)
    real = index[index >= 0]
    sensors = np.unique(real // (185 * 388))
    assert index.shape == (350, 350) and len(sensors) == 4
    assert 0.05 < (index < 0).mean() < 0.2          # the central hole and sensor gaps
    raw = geometry.pixel_map("raw", 0.1)
    r = np.hypot(raw.x_m.ravel()[real], raw.y_m.ravel()[real])
    assert r.max() < 175 * np.sqrt(2) * geometry.PIXEL_SIZE_M * 1.02


def test_region_positions_agree_with_raw_positions_through_the_index():
    raw, roi = geometry.pixel_map("raw", 0.12), geometry.pixel_map("roi", 0.12)
    index = geometry.roi_index(350)
    real = index >= 0
    for a, b in ((raw.x_m, roi.x_m), (raw.y_m, roi.y_m), (raw.z_m, roi.z_m)):
        assert np.array_equal(a.ravel()[index[real]], b[real])
    assert np.array_equal(roi.mask, real)
    assert abs(float(roi.z_m.mean()) - 0.12) < 1e-3
    both = real[:, 1:] & real[:, :-1]                   # horizontally adjacent real pixels
    step = np.hypot(np.diff(roi.x_m, axis=1), np.diff(roi.y_m, axis=1))[both]
    assert abs(np.median(step) / geometry.PIXEL_SIZE_M - 1) < 0.01


def test_assembly_matches_psana_image():
    from psana.pscalib.geometry.GeometryAccess import GeometryAccess, img_from_pixel_arrays
    raw = np.random.default_rng(1).integers(0, 1000, geometry.RAW_SHAPE).astype(np.float32)
    geo = GeometryAccess(str(geometry.geometry_path()))
    rows, cols = geo.get_pixel_coord_indexes()
    assert np.array_equal(geometry.assemble(raw), img_from_pixel_arrays(rows, cols, W=raw))


def test_region_is_the_assembled_image_round_the_beam():
    raw = np.random.default_rng(2).integers(1, 1000, geometry.RAW_SHAPE).astype(np.int16)
    index = geometry.roi_index(350)
    gathered = np.where(index >= 0, raw.ravel()[np.where(index >= 0, index, 0)], 0)
    r, c = geometry.beam_pixel()
    assert np.array_equal(geometry.assemble(raw)[r - 175:r + 175, c - 175:c + 175], gathered)
