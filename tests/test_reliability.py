"""One frame must never silence the veto, and no hit may be dropped on a bad pixel (issue #18).

Each test here is one attack or accident that once broke the daemon; each failed on the code before
its fix. Real sockets on loopback. Who may reach the daemon is in test_reliability_access.py, the
hit writer on a full disk in test_reliability_writer.py.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import msgpack
import numpy as np
import pytest
import zmq

from hitveto.models import artifact
from hitveto_client.protocol import PROTOCOL_VERSION, EventKey, Reason
from hitveto_client.veto import VetoClient

from helpers import (
    RAW,
    ROI,
    frames,
    loopback_config,
    make_artifact,
    median_threshold_artifact,
    running_daemon,
    sample,
    stream,
)


def raw_message(pixels: bytes | None = None, **header) -> list[bytes]:
    """A frame message with any header fields, as a hostile or buggy sender would make it."""
    meta = {
        "v": PROTOCOL_VERSION,
        "run": 1,
        "pulse_id": 0,
        "timestamp": 0,
        "detector": "cspad",
        "dtype": "int16",
        "shape": list(RAW),
        "sent_ns": 0,
        "meta": {},
    } | header
    return [msgpack.packb(meta), np.zeros(RAW, np.int16).tobytes() if pixels is None else pixels]


def push_raw(daemon, *messages: list[bytes]) -> None:
    with zmq.Context() as ctx, ctx.socket(zmq.PUSH) as push:
        push.connect(daemon.endpoints.ingest)
        for parts in messages:
            push.send_multipart(parts)
        push.close(linger=2000)


# One frame made the daemon deaf for good ----------------------------------------------------------


def test_an_event_id_beyond_64_bits_signed_is_refused_and_judging_goes_on(tmp_path):
    misses = make_artifact(tmp_path / "miss.pt", bias=-50.0)  # every frame a miss: audit picks
    with running_daemon(misses, **{"audit.fraction": 1.0}) as daemon:
        push_raw(
            daemon,
            raw_message(pulse_id=1 << 63),
            raw_message(run=(1 << 64) - 1),
            raw_message(pulse_id=-(1 << 63)),
        )  # the last one is in range
        counts, decisions = stream(daemon, frames(200))
        assert counts.sent == counts.decided == 200 and counts.kept_fallback == 0
        assert {d.reason for d in decisions} == {Reason.AUDIT}
        refused = sample(daemon, "hitveto_bad_frames_total", reason="bad_header")
        judged_edge = sample(daemon, "hitveto_verdicts_total", outcome="keep", reason="audit")
        down = daemon.unhealthy()
    assert refused == 2 and judged_edge == 201 and down == []


def test_a_crashed_worker_thread_is_restarted_and_counted(tiny_artifact, monkeypatch):
    from hitveto.serving.batcher import Batcher

    real, calls = Batcher.next_batch, []

    def crash_once(self, timeout_s):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected bug in the inference loop")
        return real(self, timeout_s)

    monkeypatch.setattr(Batcher, "next_batch", crash_once)
    with running_daemon(tiny_artifact) as daemon:
        time.sleep(0.5)
        counts, decisions = stream(daemon, frames(100))
        assert counts.sent == counts.decided == 100
        assert {d.reason for d in decisions} == {Reason.MODEL}
        crashes = sample(daemon, "hitveto_thread_crashes_total", thread="hitveto-infer-0")
        down = daemon.unhealthy()
    assert crashes == 1 and down == []


def test_a_thread_that_stays_down_ends_readiness_and_the_watchdog_and_exits_1(
    tiny_artifact, notify_socket, monkeypatch
):
    from hitveto.serving.batcher import Batcher

    def always_crash(self, timeout_s):
        time.sleep(0.01)
        raise RuntimeError("injected: the inference loop cannot run")

    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s while healthy
    notify_socket.settimeout(0.05)
    with running_daemon(tiny_artifact) as daemon:
        loop = threading.Thread(target=daemon.serve_forever_without_signals)
        loop.start()
        healthy = _messages(notify_socket, 0.6)
        monkeypatch.setattr(Batcher, "next_batch", always_crash)
        loop.join(10)
        after = _messages(notify_socket, 0.5)
        ready = sample(daemon, "hitveto_ready")
        crashes = sample(daemon, "hitveto_thread_crashes_total", thread="hitveto-infer-0")
    assert not loop.is_alive() and daemon.exit_code == 1 and ready == 0 and crashes == 6
    assert "WATCHDOG=1" in healthy
    down = next(i for i, m in enumerate(after) if m.startswith("STATUS=worker threads down"))
    assert "WATCHDOG=1" not in after[down:] and "STOPPING=1" in after[down:]


def _messages(sock: socket.socket, seconds: float) -> list[str]:
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            out += sock.recv(4096).decode().splitlines()
        except TimeoutError:
            pass
    return out


# A NaN pixel dropped a hit ------------------------------------------------------------------------


def test_nan_and_inf_pixels_are_masked_and_the_frame_judged_as_without_them(tmp_path):
    rng = np.random.default_rng(3)
    images = [rng.poisson(0.3 + (i % 4), RAW).astype(np.float32) * 10 for i in range(40)]
    model = median_threshold_artifact(tmp_path / "m.pt", images)
    spec = artifact.read(model).spec
    flat = spec.roi_index.ravel()
    judged_pixel = int(flat[flat >= 0][7])  # a pixel the model sees
    poisoned = []
    for i, image in enumerate(images):
        bad = image.copy()
        bad.flat[judged_pixel] = (np.nan, np.inf, -np.inf)[i % 3]
        image.flat[judged_pixel] = 0.0  # masked means: read as 0
        poisoned.append((EventKey(run=2, pulse_id=i), bad))
    clean = [(EventKey(run=1, pulse_id=i), image) for i, image in enumerate(images)]
    with running_daemon(model) as daemon:
        _, with_nan = stream(daemon, poisoned)
        _, without = stream(daemon, clean)
        masked = sample(daemon, "hitveto_nonfinite_pixel_frames_total")
    score = {(d.key.run, d.key.pulse_id): d.verdict.score for d in with_nan + without}
    # Equal up to float rounding: the two streams may batch differently, and a batch's size picks
    # the BLAS kernel.
    assert all(abs(score[(2, i)] - score[(1, i)]) <= 1e-6 for i in range(40))
    assert sum(d.keep for d in with_nan) == sum(d.keep for d in without) > 0  # the hits are kept
    assert {d.reason for d in with_nan} == {Reason.MODEL} and masked == 40


def test_a_score_that_is_not_a_number_is_kept_with_its_own_reason(tmp_path):
    broken = make_artifact(tmp_path / "nan.pt", bias=float("nan"))
    with running_daemon(broken) as daemon:
        counts, decisions = stream(daemon, frames(30))
        counted = sample(daemon, "hitveto_verdicts_total", outcome="keep", reason="bad_score")
    assert all(d.keep for d in decisions)  # before: all dropped as misses
    assert {d.reason for d in decisions} == {Reason.BAD_SCORE}
    assert counts.kept_by_reason == {Reason.BAD_SCORE: 30} and counted == 30


# Smaller defects ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [("shape", [True, True]), ("v", True), ("v", 1.0), ("timestamp", "late"), ("detector", "")],
)
def test_mistyped_header_fields_are_refused_and_answered_when_the_key_is_readable(
    tiny_artifact, field, value
):
    with (
        running_daemon(tiny_artifact) as daemon,
        VetoClient(daemon.endpoints.ingest, daemon.endpoints.publish) as veto,
    ):
        veto.wait_subscribed()
        # [true, true] declares 1x1 pixels: with 2 bytes the size check passes, numpy's reshape raised
        pixels = bytes(2) if field == "shape" else None
        push_raw(daemon, raw_message(pixels, **{field: value}), raw_message(pulse_id=1))
        time.sleep(0.5)
        answered = sample(daemon, "hitveto_verdicts_total", outcome="keep", reason="malformed")
        judged = sample(daemon, "hitveto_verdicts_total", outcome="keep", reason="model") + sample(
            daemon, "hitveto_verdicts_total", outcome="drop", reason="model"
        )
        internal = sample(daemon, "hitveto_bad_frames_total", reason="internal_error")
    keyed = field in ("shape", "v")
    assert internal == 0 and judged == 1 and answered == (1 if keyed else 0)


def test_a_message_larger_than_a_frame_is_refused_before_it_is_read(tiny_artifact):
    from hitveto_client.protocol import MAX_FRAME_BYTES, MAX_HEADER_BYTES

    with running_daemon(tiny_artifact) as daemon:  # ZMQ drops the sender, nothing is read
        push_raw(daemon, [raw_message()[0], bytes(MAX_FRAME_BYTES + MAX_HEADER_BYTES + 1)])
        counts, _ = stream(daemon, frames(20))
        received = sample(daemon, "hitveto_frames_received_total")
    assert received == 20 and counts.decided == 20  # the big one never reached a worker


def test_shutdown_before_start_and_metrics_after_shutdown(tiny_artifact):
    from prometheus_client import CollectorRegistry

    from hitveto.serving.daemon import Daemon

    Daemon(loopback_config(tiny_artifact), registry=CollectorRegistry()).shutdown()  # no error
    with running_daemon(tiny_artifact) as daemon:
        port = daemon.endpoints.metrics_port
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()


def test_region_frames_in_float_keep_their_shape_when_masked(tiny_artifact):
    from hitveto.models.preprocess import masked_region

    spec = artifact.read(tiny_artifact).spec
    roi = np.ones(ROI, np.float32)
    roi[3, 4] = np.nan
    out, n = masked_region(roi, spec)
    assert n == 1 and out.shape == ROI and out[3, 4] == 0 and np.isnan(roi[3, 4])  # input untouched


def test_uint16_frames_are_judged_not_failed(tiny_artifact):
    """Found by benchmarks/fuzz_header.py: torch has no amax for uint16, so every uint16 frame (an
    allowed wire dtype, and what Jungfrau's raw data are) was kept as model_error."""
    items = [(key, image.astype(np.uint16)) for key, image in frames(20)]
    with running_daemon(tiny_artifact) as daemon:
        counts, decisions = stream(daemon, items)
    assert {d.reason for d in decisions} == {Reason.MODEL} and counts.decided == 20
