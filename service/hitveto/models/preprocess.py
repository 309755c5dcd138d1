"""Detector frame -> model input: the one function both the trainer and the daemon call.

The model input is the square region round the beam (the study's central 350x350 crop), in ADU, in
the frame's own dtype. Intensity normalisation lives inside the TorchScript model (see model.py), so
it runs on the inference device and cannot drift between training and serving.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class InputMismatch(ValueError):
    """A frame whose shape fits neither the raw nor the region layout the model was trained for."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InputSpec:
    detector: str
    raw_shape: tuple[int, ...]  # e.g. (32, 185, 388): the detector's raw stack
    roi_shape: tuple[int, int]  # e.g. (350, 350): what the model sees
    roi_index: np.ndarray  # int64, roi_shape: flat index into the raw stack, -1 for gaps
    adu_per_photon: float  # used by the model's normalisation layer
    _gather: np.ndarray = field(init=False, repr=False, compare=False)
    _gaps: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = np.asarray(self.roi_index, dtype=np.int64)
        if index.shape != tuple(self.roi_shape):
            raise ValueError(f"roi_index shape {index.shape} != roi_shape {self.roi_shape}")
        object.__setattr__(self, "_gather", np.where(index < 0, 0, index).ravel())
        object.__setattr__(self, "_gaps", np.flatnonzero(index.ravel() < 0))

    def accepts(self, shape: tuple[int, ...]) -> bool:
        return tuple(shape) in (tuple(self.raw_shape), tuple(self.roi_shape))


def region(frame: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The model's input region of one frame (raw stack, or the region already), gaps zeroed.

    A region-shaped frame is returned as is (no copy); a raw stack is gathered into a new array in
    the frame's dtype (about 0.1 ms for 350x350). Raises InputMismatch for any other shape.
    NaN and Inf pixels (calibrated float frames mark bad pixels so) are masked to 0 like the gaps.
    """
    return masked_region(frame, spec)[0]


def masked_region(frame: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, int]:
    """The region, and how many of its pixels were NaN or Inf (masked to 0, then judged)."""
    if frame.shape == tuple(spec.roi_shape):
        out = frame
    elif frame.shape == tuple(spec.raw_shape):
        out = np.take(frame.reshape(-1), spec._gather)
        out[spec._gaps] = 0
        out = out.reshape(spec.roi_shape)
    else:
        raise InputMismatch(
            f"frame shape {frame.shape} fits neither the raw layout {spec.raw_shape} "
            f"nor the region {spec.roi_shape} of detector {spec.detector!r}"
        )
    return _mask_nonfinite(out)


def _mask_nonfinite(roi: np.ndarray) -> tuple[np.ndarray, int]:
    # One float64 sum (it cannot overflow for float32 pixels) finds any NaN/Inf; only then the mask.
    if roi.dtype.kind != "f" or np.isfinite(roi.sum(dtype=np.float64)):
        return roi, 0
    bad = ~np.isfinite(roi)
    return np.where(bad, roi.dtype.type(0), roi), int(bad.sum())
