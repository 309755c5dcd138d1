"""Per-run parameters of the SFX frame simulator: beam, crystals, sample, frame mix, detector.

Everything is a frozen, slotted, keyword-only dataclass, so a `RunParams` is hashable (it keys the
simulator's caches), serialises with `dataclasses.asdict`, and is varied with `dataclasses.replace`.
Units are in the field names. `PRESETS` (presets.toml) holds the default lysozyme run and two
"other experiment" variants (different cell, photon energy, distance, gain mode) for cross-experiment
validation.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hitveto_client import detectors

HC_EV_A = 12398.42  # h*c in eV*Angstrom: wavelength_a = HC_EV_A / photon_energy_ev


@dataclass(frozen=True, slots=True, kw_only=True)
class BeamParams:
    """The X-ray pulse at the sample; the focus is a round Gaussian."""

    photon_energy_ev: float = 9500.0
    photons_per_pulse: float = 1e11  # at the sample, after beamline transmission
    pulse_energy_jitter: float = 0.15  # relative rms of the SASE pulse energy (gamma-distributed)
    focus_fwhm_um: float = 1.5
    bandwidth_rms: float = 1.2e-3  # relative rms spread of the wavelength
    polarisation_horizontal: float = 0.99  # fraction of linear polarisation along lab x
    # where the beam crosses the detector, from the detector's nominal centre (x, y): beamlines
    # run with the beam mm off the centre (the beam stop follows the beam)
    detector_offset_mm: tuple[float, float] = (0.0, 0.0)

    @property
    def wavelength_a(self) -> float:
        return HC_EV_A / self.photon_energy_ev


@dataclass(frozen=True, slots=True, kw_only=True)
class CrystalParams:
    """The crystal population: unit cell, sizes (log-normal), disorder and scattering power."""

    cell_a: tuple[float, float, float] = (79.1, 79.1, 37.9)  # a, b, c in Angstrom
    cell_angles_deg: tuple[float, float, float] = (90.0, 90.0, 90.0)  # alpha, beta, gamma
    size_um_median: float = 1.5  # edge of a cube-like crystal, strong and multiple hits
    weak_size_um_median: float = 0.35  # weak hits: sub-micron crystals
    size_log_sigma: float = 0.35  # sigma of ln(size)
    mosaicity_deg: float = 0.08  # rms angular spread, beam divergence folded in
    b_factor_a2: float = 25.0  # Wilson B: <|F|^2> falls as exp(-B s^2 / 2)
    f2_per_a3: float = 1.2  # sum of f^2 over the cell at s=0 per cell volume, e^2/A^3
    spot_sigma_px: tuple[float, float] = (0.9, 1.5)  # per-crystal spot footprint rms, drawn uniformly
    max_crystals: int = 3  # a multiple hit has 2..max_crystals crystals
    structure_seed: int = 1  # picks the |F|^2 of every hkl: one per protein, not per run


@dataclass(frozen=True, slots=True, kw_only=True)
class SampleParams:
    """Sample delivery and beamline backgrounds (per steradian, for a nominal pulse), beam stop."""

    water_ring_per_sr: float = 1.0e6  # photons/sr at the water ring peak (~4 um jet)
    water_ring_d_a: float = 3.1
    water_ring_width_inv_a: float = 0.04  # rms width of the ring in s = 1/d
    air_scatter_per_sr: float = 2.0e5  # photons/sr towards s = 0
    air_scatter_s0_inv_a: float = 0.05  # s at which air scatter has halved
    jet_streak_per_sr: float = 4.0e5  # photons/sr on the streak at small angle
    jet_streak_width_mrad: float = 1.5  # rms, perpendicular to the streak (jet along lab y)
    jet_streak_angle_deg: float = 0.0  # the streak's angle from horizontal (a tilted jet)
    jet_streak_falloff_deg: float = 6.0  # 2-theta at which the streak has halved
    background_jitter: float = 0.2  # relative rms frame-to-frame of jet scatter (jet wobble)
    beamstop_radius_mm: float = 2.5
    beamstop_rod_width_mm: float = 1.0  # the holder rod, running from the stop towards +y
    beamstop_transmission: float = 1e-3


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameMix:
    """What fraction of frames is which kind; hexagonal ice Ih rings for ice frames."""

    hit_fraction: float = 0.25
    multiple_hit_fraction: float = 0.10  # of hits
    weak_hit_fraction: float = 0.30  # of hits
    ice_miss_fraction: float = 0.08  # of misses
    ice_with_hit_fraction: float = 0.03  # of hits
    ice_d_spacings_a: tuple[float, ...] = (3.90, 3.67, 3.44, 2.67, 2.25, 2.07, 1.92)
    ice_relative_intensity: tuple[float, ...] = (1.0, 0.7, 0.6, 0.25, 0.35, 0.3, 0.2)
    ice_ring_per_sr: float = 3.0e6  # photons/sr at the peak of the strongest ring
    ice_ring_width_inv_a: float = 1.5e-3  # rms width in s = 1/d
    ice_texture: float = 0.6  # log-amplitude of the rings' azimuthal patchiness
    # Sample-delivery events (sim/delivery.py); 0 draws nothing, so runs of the presets that leave
    # them out are the same as before they existed.
    blank_fraction: float = 0.0  # of misses: the pulse missed the jet (air scatter only)
    streak_fraction: float = 0.0  # of frames: the jet's surface lit, its streak brighter
    streak_boost: tuple[float, float] = (3.0, 25.0)  # how much brighter: log-uniform in this
    ice_crystallite_fraction: float = 0.0  # of ice frames: sharp ice spots instead of rings
    ice_crystallite_spots: tuple[float, float] = (10.0, 150.0)  # how many: log-uniform in this
    ice_spot_photons: tuple[float, float] = (40.0, 4000.0)  # each, nominal pulse: log-uniform


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorParams:
    """The detector's response in its calibrated unit (as psana's calib gives it): by default a CSPAD
    in high gain, pedestal-subtracted ADU; ASICs are 185 x 194 pixels. Other detectors
    (detectors.toml, `on_detector`) count keV: their "adu" fields are then keV."""

    name: str = "cspad"  # hitveto_client.detectors: the geometry, raw shape and gain bits
    distance_m: float = 0.100
    adu_per_photon: float = 35.0  # CSPAD high gain at 9.5 keV (~ 3.7 ADU/keV)
    gain_rms: float = 0.03  # pixel-to-pixel gain spread, fixed per run
    read_noise_adu: float = 4.0  # ~0.11 photon rms
    pedestal_residual_adu: float = 1.5  # rms per pixel, fixed per run
    common_mode_adu: float = 3.0  # rms per ASIC per frame, left after correction
    row_common_mode_adu: float = 1.0  # rms per ASIC row per frame
    asic_shape: tuple[int, int] = (185, 194)
    hot_pixel_fraction: float = 1e-4
    hot_pixel_adu: float = 2000.0  # mean extra ADU of a hot pixel (exponential spread)
    dead_pixel_fraction: float = 2e-4
    saturation_adu: float = 15000.0  # 14-bit ADC less a ~1300 ADU pedestal
    # Raw readout (runs simulated with readout "raw" or "dark"): the ADC counts before calibration.
    # The pedestals, gain map, hot and dead pixels then belong to the detector unit (drawn from
    # unit_seed: the same in its dark runs and its data runs), not to the run.
    unit_seed: int | None = None
    pedestal_adu: tuple[float, float] = (900.0, 1700.0)  # each ASIC's pedestal level: uniform in this
    pedestal_spread_adu: float = 15.0  # rms of the pixels' pedestals about their ASIC's level
    adc_max: int = 16383  # 14 bits
    # Gain-switching detectors (Jungfrau, ePix10ka: detectors.toml): each stage's gain, ADC per
    # calibrated unit (keV), in stage order; a pixel whose ADC would pass `switch_adc` in one stage
    # reads the next. Empty: one gain, and calibrated ADU are the ADC counts less the pedestal.
    stage_gain_adu: tuple[float, ...] = ()
    stage_gain_rms: float = 0.02  # the unit's pixel-to-pixel spread of each stage's gain
    switch_adc: float = 14000.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RunParams:
    """One simulated run: frame `i` of a run is drawn from `numpy.random.default_rng([seed, i])`."""

    seed: int = 0
    n_frames: int = 1000
    beam: BeamParams = field(default_factory=BeamParams)
    crystal: CrystalParams = field(default_factory=CrystalParams)
    sample: SampleParams = field(default_factory=SampleParams)
    mix: FrameMix = field(default_factory=FrameMix)
    detector: DetectorParams = field(default_factory=DetectorParams)


def _from_table(cls: Any, table: dict[str, Any]) -> Any:
    """A params dataclass from a TOML table: sub-tables become the field's dataclass, arrays tuples."""
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in table.items():
        if isinstance(value, dict):
            value = _from_table(hints[name], value)
        values[name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def _presets() -> dict[str, RunParams]:
    with (Path(__file__).parent / "presets.toml").open("rb") as f:
        return {name: _from_table(RunParams, table) for name, table in tomllib.load(f).items()}


PRESETS: dict[str, RunParams] = _presets()  # presets.toml


def _responses() -> dict[str, dict[str, Any]]:
    with (Path(__file__).parent / "detectors.toml").open("rb") as f:
        return tomllib.load(f)


RESPONSES: dict[str, dict[str, Any]] = _responses()  # detectors.toml: DetectorParams fields


def on_detector(params: RunParams, name: str) -> RunParams:
    """The same experiment recorded by another detector: its response (detectors.toml); a detector
    calibrated in keV counts a photon as its energy in keV."""
    if name not in RESPONSES:
        raise ValueError(f"detector {name!r}: the simulator knows {sorted(RESPONSES)}")
    response = _from_table(DetectorParams, {"name": name, **RESPONSES[name]})
    if detectors.get(name).calibrated_unit == "keV":
        response = dataclasses.replace(response, adu_per_photon=params.beam.photon_energy_ev / 1000)
    detector = dataclasses.replace(response, distance_m=params.detector.distance_m)
    return dataclasses.replace(params, detector=detector)
