"""ONNX Runtime as a CPU engine (`model.engine = "onnxruntime"`): the artifact's TorchScript model,
exported to ONNX once and run by onnxruntime's CPU provider.

Measured (`benchmarks/engines.py`, one core): faster at batch 1, the batch full frames at 120 Hz
have (full-detector model 1.03 ms a frame against TorchScript's 1.35; region model 0.24 against
0.37), mixed at batches of 8-32 (0.88-1.12x); scores within 2e-6 of TorchScript's.
The same interface as `Engine` (`engine.ModelEngine`: what the inference loop and the tools
call). The export is cached
beside the geometry tables (`$HITVETO_CACHE` or ~/.cache/hitveto), named by the artifact's SHA-256,
so a restart does not export again. Integer regions are fed as int32 (onnxruntime's ReduceMax takes
no int16), float ones as float32: one exported graph for each. fp32 only; CPU only.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hitveto.models.artifact import Artifact, load_module
from hitveto.models.engine import ModelEngine

EXPORT_OPSET = 17


class OnnxEngine(ModelEngine):
    """Runs an artifact's model under onnxruntime; one inference thread owns it."""

    def __init__(self, artifact: Artifact, *, max_batch: int = 32, threads: int = 1) -> None:
        self.artifact = artifact
        self.device = "cpu"
        self.max_batch = max_batch
        self._threads = max(1, threads)
        self._sessions: dict[str, Any] = {}  # input dtype name -> InferenceSession

    def outputs(self, regions: Sequence[np.ndarray]) -> np.ndarray:
        batch = np.stack(regions)
        kind = "int32" if batch.dtype.kind in "iub" else "float32"
        (scores,) = self._session(kind).run(None, {"x": batch.astype(kind, copy=False)})
        return np.asarray(scores, dtype=np.float32)

    def warm_up(self) -> float:
        """Load (export if need be) the integer graph and run every batch size once (seconds)."""
        t0 = time.perf_counter()
        zeros = np.zeros((self.max_batch, *self.artifact.spec.roi_shape), dtype=np.int16)
        self.check_outputs(self.outputs(list(zeros[:1])))
        for n in range(self.max_batch, 0, -1):
            self.infer(list(zeros[:n]))
        return time.perf_counter() - t0

    def _session(self, kind: str) -> Any:
        if kind not in self._sessions:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self._threads
            options.inter_op_num_threads = 1
            model = str(exported(self.artifact, kind))
            self._sessions[kind] = onnxruntime.InferenceSession(
                model, options, providers=["CPUExecutionProvider"]
            )
        return self._sessions[kind]


def exported(artifact: Artifact, kind: str) -> Path:
    """The artifact's model as ONNX for `kind` (int32 or float32) inputs: from the cache, or
    exported now (a few seconds) and cached; written whole or not at all."""
    folder = Path(os.environ.get("HITVETO_CACHE", Path.home() / ".cache" / "hitveto")) / "onnx"
    path = folder / f"{artifact.sha256[:16]}-{kind}-opset{EXPORT_OPSET}.onnx"
    if path.exists():
        return path
    import torch

    example = torch.zeros((2, *artifact.spec.roi_shape), dtype=getattr(torch, kind))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    # The TorchScript exporter warns that it is deprecated (torch 2.9 made torch.export's the
    # default, which takes an nn.Module, not the TorchScript an artifact holds) and that a
    # ScriptModule has no signature: known, and said here once.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        _export(torch, load_module(artifact, "cpu"), example, tmp)
    tmp.replace(path)  # atomic: a concurrent daemon never reads half a file
    return path


def _export(torch: Any, module: Any, example: Any, out: Path) -> None:
    torch.onnx.export(
        module,
        (example,),
        str(out),
        input_names=["x"],
        output_names=["p"],
        dynamic_axes={"x": {0: "n"}, "p": {0: "n"}},
        opset_version=EXPORT_OPSET,
        dynamo=False,  # the TorchScript exporter: the artifact holds TorchScript
    )
