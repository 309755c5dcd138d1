"""Simulated SFX physics: Bragg geometry, intensities, frame kinds, ice rings, reproducibility."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest

from hitveto.sim.bragg import Reflections, excitation_sigma, random_rotation, reciprocal_basis, wilson_f2
from hitveto.sim.params import PRESETS, RunParams
from hitveto.sim.physics import FrameKind, bragg_spots, detector_physics, simulate_photons
from hitveto.sim.spots import paint_spots, project

PIXEL_M = 109.92e-6
RUN = PRESETS["lysozyme"]


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Pixels:
    """Duck-typed stand-in for hitveto.io.geometry.PixelMap (the fields the simulator reads)."""

    x_m: np.ndarray
    y_m: np.ndarray
    z_m: np.ndarray
    mask: np.ndarray
    pixel_size_m: float = PIXEL_M


def square_region(n: int = 350, distance_m: float = 0.1) -> Pixels:
    """One flat affine grid round the beam, with a masked 5-column gap."""
    r, c = np.mgrid[0:n, 0:n].astype(float)
    mask = np.ones((n, n), bool)
    mask[:, n // 2 - 3 : n // 2 + 2] = False
    return Pixels(
        x_m=((c - (n - 1) / 2 + 0.3) * PIXEL_M).astype(np.float32),
        y_m=(((n - 1) / 2 - r - 0.2) * PIXEL_M).astype(np.float32),
        z_m=np.full((n, n), distance_m, np.float32),
        mask=mask,
    )


def fake_cspad(distance_m: float = 0.1) -> Pixels:
    """32 tiles of 185 x 388 in four quadrants turned by 90 degrees, slightly tilted and offset.

    As in a CSPAD 2x1, columns 193 and 194 (between its two ASICs) are 2.5 pixels wide.
    """
    rows, cols = 185, 388
    rr, cc = np.mgrid[0:rows, 0:cols].astype(float)
    extra = 1.5  # a wide pixel is 1.5 pixels wider
    cc += np.select([cc == 193, cc == 194, cc >= 195], [extra / 2, 1.5 * extra, 2 * extra], 0.0)
    rng = np.random.default_rng(7)
    xs, ys, zs = [], [], []
    for quad in range(4):
        cos, sin = np.cos(quad * np.pi / 2), np.sin(quad * np.pi / 2)
        for i in range(4):
            for j in range(2):
                x = 1.5e-3 + j * (cols * PIXEL_M + 6e-4) + cc * PIXEL_M
                y = 1.5e-3 + (i + 1) * rows * PIXEL_M + i * 6e-4 - rr * PIXEL_M
                xs.append(cos * x - sin * y)
                ys.append(sin * x + cos * y)
                tilt = 1e-3 * rng.standard_normal() * (x - x.mean()) / 0.05
                zs.append(distance_m + 2e-4 * rng.standard_normal() + tilt)
    stack = [np.stack(a).astype(np.float32) for a in (xs, ys, zs)]
    return Pixels(x_m=stack[0], y_m=stack[1], z_m=stack[2], mask=np.ones((32, rows, cols), bool))


@pytest.fixture(scope="module")
def raw() -> Pixels:
    return fake_cspad()


@pytest.fixture(scope="module")
def region() -> Pixels:
    return square_region()


def with_mix(run: RunParams = RUN, **mix) -> RunParams:
    return dataclasses.replace(run, mix=dataclasses.replace(run.mix, **mix))


def with_crystal(run: RunParams = RUN, **crystal) -> RunParams:
    return dataclasses.replace(run, crystal=dataclasses.replace(run.crystal, **crystal))


STRONG_ONLY = {
    "hit_fraction": 1.0,
    "multiple_hit_fraction": 0.0,
    "weak_hit_fraction": 0.0,
    "ice_with_hit_fraction": 0.0,
}
MISSES_ONLY = {"hit_fraction": 0.0, "ice_miss_fraction": 0.5}


def sharp_peaks(photons: np.ndarray) -> int:
    """Pixels above their 8 neighbours and > 5 sigma + 1 photon above the 5x5 window's border."""
    img = photons.reshape((-1,) + photons.shape[-2:]).astype(float)
    pad = np.pad(img, ((0, 0), (2, 2), (2, 2)), mode="edge")
    rows, cols = img.shape[1:]
    shifted = {
        (dr, dc): pad[:, 2 + dr : 2 + dr + rows, 2 + dc : 2 + dc + cols]
        for dr in range(-2, 3)
        for dc in range(-2, 3)
    }
    near = np.max([v for (dr, dc), v in shifted.items() if max(abs(dr), abs(dc)) == 1], axis=0)
    border = np.mean([v for (dr, dc), v in shifted.items() if max(abs(dr), abs(dc)) == 2], axis=0)
    return int(np.count_nonzero((img > near) & (img - border > 5 * np.sqrt(border) + 1)))


