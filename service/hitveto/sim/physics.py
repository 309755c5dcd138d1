"""Expected photons per pixel of one SFX frame: Bragg spots of 0-3 crystals on smooth backgrounds.

Units: s = 1/d = 2 sin(theta) / lambda in 1/A (no 2 pi); photons per pulse; lab frame with the beam
along +z, polarisation along x, the jet along y; pixel positions in metres from the interaction point.

Frame kind (`FrameMix`): a hit with probability hit_fraction, then multiple (2..max_crystals
crystals), weak (one crystal from the sub-micron size distribution) or strong (one crystal); a miss
carries ice rings with probability ice_miss_fraction, a hit with ice_with_hit_fraction.

Crystal: edge L ~ log-normal(size median, size_log_sigma); orientation U uniform on SO(3);
reciprocal-lattice vectors q = U B hkl, B from the cell (a* . a = 1). Excitation error
eps = |k_in + q| - 1/lambda with k_in = (0, 0, 1/lambda). A reflection is excited with a Gaussian
partiality in eps of rms sigma_eps^2 = (eta s)^2 + (bw lambda s^2 / 2)^2 + (0.4 / L)^2
(mosaicity eta in rad, bandwidth bw = rms d(lambda)/lambda, crystal-size broadening).
Integrated photons of a reflection (kinematic still):
    N = Phi r_e^2 P lambda^2 (f2_per_a3 V_x / V_cell) w(hkl) exp(-B s^2 / 2) pdf(eps; 0, sigma_eps)
with Phi the fluence on the crystal (photons/A^2) = pulse x photons_per_pulse / (2 pi sigma_b^2)
x exp(-rho^2 / 2), the crystal offset rho uniform over a disc of 2 sigma_b (focus rms sigma_b);
pulse ~ Gamma(mean 1, rms pulse_energy_jitter); V_x = L^3 (L FWHM^2 for crystals wider than the
focus); w ~ Exponential(1) per hkl (acentric Wilson; fixed by structure_seed, Friedel-symmetric);
P = f (1 - u_x^2) + (1 - f)(1 - u_y^2) for the unit ray u, f = polarisation_horizontal.
Spot: the ray k_out = (k_in + q) / |k_in + q| meets the detector at p; the spot is a 2-D Gaussian
of rms sigma (spot_sigma_px x pixel size, per crystal), photons per pixel
N A_pix / (2 pi sigma^2) exp(-|x - p|^2 / (2 sigma^2)) x T, evaluated at the true pixel positions x
in a window found by inverting the segment's affine pixel grid.
Backgrounds, photons/sr times Omega P T per pixel (Omega = A_pix cos(psi) / r^2, T = beam-stop
transmission): water ring W [g(s; 1/d_w, w) + 0.35 g(s; 1.55/d_w, 1.5 w) + 0.1], g a unit-height
Gaussian; air A / (1 + (s / s0)^2); jet streak J exp(-(y/r)^2 / (2 w_j^2)) / (1 + (2 theta / t_j)^2);
ice rings sum_i I_i g(s; 1/d_i, w_ice) m_i(phi), m_i a random smooth log-normal azimuthal texture.
Water and jet scale with pulse x a log-normal jet wobble, air and ice with pulse. Blank shots, bright
streaks and ice crystallites: sim/delivery.py.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np

from hitveto.sim.bragg import excited_reflections, polarisation, random_rotation
from hitveto.sim.delivery import (
    JET_STREAK_PER_SR,
    NO_EVENTS,
    Delivery,
    draw_delivery,
    ice_crystallites,
    ice_rings,
    mean_one_lognormal,
)
from hitveto.sim.params import BeamParams, RunParams, SampleParams
from hitveto.sim.spots import Segments, Spots, fit_segments, paint_spots, project

N_S_BINS, N_PHI_BINS = 2048, 64  # radial x azimuthal lookup table of the smooth background
STRONG_MIN_PHOTONS = 15.0  # a strong spot: >= this many photons within 2 sigma of its centre
STRONG_MIN_SNR = 4.0  # ... and signal / sqrt(signal + background + read noise^2) >= this
INDEXABLE_SPOTS = 10  # a lattice an indexer finds: at least this many strong spots


class FrameKind(enum.IntEnum):
    """What a frame shows; stored as its int in run files."""

    CLEAN_MISS = 0
    ICE_MISS = 1
    STRONG_HIT = 2
    WEAK_HIT = 3
    MULTIPLE_HIT = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameTruth:
    """What was simulated.

    n_strong_spots counts spots with >= STRONG_MIN_PHOTONS expected photons on real pixels of
    this pixel map (so it depends on the layout), within 2 sigma of the spot centre, and
    SNR = S / sqrt(S + B + n sigma_r^2) >= STRONG_MIN_SNR there (B: expected background photons on
    those n pixels, sigma_r: read noise in photons). Expected values, not a noisy draw: a peak
    finder sees about this many.
    """

    n_crystals: int
    n_strong_spots: int
    kind: FrameKind
    ice: bool  # ice in the jet: rings, or crystallites (ice_spots)
    lattices: int = 0  # crystals with >= INDEXABLE_SPOTS strong spots: lattices an indexer can find
    ice_spots: int = 0  # strong ice crystallite spots (as n_strong_spots counts them)
    ice_ring_per_sr: float = 0.0  # the strongest ice ring's photons/sr (its azimuthal mean); 0: none
    jet_streak: bool = False  # a bright jet streak (delivery.JET_STREAK_PER_SR)
    streak_per_sr: float = 0.0  # the jet streak's photons/sr on its axis this pulse
    blank: bool = False  # a blank shot: the pulse missed the jet


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class DetectorPhysics:
    """Per (PixelMap, beam, sample) maps shared by every frame; flat pixel order."""

    pixels: Any
    segments: Segments
    x: np.ndarray  # float32 pixel positions, m
    y: np.ndarray
    z: np.ndarray
    mask: np.ndarray  # bool, True = real pixel
    pixel_area_m2: float
    s_max: float  # largest s on a real pixel, 1/A
    s_centres: np.ndarray  # (N_S_BINS,) 1/A
    phi_centres: np.ndarray  # (N_PHI_BINS,) rad
    table_index: np.ndarray  # int32 index into the flattened (s, phi) background table
    per_sr: np.ndarray  # float32 Omega P T: photons on the pixel per photon/sr
    jet_per_sr: np.ndarray  # float32 per_sr x jet streak shape (1 on the streak axis)
    transmission: np.ndarray  # float32 beam-stop transmission


def build_detector_physics(pixels: Any, beam: BeamParams, sample: SampleParams) -> DetectorPhysics:
    """Precompute scattering angles, solid angles, polarisation and the beam-stop shadow (~1 s raw)."""
    x, y, z = (np.array(a, dtype=np.float32).ravel() for a in (pixels.x_m, pixels.y_m, pixels.z_m))
    x -= np.float32(beam.detector_offset_mm[0] * 1e-3)  # pixel positions from the beam
    y -= np.float32(beam.detector_offset_mm[1] * 1e-3)
    placed = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    for a in (x, y, z):
        a[~placed] = 1e3  # pixels without a position (NaN gaps): far away, so no spot reaches them
    mask = np.asarray(pixels.mask, dtype=bool).ravel() & placed
    segments = fit_segments(x, y, z, mask, np.shape(pixels.x_m))
    r = np.sqrt(x.astype(float) ** 2 + y.astype(float) ** 2 + z.astype(float) ** 2)
    u = np.stack([x / r, y / r, z / r])  # unit rays to the pixels
    s = np.sqrt(np.clip(2.0 * (1.0 - u[2]), 0.0, None)) / beam.wavelength_a
    s_max = float(s[mask].max() if mask.any() else s.max()) * 1.001
    s_bin = np.minimum((s * (N_S_BINS / s_max)).astype(np.int32), N_S_BINS - 1)
    phi_bin = np.minimum(
        ((np.arctan2(y, x) + np.pi) * (N_PHI_BINS / (2 * np.pi))).astype(np.int32), N_PHI_BINS - 1
    )
    normal = np.repeat(segments.normal, x.size // len(segments.normal), axis=0).T
    solid_angle = pixels.pixel_size_m**2 * np.abs((u * normal).sum(axis=0)) / r**2
    transmission = _beamstop_transmission(x, y, sample)
    per_sr = solid_angle * polarisation(u.T, beam) * transmission * placed
    return DetectorPhysics(
        pixels=pixels,
        segments=segments,
        x=x,
        y=y,
        z=z,
        mask=mask,
        pixel_area_m2=pixels.pixel_size_m**2,
        s_max=s_max,
        s_centres=(np.arange(N_S_BINS) + 0.5) * (s_max / N_S_BINS),
        phi_centres=(np.arange(N_PHI_BINS) + 0.5) * (2 * np.pi / N_PHI_BINS) - np.pi,
        table_index=s_bin * N_PHI_BINS + phi_bin,
        per_sr=per_sr.astype(np.float32),
        jet_per_sr=(per_sr * _jet_streak(u, sample)).astype(np.float32),
        transmission=transmission.astype(np.float32),
    )


def _jet_streak(u: np.ndarray, sample: SampleParams) -> np.ndarray:
    """Scatter off the jet's surface: a streak across the jet (horizontal for a vertical jet,
    tilted by jet_streak_angle_deg), 1 on its axis at small angle."""
    two_theta = np.arccos(np.clip(u[2], -1.0, 1.0))
    tilt = np.radians(sample.jet_streak_angle_deg)
    across = u[1] * np.cos(tilt) - u[0] * np.sin(tilt)  # the ray's component across the streak
    elevation = np.arcsin(np.clip(across, -1.0, 1.0))
    return np.exp(-0.5 * (elevation / (sample.jet_streak_width_mrad * 1e-3)) ** 2) / (
        1 + (two_theta / np.radians(sample.jet_streak_falloff_deg)) ** 2
    )


def _beamstop_transmission(x: np.ndarray, y: np.ndarray, sample: SampleParams) -> np.ndarray:
    """The stop's disc and its holder rod (towards +y), with a ~0.05 mm penumbra."""
    edge_m = 5e-5
    disc = _sigmoid((np.hypot(x, y) - sample.beamstop_radius_mm * 1e-3) / edge_m)
    rod = np.where(y > 0, _sigmoid((np.abs(x) - sample.beamstop_rod_width_mm * 5e-4) / edge_m), 1.0)
    t = sample.beamstop_transmission
    return t + (1 - t) * disc * rod


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * v))


