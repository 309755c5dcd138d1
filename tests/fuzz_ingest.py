"""Coverage-guided fuzzing (atheris, libFuzzer) of the daemon's frame intake.

    python tests/fuzz_ingest.py -runs=200000          # libFuzzer flags; -max_total_time=600, ...

Each input becomes one ZMQ message: 1-3 parts, a header that is raw bytes or a msgpack map of fuzzed
fields (version, key, dtype, shape with huge or negative sizes, detector), and a pixel part of
fuzzed length and content (NaN/Inf for float dtypes included). `IngestWorker.handle` takes it with
the test layout's model, as the daemon's worker threads do. What must hold for every message:
exactly one outcome (queued for the model, or answered with a keep verdict, or counted as malformed
when it carries no key to answer), never an exception out of `handle`, and never an internal
error. `tests/test_protocol.py` runs a bounded campaign in CI.
"""

from __future__ import annotations

import math
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

import atheris

# numba compiles kernels.py from its bytecode, which cannot hold atheris's branch tracing
with atheris.instrument_imports(include=["hitveto", "hitveto_client"], exclude=["hitveto.models.kernels"]):
    import msgpack
    import numpy as np

    from hitveto.io.calibration import Constants
    from hitveto.models import artifact as artifacts
    from hitveto.serving.batcher import Batcher
    from hitveto.serving.guard import InputGuard
    from hitveto.serving.ingest import IngestWorker
    from hitveto.serving.metrics import Metrics
    from hitveto_client.protocol import ALLOWED_DTYPES, PROTOCOL_VERSION

from helpers import RAW, ROI, make_artifact  # tests/, this script's folder, is first on sys.path

DTYPES = sorted(ALLOWED_DTYPES) + ["object", "<U4", "", "float128"]
DETECTORS = ["cspad", "epix10k", ""]
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e38, -1e38]


class Intake:
    """One ingest worker wired to a real batcher and metrics; counts every outcome."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry

        folder = Path(tempfile.mkdtemp())
        path = make_artifact(folder / "fuzz.pt")
        self.artifact = artifacts.read(path)
        # calibration on: raw frames of the model's shape go through it too (fuzzed pixels and all)
        rng = np.random.default_rng(0)
        Constants(
            detector="cspad",
            pedestal=rng.uniform(0, 1000, RAW).astype(np.float32),
            noise=np.full(RAW, 4.0, np.float32),
            status=(rng.random(RAW) < 0.01).astype(np.uint16),
        ).save(folder / "dark.npz")
        self.metrics = Metrics(CollectorRegistry())
        self.bad_frames = self.metrics.registry.restricted_registry(["hitveto_bad_frames_total"])
        self.batcher = Batcher(max_batch=8, max_delay_ms=1.0, max_queue=4)
        self.verdicts = 0
        self.worker = IngestWorker(
            sock=None,
            batcher=self.batcher,
            metrics=self.metrics,
            publish=self._publish,
            artifact=lambda: self.artifact,
            guard=InputGuard(str(folder / "dark.npz"), self.artifact.spec),
            draining=threading.Event(),
            name="fuzz",
        )

    def _publish(self, verdict) -> None:
        self.verdicts += 1

    def outcomes(self) -> tuple[int, int, int, int]:
        bad = self._bad_frames()
        return self.batcher.depth(), self.verdicts, int(sum(bad.values())), int(bad.get("internal_error", 0))

    def _bad_frames(self) -> dict[str, float]:
        """hitveto_bad_frames_total by reason (prometheus-client's public API; the restricted registry
        skips the process collector, which would read /proc twice per input)."""
        return {s.labels["reason"]: s.value for family in self.bad_frames.collect() for s in family.samples}

    def drain(self) -> None:
        self.batcher.drain(self.batcher.max_queue)


def message(data: bytes) -> list[bytes]:
    fdp = atheris.FuzzedDataProvider(data)
    shape = fdp.PickValueInList([list(RAW), list(ROI), None])
    dtype = fdp.PickValueInList(DTYPES)
    if shape is None:
        shape = [
            fdp.ConsumeIntInRange(-2, 1 << 40)
            if fdp.ConsumeProbability() < 0.1
            else fdp.ConsumeIntInRange(0, 40)
            for _ in range(fdp.ConsumeIntInRange(0, 6))
        ]
    if fdp.ConsumeProbability() < 0.1:
        header = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
    else:
        fields = {
            "v": PROTOCOL_VERSION if fdp.ConsumeProbability() < 0.9 else fdp.ConsumeInt(2),
            "run": fdp.ConsumeInt(8),
            "pulse_id": fdp.ConsumeInt(8),
            "timestamp": fdp.ConsumeInt(8),
            "detector": fdp.PickValueInList(DETECTORS),
            "dtype": dtype,
            "shape": shape,
            "sent_ns": fdp.ConsumeInt(8),
            "meta": {},
        }
        for name in list(fields):
            if fdp.ConsumeProbability() < 0.03:
                del fields[name]
        header = msgpack.packb(fields)
    n_parts = fdp.PickValueInList([2, 2, 2, 2, 1, 3])
    special = fdp.PickValueInList(SPECIAL) if fdp.ConsumeBool() else None
    where = fdp.ConsumeIntInRange(0, 1 << 20)
    pattern = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096))  # last: it takes what is left
    if dtype in ALLOWED_DTYPES and fdp.ConsumeProbability() < 0.7 and pattern:
        # The size the header declares (when sane), filled with the fuzzed bytes: NaN, Inf,
        # extreme integers and all.
        size = min(max(0, math.prod(shape)) * ALLOWED_DTYPES[dtype].itemsize, 1 << 20)
        pixels = (pattern * (size // len(pattern) + 1))[:size]
        if ALLOWED_DTYPES[dtype].kind == "f" and special is not None and size:
            values = np.frombuffer(pixels, ALLOWED_DTYPES[dtype]).copy()
            values[where % values.size] = special
            pixels = values.tobytes()
    else:
        pixels = pattern
    return [header, pixels, b"extra"][:n_parts]


def main() -> None:
    intake = Intake()
    seen = Counter()

    def one_input(data: bytes) -> None:
        parts = message(data)
        before = intake.outcomes()
        intake.worker.handle(parts)  # raising here is a finding
        queued, answered, bad, internal = (a - b for a, b in zip(intake.outcomes(), before))
        assert internal == 0, f"internal error on {parts!r}"
        assert queued + answered >= 1 or bad == 1, f"no outcome for {parts!r}"
        assert queued + answered <= 1, f"two outcomes for {parts!r}"
        seen["queued" if queued else "answered" if answered else "unanswerable"] += 1
        if seen.total() % 10_000 == 0:  # libFuzzer exits without atexit
            print(f"outcomes after {seen.total()} messages: {dict(seen)}", file=sys.stderr, flush=True)
        intake.drain()

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