def test_spots_satisfy_the_bragg_condition(raw):
    det = detector_physics(raw, RUN)
    rotation = random_rotation(np.random.default_rng(3))
    spots = bragg_spots(det, rotation, RUN, size_um=2.0, fluence_per_a2=400.0, sigma_px=1.2)
    on = spots.inside
    assert on.sum() > 50
    k = 1.0 / RUN.beam.wavelength_a
    k_in = np.array([0.0, 0.0, k])
    pos = spots.position_m[on]
    k_out = k * pos / np.linalg.norm(pos, axis=1, keepdims=True)  # elastic: |k_out| = |k_in|
    hkl = spots.reflections.hkl[spots.spot[on]]
    q_lattice = hkl @ (rotation @ reciprocal_basis(RUN.crystal.cell_a, RUN.crystal.cell_angles_deg)).T
    s2 = (q_lattice**2).sum(axis=1)
    sigma = excitation_sigma(s2, RUN.crystal, RUN.beam, 2.0)
    off_sphere = np.abs(np.linalg.norm(k_in + q_lattice, axis=1) - k)
    assert np.all(off_sphere <= 3 * sigma + 1e-9)
    assert np.all(np.linalg.norm(k_out - k_in - q_lattice, axis=1) <= off_sphere + 2e-5)
    # Bragg's law, lambda = 2 d sin(theta), to the same tolerance
    sin_theta = np.sqrt((1 - k_out[:, 2] / k) / 2)
    assert np.allclose(2 * sin_theta / RUN.beam.wavelength_a, np.sqrt(s2), atol=3 * sigma.max() + 2e-5)


def test_painted_maxima_sit_on_predicted_spots(raw):
    det = detector_physics(raw, RUN)
    spots = bragg_spots(
        det, random_rotation(np.random.default_rng(4)), RUN, size_um=2.0, fluence_per_a2=400.0, sigma_px=1.2
    )
    image = np.zeros(raw.x_m.size, np.float32)
    paint_spots(image, det, spots, background=image.copy(), read_var=0.0)
    image = image.reshape(raw.x_m.shape)
    peaks = (image > 2.0) & (image == _max3x3(image))
    peaks[:, [0, 1, -2, -1], :] = peaks[:, :, [0, 1, -2, -1]] = False  # tails of spots off the tile
    seg, row, col = np.nonzero(peaks)
    assert len(seg) > 30
    centres = np.stack([a[seg, row, col] for a in (raw.x_m, raw.y_m, raw.z_m)], axis=1)
    for s, centre in zip(seg, centres):
        predicted = spots.position_m[spots.segment == s]
        # within a pixel; 1.3 allows for the 2.5-pixel-wide columns
        assert np.linalg.norm(predicted - centre, axis=1).min() <= 1.3 * PIXEL_M
    # the window centre found from the pixel grid is the pixel nearest the spot (wide ones: 1.35)
    on = spots.inside
    nearest = np.stack(
        [a[spots.segment[on], spots.pixel_row[on], spots.pixel_col[on]] for a in (raw.x_m, raw.y_m, raw.z_m)],
        axis=1,
    )
    assert np.linalg.norm(nearest - spots.position_m[on], axis=1).max() <= 1.4 * PIXEL_M


def _max3x3(img: np.ndarray) -> np.ndarray:
    pad = np.pad(img, ((0, 0), (1, 1), (1, 1)))
    rows, cols = img.shape[1:]
    return np.max(
        [pad[:, 1 + dr : 1 + dr + rows, 1 + dc : 1 + dc + cols] for dr in (-1, 0, 1) for dc in (-1, 0, 1)],
        axis=0,
    )


def test_bigger_crystals_give_more_strong_spots(raw):
    def mean_strong(size_um: float) -> float:
        run = with_crystal(with_mix(**STRONG_ONLY), size_um_median=size_um, size_log_sigma=0.1)
        return np.mean(
            [simulate_photons(raw, run, np.random.default_rng([1, i]))[1].n_strong_spots for i in range(6)]
        )

    small, big = mean_strong(0.4), mean_strong(2.0)
    assert big > 3 * small
    assert small > 0