_CACHE: dict[tuple, DetectorPhysics] = {}


def detector_physics(pixels: Any, run: RunParams) -> DetectorPhysics:
    """The cached `DetectorPhysics` of this PixelMap object and run (a few entries kept)."""
    key = (id(pixels), run.beam, run.sample)
    cached = _CACHE.get(key)
    if cached is None or cached.pixels is not pixels:
        if len(_CACHE) >= 4:
            _CACHE.pop(next(iter(_CACHE)))
        cached = _CACHE[key] = build_detector_physics(pixels, run.beam, run.sample)
    return cached


def simulate_photons(pixels: Any, run: RunParams, rng: np.random.Generator) -> tuple[np.ndarray, FrameTruth]:
    """Expected photons per pixel (float32, shape of pixels.x_m) before noise, and the truth."""
    det = detector_physics(pixels, run)
    kind, n_crystals, ice = _draw_kind(run, rng)
    events = draw_delivery(run.mix, rng, hit=n_crystals > 0, ice=ice)
    pulse = _pulse_energy(run.beam, rng)
    wobble = mean_one_lognormal(rng, run.sample.background_jitter)
    rings = ice and not events.crystallites
    image, ice_per_sr = background(det, run, rng, pulse=pulse, ice=rings, wobble=wobble, events=events)
    read_var = (run.detector.read_noise_adu / run.detector.adu_per_photon) ** 2
    smooth = image.copy() if n_crystals or events.crystallites else image
    per_crystal = []
    for _ in range(n_crystals):
        spots = _draw_crystal(det, run, rng, pulse=pulse, weak=kind == FrameKind.WEAK_HIT)
        per_crystal.append(_paint_strong(image, det, spots, smooth, read_var))
    ice_spots = 0
    if events.crystallites:
        refl = ice_crystallites(run, rng, events.crystallites, pulse=pulse)
        sigma_m = float(np.sqrt(det.pixel_area_m2))
        spots = project(det.segments, refl, sigma_m=sigma_m, margin_px=3)
        ice_spots = _paint_strong(image, det, spots, smooth, read_var)
    streak = pulse * wobble * run.sample.jet_streak_per_sr * events.streak_boost
    truth = FrameTruth(
        n_crystals=n_crystals,
        n_strong_spots=sum(per_crystal),
        lattices=sum(n >= INDEXABLE_SPOTS for n in per_crystal),
        kind=kind,
        ice=ice,
        ice_spots=ice_spots,
        jet_streak=not events.blank and streak >= JET_STREAK_PER_SR,
        streak_per_sr=0.0 if events.blank else streak,
        ice_ring_per_sr=ice_per_sr,
        blank=events.blank,
    )
    return image.reshape(np.shape(pixels.x_m)), truth


