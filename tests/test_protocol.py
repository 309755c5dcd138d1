"""Wire protocol v2 (and v1 beside it): round trips, and every malformed input is a counted
ProtocolError, never a crash."""

from __future__ import annotations

import dataclasses
import math

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hitveto_client.protocol import (
    PROTOCOL_VERSION,
    EventKey,
    ProtocolError,
    Reason,
    Verdict,
    decode_frame,
    decode_verdict,
    encode_frame,
)

KEY = EventKey(run=7, pulse_id=42, timestamp=123456789, detector="cspad")


@pytest.mark.parametrize("dtype", ["int16", "uint16", "int32", "float32"])
def test_frame_round_trip_is_bit_identical(dtype):
    image = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    header, out = decode_frame(encode_frame(KEY, image, meta={"gain": "low"}))
    assert header.key == KEY and header.shape == (2, 3, 5) and header.meta == {"gain": "low"}
    assert out.dtype == image.dtype and np.array_equal(out, image)


def test_verdict_round_trip():
    v = Verdict(
        key=KEY,
        keep=False,
        hit=False,
        score=0.01,
        threshold=0.3,
        model_version="m-1",
        reason=Reason.MODEL,
        sent_ns=1,
        received_ns=2,
        inference_ms=0.5,
    )
    back = decode_verdict(v.to_wire_at(3))
    assert back.key == KEY and back.score == pytest.approx(0.01) and back.published_ns == 3
    assert back.reason is Reason.MODEL and not back.keep


def test_a_v2_verdict_carries_its_classes_and_a_v1_verdict_none():
    kw = {"key": KEY, "keep": True, "hit": True, "score": 0.9, "threshold": 0.5, "model_version": "m-1"}
    scores = {"ice": 0.7, "jet_streak": float("nan")}
    v2 = Verdict(**kw, reason=Reason.MODEL, classes=("ice",), class_scores=scores)
    wire = msgpack.unpackb(v2.to_wire_at(3))
    back = decode_verdict(v2.to_wire_at(3))
    assert wire["v"] == PROTOCOL_VERSION == 2 and wire["classes"] == ["ice"]
    assert back.classes == ("ice",) and back.class_scores["ice"] == pytest.approx(0.7)
    assert math.isnan(back.class_scores["jet_streak"]) and back.version == 2
    v1_wire = msgpack.unpackb(dataclasses.replace(v2, version=1).to_wire_at(3))
    assert v1_wire["v"] == 1 and not {"classes", "class_scores"} & set(v1_wire)
    old = decode_verdict(msgpack.packb(v1_wire))  # as a v1 daemon sends it: decoded, no classes
    assert (old.version, old.classes, old.class_scores, old.score) == (1, (), {}, 0.9)
    with pytest.raises(ProtocolError):
        decode_verdict(msgpack.packb({**v1_wire, "v": 3}))


def test_frames_of_v1_and_v2_are_accepted_and_their_version_recorded():
    for version in (1, 2):
        header, _ = decode_frame(encode_frame(KEY, np.zeros((2, 2), np.int16), version=version))
        assert header.version == version
    with pytest.raises(ProtocolError) as err:
        decode_frame([_header(v=1, dtype="object"), bytes(8)])
    assert (err.value.reason, err.value.version) == ("bad_dtype", 1)  # answered in v1


def test_keys_at_the_64_bit_edges_are_accepted():
    edge = EventKey(run=-(1 << 63), pulse_id=(1 << 63) - 1, timestamp=(1 << 64) - 1)
    header, _ = decode_frame(encode_frame(edge, np.zeros((2, 2), np.int16)))
    assert header.key == edge


def test_fail_open_verdict_keeps_without_score():
    v = Verdict.fail_open(KEY, Reason.OVERLOAD)
    assert v.keep and not v.hit and math.isnan(v.score) and v.classes == () and v.class_scores == {}


def _header(**changes):
    meta = {
        "v": PROTOCOL_VERSION,
        "run": 1,
        "pulse_id": 2,
        "timestamp": 3,
        "detector": "cspad",
        "dtype": "int16",
        "shape": [2, 2],
        "sent_ns": 0,
        "meta": {},
    }
    meta.update(changes)
    return msgpack.packb(meta)


@pytest.mark.parametrize(
    "parts, reason, keyed",
    [
        ([b"only one part"], "bad_parts", False),
        ([b"\xc1\xc1", b""], "bad_header", False),
        ([msgpack.packb([1, 2]), b""], "bad_header", False),
        ([_header(v=99), bytes(8)], "bad_version", True),
        ([_header(v=0), bytes(8)], "bad_version", True),
        ([_header(v=3), bytes(8)], "bad_version", True),
        ([_header(run="one"), bytes(8)], "bad_header", False),
        ([_header(dtype="object"), bytes(8)], "bad_dtype", True),
        ([_header(shape=[2, -2]), bytes(8)], "bad_shape", True),
        ([_header(shape=[2, 2]), bytes(7)], "bad_size", True),
        ([_header(shape=[1 << 20, 1 << 20]), bytes(8)], "bad_size", True),
        ([_header(shape=[]), b""], "bad_shape", True),
        ([b"x" * 5000, bytes(8)], "bad_header", False),
        ([_header(v=True), bytes(8)], "bad_version", True),  # msgpack true is Python's 1
        ([_header(v=1.0), bytes(8)], "bad_version", True),
        ([_header(shape=[True, True]), bytes(2)], "bad_shape", True),
        ([_header(pulse_id=1 << 63), bytes(8)], "bad_header", False),  # beyond signed 64-bit
        ([_header(run=-(1 << 63) - 1 + 1, timestamp=-1), bytes(8)], "bad_header", False),
        ([_header(detector=""), bytes(8)], "bad_header", False),
        ([_header(detector="d" * 65), bytes(8)], "bad_header", False),
    ],
)
def test_malformed_frames_raise_counted_reasons(parts, reason, keyed):
    with pytest.raises(ProtocolError) as err:
        decode_frame(parts)
    assert err.value.reason == reason
    assert (err.value.key is not None) == keyed


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=3))
def test_random_bytes_never_crash_the_decoder(parts):
    try:
        decode_frame(parts)
    except ProtocolError:
        pass


@pytest.mark.slow  # ~12 s: 60,000 coverage-guided inputs
def test_atheris_campaign_on_the_daemon_intake_finds_nothing(tmp_path):
    """tests/fuzz_ingest.py: coverage-guided messages through IngestWorker.handle (see its doc)."""
    import resource
    import subprocess
    import sys
    from pathlib import Path

    harness = Path(__file__).with_name("fuzz_ingest.py")
    # Linux keeps a process's peak RSS across exec, so the harness starts with this (large) test
    # process's: measured, 2,361 MB in a full run, over libFuzzer's default 2,048 MB limit before
    # any input. The limit is 2 GB above that inherited peak; one allocation stays capped at 2 GB.
    inherited_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    done = subprocess.run(
        [
            sys.executable,
            str(harness),
            "-runs=60000",
            "-seed=7",
            f"-rss_limit_mb={inherited_mb + 2048}",
            "-malloc_limit_mb=2048",
            f"-artifact_prefix={tmp_path}/",
        ],  # a crash input lands there
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (last,) = [ln for ln in done.stderr.splitlines() if ln.startswith("outcomes after 60000")]
    assert "'queued'" in last and "'answered'" in last and "'unanswerable'" in last  # every path
