"""The detectors hitveto knows: one description each, and nothing else about them anywhere.

A frame header names its detector (`EventKey.detector`); everything that depends on the detector,
from the raw stack's shape to its geometry file and how its gain bits decode, is read from here.
Adding a detector is a new `Detector` below, not a new code path.

Facts from psana2 (slac-lcls/lcls2, psana/detector/UtilsJungfrau.py, UtilsEpix10ka.py and the
geometry files its wheel ships under psana/pscalib/geometry/data/):

- CSPAD (LCLS-I): 32 2x1 sensors of 185 x 388 pixels (two ASICs of 185 x 194 each), 109.92 um,
  int16, one gain.
- Jungfrau 4M: 8 modules of 512 x 1024 pixels (8 ASICs of 256 x 256 each), 75 um, uint16: the ADC in
  bits 0-13, the gain stage in bits 14-15 (00 stage 0, 01 stage 1, 11 stage 2; 10 never valid);
  psana calibrates (raw & 0x3fff - pedestal[stage]) * gain factor[stage], in keV.
- ePix10k2M: 16 panels of 352 x 384 pixels (4 ASICs of 176 x 192), 100 um, uint16: the ADC in bits
  0-13, bit 14 set where an auto-ranging pixel switched to its low gain. hitveto reads it in the
  auto-ranging medium-to-low mode (AML): stage 0 medium, stage 1 low.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class GainBits:
    """How a gain-switching detector's raw word holds its ADC value and its gain stage."""

    data_bits: int  # the ADC value is raw & (1 << data_bits) - 1
    stage_codes: tuple[int, ...]  # raw >> data_bits of each stage, in stage order

    @property
    def data_mask(self) -> int:
        return (1 << self.data_bits) - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Detector:
    name: str  # as frame headers, artifacts and calibration constants name it
    raw_shape: tuple[int, int, int]  # (panels, rows, columns), as psana's det.raw.raw gives it
    raw_dtype: str  # numpy's name of the raw words' type
    pixel_size_m: float
    asic_shape: tuple[int, int]  # the blocks that share a common mode
    geometry_file: str  # psana's geometry-def file: in psana's wheel, else in hitveto.io.geometry_data
    psana_dettype: str  # psana's detector type: what run.Detector(name) reports
    # The version of the `raw` algorithm psana's class for the dettype reads (jungfrau 0.2.0:
    # jungfrau_raw_0_2_0), as the simulator writes raw runs; None: runs in hitveto's container.
    psana_raw_version: tuple[int, int, int] | None = None
    calibrated_unit: str  # what a calibrated pixel counts: "ADU" or "keV"
    gain: GainBits | None = None  # None: one gain, the raw word is the ADC value

    @property
    def stages(self) -> int:
        """How many gain stages have constants of their own (pedestal, gain factor)."""
        return len(self.gain.stage_codes) if self.gain else 1


CSPAD = Detector(
    name="cspad",
    raw_shape=(32, 185, 388),
    raw_dtype="int16",
    pixel_size_m=109.92e-6,
    asic_shape=(185, 194),
    geometry_file="geometry-def-cspad.data",
    psana_dettype="cspad",
    calibrated_unit="ADU",
)
JUNGFRAU4M = Detector(
    name="jungfrau4m",
    raw_shape=(8, 512, 1024),
    raw_dtype="uint16",
    pixel_size_m=75e-6,
    asic_shape=(256, 256),
    geometry_file="geometry-def-jungfrau4M.data",
    psana_dettype="jungfrau",
    psana_raw_version=(0, 2, 0),
    calibrated_unit="keV",
    gain=GainBits(data_bits=14, stage_codes=(0, 1, 3)),
)
EPIX10K2M = Detector(
    name="epix10k2m",
    raw_shape=(16, 352, 384),
    raw_dtype="uint16",
    pixel_size_m=100e-6,
    asic_shape=(176, 192),
    geometry_file="geometry-def-epix10k2m.data",
    psana_dettype="epix10ka",
    psana_raw_version=(2, 0, 1),
    calibrated_unit="keV",
    gain=GainBits(data_bits=14, stage_codes=(0, 1)),
)
DETECTORS: dict[str, Detector] = {d.name: d for d in (CSPAD, JUNGFRAU4M, EPIX10K2M)}


def get(name: str) -> Detector:
    """The description of a detector by name; KeyError naming those known."""
    try:
        return DETECTORS[name]
    except KeyError:
        raise KeyError(f"detector {name!r}: hitveto knows {sorted(DETECTORS)}") from None


def of_shape(shape: tuple[int, ...]) -> Detector | None:
    """The detector whose raw stack has this shape, or None."""
    return next((d for d in DETECTORS.values() if d.raw_shape == tuple(shape)), None)


def describing(name: str, shape: tuple[int, ...]) -> str:
    """hitveto's name for frames read under a DAQ's detector name (psana's `jungfrau` of a 4M is
    hitveto's `jungfrau4m`): the name itself where hitveto knows it, else the description whose raw
    stack has the frames' shape, else the name as it is (a daemon then keeps them unjudged as
    `unknown_detector`)."""
    if name in DETECTORS:
        return name
    known = of_shape(shape)
    return known.name if known is not None else name