def _paint_strong(
    image: np.ndarray, det: DetectorPhysics, spots: Spots, smooth: np.ndarray, read_var: float
) -> int:
    """Paint the spots; how many of them are strong (see FrameTruth)."""
    signal, noise = paint_spots(image, det, spots, background=smooth, read_var=read_var)
    return int(np.count_nonzero((signal >= STRONG_MIN_PHOTONS) & (signal >= STRONG_MIN_SNR * noise)))


def _draw_kind(run: RunParams, rng: np.random.Generator) -> tuple[FrameKind, int, bool]:
    mix = run.mix
    if rng.random() >= mix.hit_fraction:
        ice = bool(rng.random() < mix.ice_miss_fraction)
        return (FrameKind.ICE_MISS if ice else FrameKind.CLEAN_MISS), 0, ice
    ice = bool(rng.random() < mix.ice_with_hit_fraction)
    v = rng.random()
    if v < mix.multiple_hit_fraction:
        return FrameKind.MULTIPLE_HIT, int(rng.integers(2, run.crystal.max_crystals + 1)), ice
    if v < mix.multiple_hit_fraction + mix.weak_hit_fraction:
        return FrameKind.WEAK_HIT, 1, ice
    return FrameKind.STRONG_HIT, 1, ice


def _pulse_energy(beam: BeamParams, rng: np.random.Generator) -> float:
    """SASE pulse energy relative to nominal: gamma-distributed, mean 1."""
    j = beam.pulse_energy_jitter
    return float(rng.gamma(1.0 / j**2, j**2)) if j > 0 else 1.0


