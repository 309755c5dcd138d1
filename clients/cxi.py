"""Frames to CXI-layout HDF5 files that CrystFEL and Cheetah-style tools read.

    /entry_1/data_1/data          (N, *frame_shape)  the frames, bit-identical to what was sent
    /entry_1/event/{run,pulse_id,timestamp}
    /entry_1/result_1/{score,keep_reason,model_version,threshold}   why each frame was kept
    /entry_1/sample_1/truth/<field>                                 simulator truth, when given

Files roll over at `max_frames` frames or `max_bytes` of pixel data, whichever comes first; each
frame is flushed once written, so a crash loses only the frame being written. Needs h5py (the one client module that does; the DAQ client does not).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

STR = h5py.string_dtype()


class CxiWriter:
    """Appends frames to `<prefix>-NNNN.cxi` files; a context manager."""

    def __init__(self, prefix: Path, *, max_frames: int = 10_000, max_bytes: int = 4 << 30,
                 flush_every: int = 1) -> None:
        self.prefix = Path(prefix)
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.flush_every = flush_every
        self.files: list[Path] = []
        self.written = 0
        self._file: h5py.File | None = None
        self._n = 0
        self._bytes = 0

    def write(self, image: np.ndarray, *, run: int, pulse_id: int, timestamp: int = 0,
              score: float = float("nan"), keep_reason: str = "", model_version: str = "",
              threshold: float = float("nan"), truth: dict[str, int] | None = None) -> None:
        full = self._n >= self.max_frames or (self._n and self._bytes + image.nbytes > self.max_bytes)
        if self._file is None or full:
            self._roll(image)
        f, i = self._file, self._n
        for name, value in (("entry_1/data_1/data", image), ("entry_1/event/run", run),
                            ("entry_1/event/pulse_id", pulse_id), ("entry_1/event/timestamp", timestamp),
                            ("entry_1/result_1/score", score), ("entry_1/result_1/keep_reason", keep_reason),
                            ("entry_1/result_1/model_version", model_version),
                            ("entry_1/result_1/threshold", threshold)):
            _append(f[name], i, value)
        for name, value in (truth or {}).items():
            path = f"entry_1/sample_1/truth/{name}"
            if path not in f:
                f.create_dataset(path, shape=(i,), maxshape=(None,), dtype="i8", fillvalue=-1)
            _append(f[path], i, value)
        self._n += 1
        self._bytes += image.nbytes
        self.written += 1
        if self._n % self.flush_every == 0:
            f.flush()

    def _roll(self, image: np.ndarray) -> None:
        self.close()
        path = self.prefix.with_name(f"{self.prefix.name}-{len(self.files):04d}.cxi")
        path.parent.mkdir(parents=True, exist_ok=True)
        f = h5py.File(path, "w")
        f.attrs["cxi_version"] = 150
        f.create_dataset("entry_1/data_1/data", shape=(0, *image.shape), dtype=image.dtype,
                         maxshape=(None, *image.shape), chunks=(1, *image.shape))
        for name, dtype in (("event/run", "i8"), ("event/pulse_id", "i8"), ("event/timestamp", "u8"),
                            ("result_1/score", "f4"), ("result_1/keep_reason", STR),
                            ("result_1/model_version", STR), ("result_1/threshold", "f4")):
            f.create_dataset(f"entry_1/{name}", shape=(0,), maxshape=(None,), dtype=dtype)
        f["entry_1/data_1"].attrs["signal"] = "data"
        self._file, self._n, self._bytes = f, 0, 0
        self.files.append(path)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> CxiWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _append(dataset: h5py.Dataset, index: int, value: object) -> None:
    dataset.resize(index + 1, axis=0)
    dataset[index] = value


def read_frames(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """All frames of one CXI file and its per-frame columns (event and result fields)."""
    with h5py.File(path, "r") as f:
        columns = {f"{group}/{name}": f[f"entry_1/{group}/{name}"][()]
                   for group in ("event", "result_1") for name in f[f"entry_1/{group}"]}
        if "entry_1/sample_1/truth" in f:
            columns |= {f"truth/{n}": d[()] for n, d in f["entry_1/sample_1/truth"].items()}
        return f["entry_1/data_1/data"][()], columns