def test_a_crystal_with_no_excited_reflection_paints_nothing(region):
    """A small crystal can meet the Ewald sphere nowhere (seen on a myoglobin run): no spots, no crash."""
    det = detector_physics(region, RUN)
    none = Reflections(
        hkl=np.empty((0, 3), int),
        q=np.empty((0, 3)),
        excitation=np.empty(0),
        direction=np.empty((0, 3)),
        photons=np.empty(0),
    )
    spots = project(det.segments, none, sigma_m=1.2 * PIXEL_M, margin_px=4)
    image = np.ones(region.x_m.size, np.float32)
    signal, noise = paint_spots(image, det, spots, background=image.copy(), read_var=1.0)
    assert len(spots.spot) == 0 and len(signal) == len(noise) == 0 and (image == 1).all()


def test_misses_have_no_bragg_spots(raw):
    run = with_mix(**MISSES_ONLY)
    for i in range(6):
        photons, truth = simulate_photons(raw, run, np.random.default_rng([2, i]))
        assert truth.n_crystals == 0 and truth.n_strong_spots == 0
        assert truth.kind in (FrameKind.CLEAN_MISS, FrameKind.ICE_MISS)
        assert sharp_peaks(photons) == 0
    photons, truth = simulate_photons(raw, with_mix(**STRONG_ONLY), np.random.default_rng([2, 0]))
    assert truth.n_strong_spots > 20 and sharp_peaks(photons) > 20


def test_mean_spot_intensity_falls_with_resolution(raw):
    det = detector_physics(raw, RUN)
    rng = np.random.default_rng(5)
    s, photons = [], []
    for _ in range(8):
        refl = bragg_spots(det, random_rotation(rng), RUN, size_um=1.5, fluence_per_a2=400.0).reflections
        s.append(np.linalg.norm(refl.q, axis=1))
        photons.append(refl.photons)
    s, photons = np.concatenate(s), np.concatenate(photons)
    shells = [photons[(s >= lo) & (s < lo + 0.1)].mean() for lo in (0.1, 0.25, 0.4, 0.55)]
    assert all(a > b for a, b in zip(shells, shells[1:]))
    assert shells[-1] < 0.1 * shells[0]


def test_structure_factors_are_wilson_distributed_and_friedel_symmetric():
    hkl = np.random.default_rng(0).integers(-40, 41, (200_000, 3))
    f2 = wilson_f2(hkl, seed=1)
    assert np.array_equal(f2, wilson_f2(-hkl, seed=1))
    assert abs(f2.mean() - 1) < 0.01 and abs(f2.var() - 1) < 0.03  # Exponential(1)
    assert not np.array_equal(f2, wilson_f2(hkl, seed=2))


def test_ice_miss_rings_peak_at_ice_spacings(raw):
    det = detector_physics(raw, RUN)
    run = with_mix(hit_fraction=0.0, ice_miss_fraction=1.0)
    photons, truth = simulate_photons(raw, run, np.random.default_rng(6))
    assert truth.kind == FrameKind.ICE_MISS and truth.ice
    s = np.sqrt(2 * (1 - det.z / np.sqrt(det.x**2 + det.y**2 + det.z**2))) / RUN.beam.wavelength_a
    unshadowed = det.transmission > 0.99
    bins = np.round(s[unshadowed] / 5e-4).astype(int)
    per_sr = np.bincount(bins, photons.ravel()[unshadowed]) / np.maximum(
        np.bincount(bins, det.per_sr[unshadowed]), 1e-30
    )
    for d in run.mix.ice_d_spacings_a:
        peak, side = round(1 / d / 5e-4), round(0.006 / 5e-4)
        if peak + side < len(per_sr):
            assert per_sr[peak - 1 : peak + 2].max() > 1.5 * max(per_sr[peak - side], per_sr[peak + side])
    clean, _ = simulate_photons(
        raw, with_mix(hit_fraction=0.0, ice_miss_fraction=0.0), np.random.default_rng(6)
    )
    assert clean.sum() < photons.sum()


