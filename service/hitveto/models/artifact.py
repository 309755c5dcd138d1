"""The model artifact: one TorchScript file that also carries everything needed to use it.

Inside the TorchScript zip, as extra files: `hitveto.json` (ModelInfo: detector, layouts,
normalisation, threshold, training data, validation figures, version) and `roi_index.npy` (the
region gather index). The metadata is read with zipfile alone, so `hitveto inspect` needs no torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import stat
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hitveto.models.preprocess import InputSpec

FORMAT = "hitveto-model/1"
INFO_NAME = "hitveto.json"
INDEX_NAME = "roi_index.npy"
DEFAULT_ARTIFACT = Path(__file__).parent / "default.pt"  # the full-detector model (raw layout)
# the full-detector model shipped for each detector (docs/MODEL.md says how each was trained)
SHIPPED = {
    "cspad": DEFAULT_ARTIFACT,
    "jungfrau4m": Path(__file__).parent / "jungfrau4m.pt",
    "epix10k2m": Path(__file__).parent / "epix10k2m.pt",
}
REGION_ARTIFACT = Path(__file__).parent / "region.pt"  # the region model, the default until stop 28
MAX_ARTIFACT_BYTES = 1 << 30  # a model file larger than this is refused before it is read
READ_TIMEOUT_S = 30.0  # reading it must not take longer (a stalled network mount)


# What a model's frames must be. "calibrated": pedestal and common mode removed, bad pixels 0, as
# psana's det.raw.calib gives them or as the daemon makes them with `calib.constants`; the trainer
# refuses runs of raw ADC counts. A model that takes another kind would be refused at load.
INPUTS = ("calibrated",)


class ArtifactError(ValueError):
    """An artifact that is not ours, is damaged, or does not fit the frames it is asked to judge."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelInfo:
    version: str  # e.g. "compact-3f2a9c1e" (architecture + weights digest)
    architecture: str
    detector: str
    raw_shape: tuple[int, ...]
    roi_shape: tuple[int, int]
    adu_per_photon: float
    threshold: float  # decision threshold on the hit probability
    layout: str = "roi"  # the model input: preprocess.LAYOUTS
    input: str = "calibrated"  # the frames it learnt: one of INPUTS
    pool: int = 1  # raw layout: the pool per panel (preprocess.pool_panels)
    # verdict classes (heads beside the hit score, networks.ClassHeads): the model then returns
    # (B, 1 + len(classes)) probabilities, P(hit) first; each class's threshold, calibrated on
    # validation runs. The keep/drop decision comes from the hit score alone.
    classes: tuple[str, ...] = ()
    class_thresholds: dict[str, float] = field(default_factory=dict)
    created: str = ""
    training: dict[str, Any] = field(default_factory=dict)  # runs, frames, labels, recipe
    validation: dict[str, Any] = field(default_factory=dict)  # held-out confusion and rates
    profile: dict[str, Any] = field(default_factory=dict)  # training data statistics (drift.py)
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelInfo:
        raw = json.loads(text)
        if raw.get("format") != FORMAT:
            raise ArtifactError(f"format {raw.get('format')!r} is not {FORMAT!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        raw = {k: v for k, v in raw.items() if k in known}
        raw["raw_shape"], raw["roi_shape"] = tuple(raw["raw_shape"]), tuple(raw["roi_shape"])
        raw["classes"] = tuple(raw.get("classes", ()))
        return cls(**raw)


@dataclass(frozen=True, slots=True, kw_only=True)
class Artifact:
    info: ModelInfo
    spec: InputSpec
    sha256: str
    path: Path
    data: bytes = field(default=b"", repr=False)  # the file as read and checked; loaded from here

    @property
    def served_version(self) -> str:
        """The version verdicts carry: the trainer's version and the file's own digest, so that
        other weights or code under the same metadata can never pass for the same model."""
        return f"{self.info.version}@{self.sha256[:8]}"


def save(path: Path, scripted: Any, info: ModelInfo, roi_index: np.ndarray | None) -> Path:
    """Write a scripted (frozen) model with its metadata as one file; returns the path. The raw
    layout has no region index (an empty one is stored)."""
    import torch

    buf = io.BytesIO()
    index = np.empty(0) if roi_index is None else roi_index
    np.save(buf, np.asarray(index, dtype=np.int32))  # 2.3 Mpix fit; half the file
    if not info.created:
        info = dataclasses.replace(info, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(scripted, str(path), _extra_files={INFO_NAME: info.to_json(), INDEX_NAME: buf.getvalue()})
    return path


def read(path: Path) -> Artifact:
    """Metadata, input spec and checksum, without torch; ArtifactError if the file is not an artifact."""
    path = Path(path)
    try:
        data = read_regular_file(path)
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = {Path(n).name: n for n in zf.namelist() if "/extra/" in n}
            if INFO_NAME not in names or INDEX_NAME not in names:
                raise ArtifactError(f"{path}: no hitveto metadata inside (not a hitveto model)")
            info = ModelInfo.from_json(zf.read(names[INFO_NAME]).decode())
            if info.input not in INPUTS:
                raise ArtifactError(f"{path}: the model takes {info.input!r} frames; served are {INPUTS}")
            index = np.load(io.BytesIO(zf.read(names[INDEX_NAME])), allow_pickle=False)
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, TypeError) as exc:
        if isinstance(exc, ArtifactError):
            raise
        raise ArtifactError(f"{path}: unreadable model artifact ({type(exc).__name__}: {exc})") from None
    spec = InputSpec(
        detector=info.detector,
        raw_shape=info.raw_shape,
        roi_shape=info.roi_shape,
        roi_index=index if info.layout == "roi" else None,
        adu_per_photon=info.adu_per_photon,
        layout=info.layout,
        pool=info.pool,
    )
    return Artifact(info=info, spec=spec, sha256=hashlib.sha256(data).hexdigest(), path=path, data=data)


def trusted_path(path: str | Path, folders: list[str]) -> Path:
    """`path` with links resolved, if it lies in one of `folders` (links resolved too);
    ArtifactError if not. A model file is code: only trusted folders may provide one."""
    real = Path(os.path.realpath(path))
    roots = [Path(os.path.realpath(f)) for f in folders]
    if not any(real.is_relative_to(root) for root in roots):
        raise ArtifactError(
            f"{path}: not in a reload folder ({', '.join(map(str, roots))}; model.reload_dirs sets them)"
        )
    return real


def read_regular_file(
    path: Path, *, max_bytes: int = MAX_ARTIFACT_BYTES, timeout_s: float = READ_TIMEOUT_S
) -> bytes:
    """A regular file's bytes, with bounds: a FIFO, a device (/dev/zero), a file over `max_bytes`
    or a read slower than `timeout_s` is an ArtifactError, and none of them can block the caller."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block open
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"{path}: not a regular file")
        if st.st_size > max_bytes:
            raise ArtifactError(f"{path}: {st.st_size} bytes, more than the {max_bytes} allowed")
        chunks, size, end = [], 0, time.monotonic() + timeout_s
        while chunk := os.read(fd, 1 << 20):
            size += len(chunk)
            if size > max_bytes or time.monotonic() > end:
                raise ArtifactError(
                    f"{path}: grew past {max_bytes} bytes or took over {timeout_s:.0f} s to read"
                )
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def rewrite(artifact: Artifact, out: Path, **changes: Any) -> Path:
    """The same network saved with changed metadata (e.g. a training profile, another threshold)."""
    info = dataclasses.replace(artifact.info, **changes)
    return save(out, load_module(artifact, "cpu"), info, artifact.spec.roi_index)


def load_module(artifact: Artifact, device: str) -> Any:
    """The TorchScript module on `device`, in eval mode."""
    import torch

    try:  # from the bytes read and checked, not the path again: the file may have changed since
        source = io.BytesIO(artifact.data) if artifact.data else str(artifact.path)
        module = torch.jit.load(source, map_location=device)
    except RuntimeError as exc:
        raise ArtifactError(f"{artifact.path}: TorchScript load failed: {exc}") from None
    return module.eval()


def check_fits(artifact: Artifact, detector: str, shape: tuple[int, ...]) -> None:
    """ArtifactError saying why, if frames of this detector and shape cannot be judged by it."""
    spec = artifact.spec
    if detector != spec.detector:
        raise ArtifactError(
            f"model {artifact.info.version} was trained for detector "
            f"{spec.detector!r}, frames come from {detector!r}"
        )
    if not spec.accepts(shape):
        raise ArtifactError(
            f"model {artifact.info.version} takes {spec.raw_shape} raw or "
            f"{spec.roi_shape} region frames, not {tuple(shape)}"
        )


def check_swappable(old: Artifact, new: Artifact) -> None:
    """ArtifactError unless `new` takes the same frames, as the same input, as `old` (a reload)."""
    if (new.spec.detector, new.spec.raw_shape, new.spec.roi_shape, new.spec.layout) != (
        old.spec.detector,
        old.spec.raw_shape,
        old.spec.roi_shape,
        old.spec.layout,
    ):
        raise ArtifactError(
            f"{new.path}: model {new.info.version} takes {new.spec.detector} "
            f"{new.spec.raw_shape}/{new.spec.roi_shape}, the stream is {old.spec.detector} "
            f"{old.spec.raw_shape}/{old.spec.roi_shape}; still serving {old.served_version}"
        )
