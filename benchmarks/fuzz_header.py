"""A hypothesis campaign over the frame header, through the daemon's whole verdict path.

    python benchmarks/fuzz_header.py                    # 10 minutes (the issue #18 campaign)
    python benchmarks/fuzz_header.py --minutes 1

Each example is one ZMQ message with fuzzed header fields: ints at and beyond the 64-bit edges,
bools, floats, strings, None, lists and maps where ints belong; version, detector, dtype, shape,
sent_ns, meta; 1-3 parts; pixel parts of the declared size or not, with NaN and Inf. It goes the
way a frame goes in the daemon: `IngestWorker.handle` (decode, check, region), then, if queued, an
`InferenceLoop` with a real engine and the audit pick on (the path that once died on a 2^63 pulse
id), then each verdict to its wire form and back, as the publisher and the client do. What must
hold for every message:

- exactly one outcome: judged (a verdict), answered (a keep verdict), or counted as unanswerable;
- no exception anywhere, no internal error counted, and the model never fails (`model_error`:
  it once did on every uint16 frame);
- every verdict encodes and decodes to the same event key.

Prints progress every 30 s; saves benchmarks/results/fuzz-header.json. Exits 1 on a finding.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import parser, record

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hitveto.models import artifact as artifacts
from hitveto.models.engine import Engine
from hitveto.serving.audit import AuditSample
from hitveto.serving.batcher import Batcher
from hitveto.serving.inference import InferenceLoop
from hitveto.serving.ingest import IngestWorker
from hitveto.serving.metrics import Metrics
from hitveto_client.protocol import ALLOWED_DTYPES, PROTOCOL_VERSION, Reason, decode_verdict
from tests.helpers import RAW, ROI, make_artifact

EDGES = [0, 1, -1, (1 << 31) - 1, 1 << 31, (1 << 63) - 1, 1 << 63, -(1 << 63), (1 << 64) - 1]
ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.lists(st.integers(0, 9), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2),
)
# msgpack carries ints in [-2^63, 2^64): the whole range a sender can put on the wire
INT = st.one_of(
    st.sampled_from(EDGES), st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1), st.integers(0, 1000)
)
FIELD = {
    "v": st.one_of(st.just(PROTOCOL_VERSION), st.just(True), st.just(1.0), INT, ANY),
    "run": st.one_of(INT, ANY),
    "pulse_id": st.one_of(INT, ANY),
    "timestamp": st.one_of(INT, ANY),
    "sent_ns": st.one_of(INT, ANY),
    "detector": st.one_of(st.just("cspad"), st.text(max_size=80), ANY),
    "dtype": st.one_of(st.sampled_from(sorted(ALLOWED_DTYPES) + ["object", "<U4", "float128"]), ANY),
    "shape": st.one_of(
        st.sampled_from([list(RAW), list(ROI)]),
        st.lists(st.one_of(INT, st.booleans(), st.floats()), max_size=6),
        ANY,
    ),
    "meta": st.one_of(st.dictionaries(st.text(max_size=4), INT, max_size=3), ANY),
}


ID = st.one_of(
    st.sampled_from([0, 1, (1 << 63) - 1, -(1 << 63)]),
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
)
VALID = {
    "v": st.just(PROTOCOL_VERSION),
    "run": ID,
    "pulse_id": ID,
    "timestamp": st.integers(0, (1 << 64) - 1),
    "sent_ns": st.integers(0, (1 << 63) - 1),
    "detector": st.just("cspad"),
    "dtype": st.sampled_from(sorted(ALLOWED_DTYPES)),
    "shape": st.sampled_from([list(RAW), list(ROI)]),
    "meta": st.just({}),
}


@st.composite
def messages(draw) -> list[bytes]:
    header = {}
    for name in FIELD:  # each field valid, fuzzed (1 in 14) or absent (1 in 30)
        pick = draw(st.integers(0, 209))
        if pick >= 7:
            header[name] = draw(FIELD[name] if pick < 22 else VALID[name])
    raw_header = msgpack.packb(header) if draw(st.integers(0, 19)) else draw(st.binary(max_size=64))
    pixels = draw(st.binary(max_size=64))
    dtype, shape = header.get("dtype"), header.get("shape")
    if (
        isinstance(dtype, str)
        and dtype in ALLOWED_DTYPES
        and shape in (list(RAW), list(ROI))
        and draw(st.booleans())
    ):
        values = np.zeros(shape, ALLOWED_DTYPES[dtype])
        if values.dtype.kind == "f":
            with np.errstate(over="ignore"):  # a float64 beyond float32 becomes Inf: wanted
                values.flat[draw(st.integers(0, values.size - 1))] = draw(st.floats(allow_nan=True))
        pixels = values.tobytes()
    return [raw_header, pixels, b"extra"][: draw(st.sampled_from([2, 2, 2, 1, 3]))]


class VerdictPath:
    """One ingest worker, a batcher and an inference loop with a real engine; counts outcomes."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry

        art = artifacts.read(make_artifact(Path(tempfile.mkdtemp()) / "fuzz.pt"))
        self.metrics = Metrics(CollectorRegistry())
        self.batcher = Batcher(max_batch=8, max_delay_ms=0.0, max_queue=64)
        self.verdicts: list = []
        self.worker = IngestWorker(
            sock=None,
            batcher=self.batcher,
            metrics=self.metrics,
            publish=self.verdicts.append,
            artifact=lambda: art,
            draining=threading.Event(),
            name="fuzz-ingest",
        )
        self.loop = InferenceLoop(
            engine=Engine(art, device="cpu", max_batch=8),
            batcher=self.batcher,
            metrics=self.metrics,
            publish=self.verdicts.append,
            latency_budget_ms=1e9,
            audit=AuditSample(0.5),
        )
        self.outcomes: Counter = Counter()

    def bad(self) -> float:
        return sum(
            s.value
            for fam in self.metrics.bad_frames.collect()
            for s in fam.samples
            if s.name.endswith("_total")
        )

    def one(self, parts: list[bytes]) -> None:
        self.verdicts.clear()
        before = self.bad()
        self.worker.handle(parts)  # raising here is a finding
        queued = self.batcher.drain(64)
        self.loop.judge(queued, stale_ok=True)  # judged as the loop would
        internal = (
            self.metrics.registry.get_sample_value("hitveto_internal_errors_total", {"stage": "inference"})
            or 0
        )
        assert internal == 0 and not (
            self.metrics.registry.get_sample_value("hitveto_bad_frames_total", {"reason": "internal_error"})
            or 0
        ), f"internal error: {parts!r}"
        bad = self.bad() - before
        one_outcome = (len(self.verdicts) == 1 and bad == (0 if queued else 1)) or (
            not self.verdicts and bad == 1
        )
        assert one_outcome, f"{len(self.verdicts)} verdicts, {bad} rejections for {parts!r}"
        for v in self.verdicts:
            assert decode_verdict(v.to_wire_at(time.time_ns())).key == v.key
            assert v.reason != Reason.MODEL_ERROR, f"the model failed on {parts!r}"
        self.outcomes["judged" if queued else "answered" if self.verdicts else "unanswerable"] += 1


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fuzz-header.json")
    args = ap.parse_args()
    path = VerdictPath()

    @settings(max_examples=2000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(messages())
    def campaign(parts: list[bytes]) -> None:
        path.one(parts)

    t0 = last = time.monotonic()
    rounds = 0
    while time.monotonic() - t0 < args.minutes * 60:
        campaign()  # 2,000 fresh examples; a finding raises
        rounds += 1
        if time.monotonic() - last > 30:
            last = time.monotonic()
            print(
                f"{last - t0:6.0f} s  {path.outcomes.total():8d} messages  {dict(path.outcomes)}", flush=True
            )
    seconds = time.monotonic() - t0
    result = {
        "seconds": round(seconds, 1),
        "messages": path.outcomes.total(),
        "outcomes": dict(path.outcomes),
        "findings": 0,
        "thread_crashes": 0,
        "internal_errors": 0,
    }
    print(json.dumps(result))
    record(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
