"""Frames to CXI-layout HDF5 files that CrystFEL and Cheetah-style tools read.

    /entry_1/data_1/data          (N, *frame_shape)  the frames, bit-identical to what was sent
    /entry_1/event/{run,pulse_id,timestamp}
    /entry_1/result_1/{score,keep_reason,model_version,threshold}   why each frame was kept
    /entry_1/sample_1/truth/<field>                                 simulator truth, when given

Files roll over at `max_frames` frames or `max_bytes` of pixel data, whichever comes first; each
frame is flushed once written, so a crash loses only the frame being written. Needs h5py (the one
client module that does; the DAQ client does not).

A frame that cannot be written is never lost silently: `write` returns False, the frame is counted
(`not_written`, `error`) and logged, and the file is closed cleanly so that all it holds stays
readable. A full disk is caught before HDF5 meets it: HDF5 does not report a failed write from its
cache (measured: it went on, read back wrong frames, and the process crashed at exit with a file
that would not open), so a frame is written only while the disk keeps `min_free_bytes` free besides.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import h5py
import numpy as np

log = logging.getLogger(__name__)
STR = h5py.string_dtype()
MIN_FREE_BYTES = 64 << 20  # kept free on the disk: HDF5's metadata at close, other writers


class CxiWriter:
    """Appends frames to `<prefix>-NNNN.cxi` files; a context manager."""

    def __init__(
        self,
        prefix: Path,
        *,
        max_frames: int = 10_000,
        max_bytes: int = 4 << 30,
        flush_every: int = 1,
        min_free_bytes: int = MIN_FREE_BYTES,
    ) -> None:
        self.prefix = Path(prefix)
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.flush_every = flush_every
        self.min_free_bytes = min_free_bytes
        self.files: list[Path] = []
        self.written = 0
        self.not_written = 0  # frames handed to write() that are not on disk
        self.error = ""  # why the first of them was not written
        self._file: h5py.File | None = None
        self._n = 0
        self._bytes = 0

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
    ) -> bool:
        """Append one frame; False (counted, logged, file closed cleanly) if it could not be."""
        try:
            self._make_room(image)
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
                ),
                truth or {},
            )
        except (OSError, RuntimeError, ValueError, KeyError) as exc:  # h5py raises all of these
            self._fail(exc)
            return False
        return True

    def _make_room(self, image: np.ndarray) -> None:
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
        if self._file is None or full:
            self._roll(image)

    def _append(self, image: np.ndarray, columns: tuple, truth: dict[str, int]) -> None:
        f, i = self._file, self._n
        assert f is not None  # _roll opened it
        for name, value in (("entry_1/data_1/data", image), *columns):
            _append(f[name], i, value)
        for name, value in truth.items():
            path = f"entry_1/sample_1/truth/{name}"
            if path not in f:
                f.create_dataset(path, shape=(i,), maxshape=(None,), dtype="i8", fillvalue=-1)
            _append(f[path], i, value)
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

    def _roll(self, image: np.ndarray) -> None:
        self.close()
        path = self.prefix.with_name(f"{self.prefix.name}-{len(self.files):04d}.cxi")
        f = h5py.File(path, "w")
        try:
            _layout(f, image)
        except Exception:
            f.close()
            raise
        self._file, self._n, self._bytes = f, 0, 0
        self.files.append(path)

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except Exception as exc:
                self.error = self.error or f"{type(exc).__name__}: {exc}"
                log.exception("closing %s failed", self.files[-1])

    def __enter__(self) -> CxiWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _layout(f: h5py.File, image: np.ndarray) -> None:
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
    ):
        f.create_dataset(f"entry_1/{name}", shape=(0,), maxshape=(None,), dtype=dtype)
    f["entry_1/data_1"].attrs["signal"] = "data"


def _datasets(f: h5py.File) -> list[h5py.Dataset]:
    found: list[h5py.Dataset] = []
    f.visititems(lambda _, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return found


def _append(dataset: h5py.Dataset, index: int, value: object) -> None:
    dataset.resize(index + 1, axis=0)
    dataset[index] = value


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
