"""`hitveto dark RUN... --out constants.npz`: calibration constants from dark runs (beam off).

Each pixel's mean over the dark frames is its pedestal, its rms its noise (read noise and the
common mode, as psana's pixel_rms of an uncorrected dark). The status flags what calibration cannot
fix, per ASIC so that a whole ASIC's level does not count:

- dead: noise below DEAD_NOISE of its ASIC's median noise (a stuck pixel reads its pedestal alone);
- hot: noise above HOT_NOISE times the median, or a pedestal more than HOT_PEDESTAL_SIGMA robust
  standard deviations above its ASIC's median pedestal (dark current).

A gain-switching detector (Jungfrau, ePix10ka) takes its darks with each gain stage forced in turn:
each pixel's pedestal of a stage is its mean over the frames that read that stage (the gain bits
say which), the noise and status come from the first stage. Its gains are no dark's business: they
come from the detector's gain calibration (`gain`: ADC per keV of each stage, (stages, *shape)), and
the constants keep their inverse, keV per ADC, as psana's gain factor.

A PNG shows the pedestal and noise maps on the assembled detector, and the status counts.

A beamline's existing darks, processed by psana into its LCLS calib store
(`calib/CsPad::CalibV1/<source>/{pedestals,pixel_rms,pixel_status}/<first>-<last|end>.data`), convert
with `from_psana_calib` (`hitveto dark --psana-calib DIR --source SRC --run N`), through psana's own
file finder and reader.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hitveto.io import calibration, sources
from hitveto.io.calibration import Constants, asics
from hitveto.io.psana_import import import_psana
from hitveto_client import detectors
from hitveto_client.cxi import MASK_DEAD, MASK_HOT, MASK_INVALID

log = logging.getLogger(__name__)
DEAD_NOISE = 0.2
HOT_NOISE = 5.0
HOT_PEDESTAL_SIGMA = 5.0
# psana's calib store groups constants by detector type; its own lookup of the group from the
# source name is gone from psana2 (CalibFileFinder without a group raises), so it is named here
PSANA_GROUPS = {"cspad": "CsPad::CalibV1"}


def dark_constants(
    runs: list[Path], *, detector: str = "cspad", limit: int | None = None, gain: np.ndarray | None = None
) -> Constants:
    """Pedestal, noise and status from every frame of the dark runs (progress bar per run); a
    gain-switching detector's per stage, with its `gain` map (ADC per keV per stage)."""
    bits = detectors.get(detector).gain
    if (bits is None) != (gain is None):
        raise ValueError(
            f"{detector}: "
            + ("a gain map is needed (ADC per keV of each gain stage)" if bits else "one gain: no map")
        )
    sums = _StageSums(bits)
    for run in runs:
        for ev in tqdm(sources.events(run, detector=detector, limit=limit), desc=f"dark {Path(run).name}"):
            sums.add(ev.image)
    pedestal, noise = sums.pedestal_and_noise(runs)
    numbers = [int(sources.run_info(r).get("run", 0)) for r in runs]
    status = status_of(pedestal[0], noise)
    status[~np.isfinite(pedestal).all(axis=0)] |= MASK_INVALID  # a stage this pixel never read
    return Constants(
        detector=detector,
        pedestal=np.nan_to_num(pedestal if bits else pedestal[0]).astype(np.float32),
        noise=noise.astype(np.float32),
        status=status,
        runs=(max(numbers), -1),  # from the dark on, until the next one
        source=", ".join(Path(r).name for r in runs),
        common_mode="none" if bits else "asic_dark_peak",
        gain_factor=None if gain is None else (1 / gain).astype(np.float32),
    )