def _draw_crystal(
    det: DetectorPhysics, run: RunParams, rng: np.random.Generator, *, pulse: float, weak: bool
) -> Spots:
    """One crystal: size, place in the focus, orientation and spot width drawn from `rng`."""
    c, beam = run.crystal, run.beam
    median = c.weak_size_um_median if weak else c.size_um_median
    size_um = median * float(np.exp(c.size_log_sigma * rng.standard_normal()))
    sigma_b_a = beam.focus_fwhm_um * 1e4 / (2 * np.sqrt(2 * np.log(2)))
    # a crystal centred uniformly within 2 sigma of the focus: rho^2 / 2 = 2 u
    fluence = pulse * beam.photons_per_pulse / (2 * np.pi * sigma_b_a**2) * np.exp(-2 * rng.random())
    return bragg_spots(
        det,
        random_rotation(rng),
        run,
        size_um=size_um,
        fluence_per_a2=fluence,
        sigma_px=float(rng.uniform(*c.spot_sigma_px)),
    )


def bragg_spots(
    det: DetectorPhysics,
    orientation: np.ndarray,
    run: RunParams,
    *,
    size_um: float,
    fluence_per_a2: float,
    sigma_px: float = 1.2,
) -> Spots:
    """Spots of one crystal in `orientation` (3x3 rotation, crystal to lab) on the detector."""
    refl = excited_reflections(
        orientation,
        run.crystal,
        run.beam,
        s_max=det.s_max,
        size_um=size_um,
        fluence_per_a2=fluence_per_a2,
        seed=run.crystal.structure_seed,
    )
    sigma_m = sigma_px * float(np.sqrt(det.pixel_area_m2))
    return project(det.segments, refl, sigma_m=sigma_m, margin_px=int(np.ceil(3 * sigma_px)))


def background(
    det: DetectorPhysics,
    run: RunParams,
    rng: np.random.Generator,
    *,
    pulse: float = 1.0,
    ice: bool = False,
    wobble: float = 1.0,
    events: Delivery = NO_EVENTS,
) -> tuple[np.ndarray, float]:
    """Smooth background photons per pixel (flat float32): water ring, air, jet streak, ice rings;
    and the strongest ice ring's photons/sr (0 without ice). wobble: the jet's scatter this pulse,
    relative to nominal; a blank shot has none."""
    sample = run.sample
    jet = 0.0 if events.blank else wobble  # the jet's scatter this pulse: none if the pulse missed it
    radial = pulse * (jet * _water(det.s_centres, sample) + _air(det.s_centres, sample))
    table = np.repeat(radial[:, None], N_PHI_BINS, axis=1)
    ice_per_sr = 0.0
    if ice:
        rings = pulse * ice_rings(det.s_centres, det.phi_centres, run, rng)
        table += rings
        ice_per_sr = float(rings.mean(axis=1).max())
    image = np.take(table.astype(np.float32).ravel(), det.table_index)
    image *= det.per_sr
    streak = pulse * jet * events.streak_boost * sample.jet_streak_per_sr
    image += np.multiply(det.jet_per_sr, np.float32(streak))
    return image, ice_per_sr


def _water(s: np.ndarray, sample: SampleParams) -> np.ndarray:
    """Liquid water: main ring at ~3.1 A, a weaker second shell, a low-angle floor; photons/sr."""
    s0, w = 1.0 / sample.water_ring_d_a, sample.water_ring_width_inv_a
    shape = (
        np.exp(-0.5 * ((s - s0) / w) ** 2) + 0.35 * np.exp(-0.5 * ((s - 1.55 * s0) / (1.5 * w)) ** 2) + 0.1
    )
    return sample.water_ring_per_sr * shape


def _air(s: np.ndarray, sample: SampleParams) -> np.ndarray:
    return sample.air_scatter_per_sr / (1.0 + (s / sample.air_scatter_s0_inv_a) ** 2)
