"""Frames to CXI-layout HDF5 files that CrystFEL and Cheetah-style tools read.

    /entry_1/data_1/data          (N, *frame_shape)  the frames, bit-identical to what was sent
    /entry_1/event/{run,pulse_id,timestamp}
    /entry_1/result_1/{score,keep_reason,model_version,threshold}   why each frame was kept
    /entry_1/result_1/class_<name>  (N,) float32 P(class) of each verdict class, NaN where not given
    /entry_1/sample_1/truth/<field>                                 simulator truth, when given
    /entry_1/instrument_1/source_1/energy       (N,) photon energy, J  (CXI)
    /LCLS/photon_energy_eV                      (N,) the same in eV    (Cheetah; CrystFEL geometries)
    /entry_1/instrument_1/detector_1/distance   (N,) detector distance, m
    /entry_1/instrument_1/detector_1/{mask,saturation_value,adu_per_photon,beam_center_m}  per file
    /entry_1/instrument_1/detector_1/description  the detector's name (hitveto_client.detectors)

What indexing needs besides the pixels comes from an `Experiment` (NaN where none is given); a
`hitveto geom` geometry file points CrystFEL at these paths.

Files roll over at `max_frames` frames, `max_bytes` of pixel data or `max_seconds` open, whichever
comes first, or when a frame brings a verdict class the open file has no column for (the first
verdict with classes, a model with other classes: SWMR adds no datasets, the next file has a column
for every class seen). Each frame is flushed once written, so a crash loses only that frame. Each
file is written in SWMR mode: tools that open it with HDF5's SWMR flag (h5py `swmr=True`, as
OM-style monitors do) read it while it grows. Readers without the flag, CrystFEL among them, can
open a file only once it is closed: `<prefix>.lst` lists the closed files, one path a line, as
`indexamajig -i` takes them. Frames are stored in the order their verdicts came, which is not always
pulse order: `event/pulse_id[N]` is the pulse of frame N (CrystFEL's event `//N`).
Needs h5py (the one client module that does; the DAQ client does not).

A frame that cannot be written is never lost silently: `write` returns False, the frame is counted
(`not_written`, `error`) and logged, and the file is closed cleanly so that all it holds stays
readable. A full disk is caught before HDF5 meets it: HDF5 does not report a failed write from its
cache (measured: it went on, read back wrong frames, and the process crashed at exit with a file
that would not open), so a frame is written only while the disk keeps `min_free_bytes` free besides.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

log = logging.getLogger(__name__)
STR = h5py.string_dtype()
MIN_FREE_BYTES = 64 << 20  # kept free on the disk: HDF5's metadata at close, other writers
EV_TO_J = 1.602176634e-19
# SWMR needs HDF5's 1.10 file format; no newer, so that CrystFEL built on HDF5 1.10 reads the files.
LIBVER = ("v110", "v110")
DETECTOR = "entry_1/instrument_1/detector_1"
MASK_INVALID, MASK_HOT, MASK_DEAD = 0x1, 0x4, 0x8  # bad-pixel bits, as CXI defines them


@dataclass(frozen=True, slots=True, kw_only=True)
class Experiment:
    """What indexing needs besides the pixels, for a run: stored in every file the writer makes."""

    photon_energy_ev: float
    distance_m: float  # interaction point to the detector's nominal plane
    adu_per_photon: float
    saturation_adu: float = math.inf
    # where the beam crosses the detector, from the geometry's nominal centre: lab (x, y), metres
    beam_center_m: tuple[float, float] = (0.0, 0.0)
    mask: np.ndarray | None = None  # frame-shaped, CXI convention: 0 good, nonzero bad
    detector: str = "cspad"  # hitveto_client.detectors: whose geometry places the pixels

    def per_frame(self, photon_energy_ev: float | None, distance_m: float | None) -> tuple:
        """The per-frame columns: the frame's own values where it has them, else the run's."""
        energy = self.photon_energy_ev if photon_energy_ev is None else photon_energy_ev
        distance = self.distance_m if distance_m is None else distance_m
        return (
            ("entry_1/instrument_1/source_1/energy", energy * EV_TO_J),
            ("LCLS/photon_energy_eV", energy),
            (f"{DETECTOR}/distance", distance),
        )


UNKNOWN = Experiment(photon_energy_ev=math.nan, distance_m=math.nan, adu_per_photon=math.nan)


class CxiWriter:
    """Appends frames to `<prefix>-NNNN.cxi` files; a context manager."""

    def __init__(
        self,
        prefix: Path,
        *,
        max_frames: int = 10_000,
        max_bytes: int = 4 << 30,
        max_seconds: float = 600.0,
        flush_every: int = 1,
        min_free_bytes: int = MIN_FREE_BYTES,
        experiment: Experiment = UNKNOWN,
    ) -> None:
        self.prefix = Path(prefix)
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.experiment = experiment
        self.flush_every = flush_every
        self.min_free_bytes = min_free_bytes
        self.files: list[Path] = []
        self.written = 0
        self.not_written = 0  # frames handed to write() that are not on disk
        self.error = ""  # why the first of them was not written
        self._file: h5py.File | None = None
        self._n = 0
        self._bytes = 0
        self._opened = 0.0  # time.monotonic() when the open file was made
        self._truth_fields: frozenset[str] = frozenset()  # the open file's truth columns
        self._truth_dropped: set[str] = set()
        self._classes: frozenset[str] = frozenset()  # the open file's class columns

    @classmethod
    def single_file(cls, prefix: Path, experiment: Experiment = UNKNOWN) -> CxiWriter:
        """A writer that never rolls over: a whole run in one file (`files[0]`)."""
        return cls(prefix, max_frames=1 << 62, max_bytes=1 << 62, max_seconds=math.inf, experiment=experiment)

    def write(
        self,
        image: np.ndarray,
        *,
        run: int,
        pulse_id: int,
        timestamp: int = 0,
        score: float = float("nan"),
        keep_reason: str = "",
        model_version: str = "",
        threshold: float = float("nan"),
        truth: dict[str, int] | None = None,
        photon_energy_ev: float | None = None,
        distance_m: float | None = None,
        class_scores: dict[str, float] | None = None,
    ) -> bool:
        """Append one frame; False (counted, logged, file closed cleanly) if it could not be.

        `photon_energy_ev` and `distance_m` are the frame's own, where the stream has them; else the
        experiment's are stored. `class_scores`: the verdict's class probabilities, by class."""
        classes = class_scores or {}
        try:
            self._make_room(image, truth or {}, classes.keys())
            self._append(
                image,
                (
                    ("entry_1/event/run", run),
                    ("entry_1/event/pulse_id", pulse_id),
                    ("entry_1/event/timestamp", timestamp),
                    ("entry_1/result_1/score", score),
                    ("entry_1/result_1/keep_reason", keep_reason),
                    ("entry_1/result_1/model_version", model_version),
                    ("entry_1/result_1/threshold", threshold),
                    *self.experiment.per_frame(photon_energy_ev, distance_m),
                    *((f"entry_1/result_1/class_{c}", classes.get(c, math.nan)) for c in self._classes),
                ),
                truth or {},
            )
        except (OSError, RuntimeError, ValueError, KeyError) as exc:  # h5py raises all of these
            self._fail(exc)
            return False
        return True

    def _make_room(self, image: np.ndarray, truth: dict[str, int], classes: Iterable[str]) -> None:
        """A file that can take this frame; OSError(ENOSPC) if the disk could not take it."""
        if self._file is None:  # a new file: its folder first (statvfs reads it)
            self.prefix.parent.mkdir(parents=True, exist_ok=True)
        disk = os.statvfs(self.prefix.parent)
        free = disk.f_bavail * disk.f_frsize
        if free < image.nbytes + self.min_free_bytes:
            raise OSError(
                errno.ENOSPC,
                f"No space left for a frame: {free >> 20} MiB free on "
                f"{self.prefix.parent}, a frame needs {image.nbytes / 2**20:.1f} MiB and "
                f"{self.min_free_bytes >> 20} MiB stay free",
            )
        full = self._n >= self.max_frames or (self._n and self._bytes + image.nbytes > self.max_bytes)
        old = time.monotonic() - self._opened > self.max_seconds
        new_classes = not self._classes.issuperset(classes)
        if self._file is None or full or old or new_classes:
            self._classes |= frozenset(classes)  # a class once seen keeps its column (NaN when absent)
            self._roll(image, truth)

    def _append(self, image: np.ndarray, columns: tuple, truth: dict[str, int]) -> None:
        f, i = self._file, self._n
        assert f is not None  # _roll opened it
        for name, value in (("entry_1/data_1/data", image), *columns):
            _append(f[name], i, value)
        for name in self._truth_fields:  # a field this frame lacks reads -1
            _append(f[f"entry_1/sample_1/truth/{name}"], i, truth.get(name, -1))
        self._note_dropped(truth.keys() - self._truth_fields)
        self._n += 1
        self._bytes += image.nbytes
        self.written += 1
        if self._n % self.flush_every == 0:
            f.flush()

    def _fail(self, exc: Exception) -> None:
        """Count the frame, say why (first time loudly), and close the file at its last whole frame."""
        self.not_written += 1
        if not self.error:
            self.error = f"{type(exc).__name__}: {exc}"
            log.error(
                "frame not written (%s); %s", self.error, "later frames are retried as they come and counted"
            )
        elif self.not_written % 1000 == 0:
            log.error("%d frames not written so far (%s)", self.not_written, self.error)
        if self._file is not None:
            try:  # a frame half appended is cut off, so that every column has the same length
                for dataset in _datasets(self._file):
                    if dataset.shape and dataset.shape[0] > self._n:
                        dataset.resize(self._n, axis=0)
            except Exception:
                log.exception("could not trim %s to its %d whole frames", self.files[-1], self._n)
            self.close()

    @property
    def _listing(self) -> Path:
        return self.prefix.with_name(f"{self.prefix.name}.lst")

    def _note_dropped(self, fields: set[str]) -> None:
        """Truth fields that came after the file was laid out (SWMR adds no datasets): said once."""
        if fields - self._truth_dropped:
            log.warning("truth fields %s not stored: not in this file's layout", sorted(fields))
            self._truth_dropped |= fields

    def _roll(self, image: np.ndarray, truth: dict[str, int]) -> None:
        """Close the open file and start the next, laid out for frames like `image`."""
        self.close()
        if not self.files:  # a new writer numbers from 0000 again: an old list names other files
            self._listing.unlink(missing_ok=True)
        path = self.prefix.with_name(f"{self.prefix.name}-{len(self.files):04d}.cxi")
        f = h5py.File(path, "w", libver=LIBVER)
        try:
            _layout(f, image, self.experiment, sorted(truth), sorted(self._classes))
            f.swmr_mode = True  # from here on no new datasets: every column exists already
        except Exception:
            f.close()
            raise
        self._file, self._n, self._bytes, self._opened = f, 0, 0, time.monotonic()
        self._truth_fields = frozenset(truth)
        self.files.append(path)

    def close(self) -> None:
        """Close the open file and list it in `<prefix>.lst` as complete."""
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except Exception as exc:
                self.error = self.error or f"{type(exc).__name__}: {exc}"
                log.exception("closing %s failed", self.files[-1])
                return
            try:
                with self._listing.open("a") as listing:
                    listing.write(f"{self.files[-1].resolve()}\n")
            except OSError:
                log.exception("could not list %s as complete", self.files[-1])

    def __enter__(self) -> CxiWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _layout(
    f: h5py.File, image: np.ndarray, experiment: Experiment, truth: list[str], classes: list[str]
) -> None:
    """Every dataset the file will hold: SWMR lets a file grow, but not gain datasets."""
    f.attrs["cxi_version"] = 150
    f.create_dataset(
        "entry_1/data_1/data",
        shape=(0, *image.shape),
        dtype=image.dtype,
        maxshape=(None, *image.shape),
        chunks=(1, *image.shape),
    )
    for name, dtype in (
        ("event/run", "i8"),
        ("event/pulse_id", "i8"),
        ("event/timestamp", "u8"),
        ("result_1/score", "f4"),
        ("result_1/keep_reason", STR),
        ("result_1/model_version", STR),
        ("result_1/threshold", "f4"),
        *((f"sample_1/truth/{name}", "i8") for name in truth),
        *((f"result_1/class_{name}", "f4") for name in classes),
    ):
        f.create_dataset(f"entry_1/{name}", shape=(0,), maxshape=(None,), dtype=dtype)
    for name, _ in experiment.per_frame(None, None):
        f.create_dataset(name, shape=(0,), maxshape=(None,), dtype="f8")
    f["entry_1/data_1"].attrs["signal"] = "data"
    detector = f[DETECTOR]
    detector["saturation_value"] = experiment.saturation_adu
    detector["adu_per_photon"] = experiment.adu_per_photon
    detector["beam_center_m"] = np.asarray(experiment.beam_center_m, dtype="f8")
    detector["description"] = experiment.detector
    if experiment.mask is not None:
        detector.create_dataset("mask", data=np.asarray(experiment.mask, dtype=np.uint16))


def _datasets(f: h5py.File) -> list[h5py.Dataset]:
    found: list[h5py.Dataset] = []
    f.visititems(lambda _, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return found


def _append(dataset: h5py.Dataset, index: int, value: object) -> None:
    dataset.resize(index + 1, axis=0)
    dataset[index] = value


def read_experiment(path: Path) -> tuple[Experiment, tuple[int, ...]]:
    """The experiment a CXI file was written with, and its frame shape (readable while written)."""
    with h5py.File(path, "r", swmr=True) as f:
        detector = f[DETECTOR]
        mask = detector["mask"][()] if "mask" in detector else None
        energy, distance = (f[name][()] for name, _ in UNKNOWN.per_frame(None, None)[1:])
        x, y = detector["beam_center_m"][()]
        experiment = Experiment(
            photon_energy_ev=float(energy[0]) if len(energy) else math.nan,
            distance_m=float(distance[0]) if len(distance) else math.nan,
            adu_per_photon=float(detector["adu_per_photon"][()]),
            saturation_adu=float(detector["saturation_value"][()]),
            beam_center_m=(float(x), float(y)),
            mask=mask,
            detector=detector["description"].asstr()[()] if "description" in detector else "cspad",
        )
        return experiment, tuple(f["entry_1/data_1/data"].shape[1:])


def read_frames(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """All frames of one CXI file and its per-frame columns (event and result fields)."""
    with h5py.File(path, "r") as f:
        columns = {
            f"{group}/{name}": f[f"entry_1/{group}/{name}"][()]
            for group in ("event", "result_1")
            for name in f[f"entry_1/{group}"]
        }
        if "entry_1/sample_1/truth" in f:
            columns |= {f"truth/{n}": d[()] for n, d in f["entry_1/sample_1/truth"].items()}
        return f["entry_1/data_1/data"][()], columns