class _StageSums:
    """Each pixel's sum, sum of squares and count of the dark frames' ADC, per gain stage."""

    def __init__(self, bits: detectors.GainBits | None) -> None:
        self.bits = bits
        self.total = self.total_sq = self.count = np.zeros(0)

    def add(self, frame: np.ndarray) -> None:
        stages = len(self.bits.stage_codes) if self.bits else 1
        if self.total.size == 0:
            self.total, self.total_sq, self.count = (np.zeros((stages, *frame.shape)) for _ in range(3))
        if self.bits is None:  # one gain: every pixel reads it, no mask to build
            adc = frame.astype(np.float64)
            self.total[0] += adc
            self.total_sq[0] += adc * adc
            self.count[0] += 1
            return
        stage = calibration.stage_of_codes(self.bits)[frame >> self.bits.data_bits]
        adc = (frame & self.bits.data_mask).astype(np.float64)
        for k in range(stages):
            read = stage == k
            self.total[k] += np.where(read, adc, 0)
            self.total_sq[k] += np.where(read, adc * adc, 0)
            self.count[k] += read

    def pedestal_and_noise(self, runs: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        """(stages, *shape) pedestals, NaN where a stage was never read; the first stage's noise."""
        n = self.count[0] if self.count.size else np.zeros(1)
        if n.max() < 2:
            raise ValueError(
                f"{runs}: {int(n.max())} dark frames in the first gain stage; the noise needs at least "
                "2 (100 or more give good pedestals)"
            )
        with np.errstate(invalid="ignore", divide="ignore"):
            pedestal = self.total / self.count
            variance = self.total_sq[0] / n - pedestal[0] ** 2
            noise = np.sqrt(np.maximum(np.nan_to_num(variance), 0.0) * n / np.maximum(n - 1, 1))
        return pedestal, noise


def from_psana_calib(calib_dir: Path, source: str, run: int, *, detector: str = "cspad") -> Constants:
    """Constants from psana's calib store, valid for `run`: its pedestals and pixel_rms (what
    psana's dark processing writes), and its pixel_status where there is one (non-zero: bad)."""
    group, shape = PSANA_GROUPS[detector], _shape(detector)
    finder = import_psana("psana.pscalib.calib.CalibFileFinder").CalibFileFinder(
        str(calib_dir), group, pbits=0
    )
    reader = import_psana("psana.pscalib.calib.NDArrIO")
    found: dict[str, np.ndarray] = {}
    names: list[str] = []
    for kind in ("pedestals", "pixel_rms", "pixel_status"):
        path = finder.findCalibFile(source, kind, run)
        if not path:
            if kind == "pixel_status":
                continue
            raise FileNotFoundError(f"{calib_dir}: no {kind} for {source} valid for run {run}")
        found[kind] = np.asarray(reader.load_txt(path), dtype=np.float64).reshape(shape)
        names.append(path)
    first, _, last = Path(names[0]).stem.partition("-")
    bad = found.get("pixel_status", np.zeros(shape)) != 0
    return Constants(
        detector=detector,
        pedestal=found["pedestals"].astype(np.float32),
        noise=found["pixel_rms"].astype(np.float32),
        status=np.where(bad, MASK_INVALID, 0).astype(np.uint16),
        runs=(int(first), -1 if last == "end" else int(last)),
        source=", ".join(names),
    )


def _shape(detector: str) -> tuple[int, ...]:
    from hitveto.io import geometry

    if detector not in PSANA_GROUPS:
        raise ValueError(f"detector {detector!r}: psana calib stores are read for {sorted(PSANA_GROUPS)}")
    return geometry.RAW_SHAPE


def status_of(pedestal: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """uint16 status (0 good, MASK_DEAD, MASK_HOT) judged per ASIC (per panel for other detectors)."""
    status = np.zeros(pedestal.shape, np.uint16)
    for ped, rms, flags in zip(_asics(pedestal), _asics(noise), _asics(status)):
        typical = np.median(rms)
        level = np.median(ped)
        spread = 1.4826 * np.median(np.abs(ped - level))  # robust: hot pixels do not widen it
        flags[rms < DEAD_NOISE * typical] |= MASK_DEAD
        flags[(rms > HOT_NOISE * typical) | (ped - level > HOT_PEDESTAL_SIGMA * max(spread, 1.0))] |= MASK_HOT
    return status


def _asics(a: np.ndarray) -> list[np.ndarray]:
    """Views of each ASIC, as calibration's common mode takes them (calibration.asics)."""
    view = asics(a)
    return [view[p, :, k] for p in range(view.shape[0]) for k in range(view.shape[2])]


def plot(constants: Constants, path: Path) -> None:
    """Pedestal and noise maps (assembled CSPAD image when the frames are a raw stack)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hitveto.io import geometry

    def image(a: np.ndarray) -> np.ndarray:
        if a.shape == detectors.get(constants.detector).raw_shape:
            return geometry.assemble(a, constants.detector)
        return a.reshape(-1, a.shape[-1])

    hot = int((constants.status & MASK_HOT).astype(bool).sum())
    dead = int((constants.status & MASK_DEAD).astype(bool).sum())
    fig, (ped, rms) = plt.subplots(1, 2, figsize=(13, 6))
    fig.suptitle(f"dark: {constants.source}; status: {hot} hot, {dead} dead pixels", fontsize=10)
    for ax, values, title in (
        (ped, constants.pedestal.reshape(-1, *constants.shape)[0], "pedestal (ADU)"),
        (rms, constants.noise, "noise (ADU rms)"),
    ):
        low, high = np.percentile(values, [1, 99])
        shown = ax.imshow(image(values), vmin=low, vmax=high, cmap="viridis")
        ax.set(title=title, xticks=[], yticks=[])
        fig.colorbar(shown, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
