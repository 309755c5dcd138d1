"""TorchScript inference on one device: pinned host buffers and one transfer per batch on CUDA."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import numpy as np
import torch

from hitveto.models.artifact import Artifact, ArtifactError, load_module

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# Wire dtypes torch cannot reduce (amax is not implemented for uint16): staged as the next wider
# type. Found by benchmarks/fuzz_header.py: every uint16 frame was kept as model_error.
STAGED_AS = {np.dtype(np.uint16): np.dtype(np.int32)}


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is usable, else 'cpu'."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_devices(spec: str) -> list[str]:
    """One engine per entry of a comma-separated list: 'cuda:0,cuda:1', 'cpu,cpu' (two CPU
    engines), 'cuda:all' (every visible GPU), or one device as `resolve_device` takes it."""
    devices = []
    for item in (part.strip() for part in spec.split(",")):
        if item == "cuda:all":
            if not torch.cuda.is_available():
                raise ValueError("model.device cuda:all: no CUDA device is visible")
            devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        elif item:
            devices.append(resolve_device(item))
    if not devices:
        raise ValueError(f"model.device {spec!r}: no device")
    return devices


class ModelEngine:
    """What the daemon and the tools use of an engine, and what every engine shares: TorchScript
    (`Engine`) or onnxruntime (`onnx_engine.OnnxEngine`), chosen by `model.engine`. An engine
    sets `artifact`, `device` and `max_batch`, and runs `infer` on one batch."""

    artifact: Artifact
    device: str
    max_batch: int

    @property
    def version(self) -> str:
        return self.artifact.served_version

    @property
    def threshold(self) -> float:
        return self.artifact.info.threshold

    @property
    def classes(self) -> tuple[str, ...]:
        """The names of the model's verdict classes (its heads beside the hit score), in order."""
        return tuple(self.artifact.info.classes)

    def outputs(self, regions: Sequence[np.ndarray]) -> np.ndarray:
        """The model's probabilities (float32), (B,) for a hit-only model, else (B, 1 + classes):
        P(hit) first; regions all of the model's region shape and one dtype."""
        raise NotImplementedError

    def infer(self, regions: Sequence[np.ndarray]) -> np.ndarray:
        """P(hit) per region (float32)."""
        return self.infer_with_classes(regions)[0]

    def infer_with_classes(self, regions: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """P(hit) per region (B,) and each verdict class's probability (B, len(classes))."""
        out = self.outputs(regions)
        if out.ndim == 1:
            return out, np.zeros((len(out), 0), np.float32)
        return np.ascontiguousarray(out[:, 0]), out[:, 1:]

    def score(self, regions: Sequence[np.ndarray]) -> np.ndarray:
        """P(hit) for any number of regions, max_batch at a time (offline: evaluations, profiles)."""
        return np.concatenate(
            [self.infer(regions[i : i + self.max_batch]) for i in range(0, len(regions), self.max_batch)]
        )

    def check_outputs(self, out: np.ndarray) -> None:
        """ArtifactError unless a batch's outputs have one column for the hit and one per class
        the artifact names: a model that disagrees with its metadata is refused at load, not
        kept batch after batch as model_error."""
        columns = 1 if out.ndim == 1 else out.shape[1]
        if columns != 1 + len(self.classes):
            raise ArtifactError(
                f"{self.artifact.path}: the model gives {columns} outputs a frame, its metadata "
                f"names the hit and {len(self.classes)} classes"
            )

    def score_with_classes(self, regions: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """`infer_with_classes` for any number of regions, max_batch at a time."""
        parts = [
            self.infer_with_classes(regions[i : i + self.max_batch])
            for i in range(0, len(regions), self.max_batch)
        ]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def warm_up(self) -> float:
        """Run the batch sizes once or more so the first real frames do not pay; seconds taken."""
        raise NotImplementedError

    def gpu_memory_bytes(self) -> int:
        return 0


class Engine(ModelEngine):
    """Runs an artifact's model on batches of regions; thread: one inference thread owns it."""

    def __init__(
        self,
        artifact: Artifact,
        *,
        device: str = "auto",
        max_batch: int = 32,
        threads: int = 0,
        precision: str = "fp32",
    ) -> None:
        # Not again when a reload builds a new engine: the pool is the process's, and the serving
        # engine is using it.
        if threads > 0 and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: expected one of {sorted(PRECISIONS)}")
        self.artifact = artifact
        self.device = resolve_device(device)
        self.precision = precision
        self.max_batch = max_batch
        self._module = load_module(artifact, self.device)
        self._pinned: dict[np.dtype, torch.Tensor] = {}  # host staging buffers, one per input dtype

    def outputs(self, regions: Sequence[np.ndarray]) -> np.ndarray:
        with torch.inference_mode(), self._autocast():
            batch = self._stage(regions)
            return self._module(batch).float().cpu().numpy()

    def _autocast(self):
        """Mixed precision for the convolutions when asked (a GPU option: on CPU fp32 is fastest)."""
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.split(":")[0], dtype=dtype)

    def warm_up(self) -> float:
        """Run every batch size twice (seconds taken), so the first real frames do not pay for it.

        The first batch of each size pays for the backend's per-shape setup (the JIT's profiling
        runs, oneDNN primitives); measured, a freshly started daemon without this kept frames by
        overload for its first seconds at 500 region frames/s.
        """
        t0 = time.perf_counter()
        zeros = np.zeros(self.artifact.spec.roi_shape, dtype=np.int16)
        self.check_outputs(self.outputs([zeros]))
        batch = self._stage([zeros] * self.max_batch)
        with torch.inference_mode(), self._autocast():
            for _ in range(2):
                for n in range(self.max_batch, 0, -1):
                    self._module(batch[:n])
        return time.perf_counter() - t0

    def gpu_memory_bytes(self) -> int:
        return torch.cuda.memory_allocated() if self.device.startswith("cuda") else 0

    def _stage(self, regions: Sequence[np.ndarray]) -> torch.Tensor:
        stacked_dtype = np.result_type(*regions)
        dtype = STAGED_AS.get(stacked_dtype, stacked_dtype)
        if self.device == "cpu":
            return torch.from_numpy(np.stack(regions, dtype=dtype))
        if dtype not in self._pinned or self._pinned[dtype].shape[0] < len(regions):
            size = max(self.max_batch, len(regions))
            host = torch.from_numpy(np.empty((size, *regions[0].shape), dtype=dtype))
            self._pinned[dtype] = host.pin_memory()
        host = self._pinned[dtype][: len(regions)]
        np.stack(regions, out=host.numpy(), dtype=dtype)
        return host.to(self.device, non_blocking=True)