def test_same_seed_gives_the_same_frame(region):
    run = with_mix(**STRONG_ONLY)
    a, truth_a = simulate_photons(region, run, np.random.default_rng([9, 1]))
    b, truth_b = simulate_photons(region, run, np.random.default_rng([9, 1]))
    c, _ = simulate_photons(region, run, np.random.default_rng([9, 2]))
    assert a.dtype == np.float32 and a.shape == region.x_m.shape
    assert np.array_equal(a, b) and truth_a == truth_b
    assert not np.array_equal(a, c)


def test_frame_mix_follows_the_run_parameters(region):
    truths = [simulate_photons(region, RUN, np.random.default_rng([3, i]))[1] for i in range(300)]
    kinds = np.array([t.kind for t in truths])
    crystals = np.array([t.n_crystals for t in truths])
    assert abs(np.mean(crystals > 0) - RUN.mix.hit_fraction) < 0.08
    assert np.all(crystals[kinds == FrameKind.MULTIPLE_HIT] >= 2)
    assert np.all(crystals[np.isin(kinds, [FrameKind.STRONG_HIT, FrameKind.WEAK_HIT])] == 1)
    assert np.all(crystals[np.isin(kinds, [FrameKind.CLEAN_MISS, FrameKind.ICE_MISS])] == 0)
    assert all(t.ice for t in truths if t.kind == FrameKind.ICE_MISS)
    strong = [t.n_strong_spots for t in truths if t.kind == FrameKind.STRONG_HIT]
    weak = [t.n_strong_spots for t in truths if t.kind == FrameKind.WEAK_HIT]
    assert np.median(strong) > 2 * np.median(weak)


def test_beam_stop_shadows_the_centre(region):
    photons, _ = simulate_photons(region, with_mix(hit_fraction=0.0), np.random.default_rng(0))
    radius_px = np.hypot(region.x_m, region.y_m) / PIXEL_M
    behind = RUN.sample.beamstop_radius_mm * 1e-3 / PIXEL_M - 5
    assert photons[radius_px < behind].max() < 0.01 * photons[(radius_px > 40) & (radius_px < 60)].mean()


def test_the_beam_stop_and_the_jet_streak_follow_the_beam_and_the_jet(region):
    """A beam off the detector's centre moves the stop's shadow with it; a tilted jet tilts its
    streak."""
    beam = dataclasses.replace(RUN.beam, detector_offset_mm=(4.0, -3.0))
    sample = dataclasses.replace(RUN.sample, jet_streak_angle_deg=60.0)
    moved = detector_physics(region, dataclasses.replace(RUN, beam=beam, sample=sample))
    darkest = np.argmin(np.where(region.mask.ravel(), moved.transmission, 1.0))
    x_mm, y_mm = region.x_m.ravel()[darkest] * 1e3, region.y_m.ravel()[darkest] * 1e3
    assert np.hypot(x_mm - 4.0, y_mm + 3.0) < RUN.sample.beamstop_radius_mm
    streak = moved.jet_per_sr / np.maximum(moved.per_sr, 1e-30)
    on = streak > 0.5 * streak.max()
    angle = np.degrees(np.arctan2(moved.y[on], moved.x[on]))  # pixels from the beam
    assert np.median(np.abs(angle % 180.0 - 60.0)) < 5.0  # the line through the beam at 60 degrees


def test_pixels_without_positions_stay_dark():
    pixels = square_region()
    gap = ~pixels.mask
    for a in (pixels.x_m, pixels.y_m, pixels.z_m):
        a[gap] = np.nan
    photons, truth = simulate_photons(pixels, with_mix(**STRONG_ONLY), np.random.default_rng(13))
    assert np.isfinite(photons).all() and np.all(photons[gap] == 0) and truth.n_strong_spots > 0


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_simulate_on_both_layouts(preset, region, raw):
    run = with_mix(PRESETS[preset], **STRONG_ONLY)
    for pixels in (region, raw):
        photons, truth = simulate_photons(pixels, run, np.random.default_rng(11))
        assert photons.shape == pixels.x_m.shape and np.isfinite(photons).all()
        assert photons.min() >= 0 and truth.n_crystals == 1


@pytest.mark.parametrize("layout", ["raw", "roi"])
def test_runs_on_the_real_pixel_map(layout):
    from hitveto.io import geometry

    pixels = geometry.pixel_map(layout, distance_m=RUN.detector.distance_m)
    photons, truth = simulate_photons(pixels, with_mix(**STRONG_ONLY), np.random.default_rng(12))
    assert photons.shape == np.shape(pixels.x_m) and np.isfinite(photons).all()
    assert truth.n_strong_spots > 0
