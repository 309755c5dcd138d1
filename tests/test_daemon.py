"""The daemon over real loopback sockets: one verdict per frame, fail-open reasons, drain."""

from __future__ import annotations

import numpy as np
import zmq

from hitveto_client.protocol import EventKey, Reason
from hitveto_client.veto import VetoClient

from helpers import RAW, ROI, frames, make_artifact, running_daemon, sample, stream


def test_each_frame_gets_exactly_one_model_verdict(tiny_artifact):
    with running_daemon(tiny_artifact) as daemon:
        counts, decisions = stream(daemon, frames(300))
    keys = [d.key.pulse_id for d in decisions]
    assert sorted(keys) == list(range(300))
    assert {d.reason for d in decisions} == {Reason.MODEL}
    assert counts.sent == counts.decided == 300 and counts.kept_fallback == 0


def test_a_key_sent_twice_before_its_verdict_is_kept_not_lost(tiny_artifact):
    (key, image), (other, image2) = frames(2)
    with (
        running_daemon(tiny_artifact) as daemon,
        VetoClient(daemon.endpoints.ingest, daemon.endpoints.publish) as veto,
    ):
        veto.wait_subscribed()
        for k, i in ((key, image), (key, image2), (other, image2)):  # no receive in between
            veto.send(k, i)
        decisions = veto.flush(timeout_s=10)
    assert veto.counts.sent == veto.counts.decided == 3
    assert [(d.key.pulse_id, d.reason) for d in decisions if d.reason is not Reason.MODEL] == [
        (0, Reason.DUPLICATE)
    ]
    assert sorted(d.key.pulse_id for d in decisions) == [0, 0, 1]
    assert veto.counts.foreign_verdicts == veto.counts.late_verdicts == 0


def test_two_engines_share_one_batcher(tiny_artifact):
    with running_daemon(
        tiny_artifact, **{"model.device": "cpu,cpu", "batch.max_batch": 4, "batch.max_delay_ms": 0.5}
    ) as daemon:
        counts, decisions = stream(daemon, frames(2000))
        per_engine = [loop.judged for loop in daemon.inference]
        device = daemon.status()["device"]
    assert device == "cpu,cpu" and sum(per_engine) == 2000 and min(per_engine) > 0
    assert sorted(d.key.pulse_id for d in decisions) == list(range(2000))
    assert {d.reason for d in decisions} == {Reason.MODEL}


def test_region_and_raw_frames_get_the_same_score(tiny_artifact):
    from hitveto.models import artifact, preprocess

    spec = artifact.read(tiny_artifact).spec
    key, raw = next(frames(1))
    roi = preprocess.region(raw, spec).copy()
    with running_daemon(tiny_artifact) as daemon:
        _, decisions = stream(daemon, [(key, raw), (EventKey(run=1, pulse_id=1), roi)])
    scores = {d.key.pulse_id: d.verdict.score for d in decisions}
    assert scores[0] == scores[1]
    assert roi.shape == ROI


def test_hit_threshold_decides_keep(tmp_path):
    always = make_artifact(tmp_path / "hit.pt", bias=50.0)
    with running_daemon(always) as daemon:
        counts, decisions = stream(daemon, frames(20))
    assert all(d.keep and d.verdict.hit for d in decisions) and counts.hits == 20


def test_malformed_frames_are_counted_and_answered(tiny_artifact):
    with running_daemon(tiny_artifact) as daemon:
        bad = [
            (EventKey(run=1, pulse_id=0), np.zeros((3, 3), np.int16)),  # wrong shape
            (EventKey(run=1, pulse_id=1, detector="epix"), np.zeros(RAW, np.int16)),
        ]  # detector
        counts, decisions = stream(daemon, bad + list(frames(5))[2:])
        ctx = zmq.Context.instance()
        push = ctx.socket(zmq.PUSH)
        push.connect(daemon.endpoints.ingest)
        push.send_multipart([b"\x93garbage", b"x"])  # no readable key: counted, not answerable
        push.close(linger=1000)
        _, more = stream(daemon, list(frames(1)))
    reasons = {d.key.pulse_id: d.reason for d in decisions}
    assert reasons[0] == reasons[1] == Reason.MALFORMED and all(d.keep for d in decisions[:2])
    assert counts.decided == counts.sent == 5 and len(more) == 1
    assert sample(daemon, "hitveto_bad_frames_total", reason="bad_shape") == 1
    assert sample(daemon, "hitveto_bad_frames_total", reason="unknown_detector") == 1
    assert sample(daemon, "hitveto_bad_frames_total", reason="bad_header") == 1


def test_overload_yields_keep_verdicts_and_no_loss(tiny_artifact):
    with running_daemon(
        tiny_artifact, **{"batch.max_queue": 4, "batch.max_batch": 2, "ingest.workers": 2}
    ) as daemon:
        counts, decisions = stream(daemon, frames(2000, shape=RAW))
    reasons = {d.reason for d in decisions}
    assert counts.sent == counts.decided == 2000
    assert Reason.OVERLOAD in reasons and Reason.MODEL in reasons
    assert sorted(d.key.pulse_id for d in decisions) == list(range(2000))
    assert all(d.keep for d in decisions if d.reason is Reason.OVERLOAD)


def test_a_subscriber_that_stops_reading_does_not_hold_the_daemon(tiny_artifact):
    with running_daemon(tiny_artifact, **{"publish.sndhwm": 1000}) as daemon:
        stalled = zmq.Context.instance().socket(zmq.SUB)
        stalled.setsockopt(zmq.SUBSCRIBE, b"")
        stalled.setsockopt(zmq.RCVHWM, 10)
        stalled.connect(daemon.endpoints.publish)  # subscribes, then never reads: its queue
        counts, decisions = stream(daemon, frames(5000))  # fills after ~1,010 verdicts, then drops
        stalled.close(linger=0)
    assert counts.decided == counts.sent == 5000
    assert {d.reason for d in decisions} == {Reason.MODEL}  # the reading client lost nothing


def test_an_internal_error_on_a_frame_costs_that_frame_only(tiny_artifact, monkeypatch):
    from hitveto.serving import ingest

    real_region = ingest.masked_region

    def region_failing_on_pulse_3(image, spec):
        if image.flat[0] == -3:  # the poisoned frame below
            raise RuntimeError("bug")
        return real_region(image, spec)

    monkeypatch.setattr(ingest, "masked_region", region_failing_on_pulse_3)
    items = list(frames(6))
    items[3][1].flat[0] = -3
    with running_daemon(tiny_artifact) as daemon:
        counts, decisions = stream(daemon, items)
        failures = sample(daemon, "hitveto_bad_frames_total", reason="internal_error")
    reasons = {d.key.pulse_id: d.reason for d in decisions}
    assert reasons.pop(3) == Reason.MODEL_ERROR and set(reasons.values()) == {Reason.MODEL}
    assert counts.decided == 6 and failures == 1


def test_after_an_overload_the_daemon_recovers_and_judges_everything(tiny_artifact):
    from hitveto_client.hitwriter import Frame
    from hitveto_client.hitwriter import stream as paced

    with running_daemon(tiny_artifact, **{"batch.max_queue": 8, "batch.max_batch": 4}) as daemon:
        counts, decisions = stream(daemon, frames(3000))  # far beyond capacity
        with VetoClient(daemon.endpoints.ingest, daemon.endpoints.publish) as veto:
            veto.wait_subscribed()
            calm = paced(
                [
                    Frame(key=EventKey(run=2, pulse_id=i), image=img)
                    for i, (_, img) in enumerate(frames(100, seed=4))
                ],
                veto,
                None,
                rate_hz=100,
            )
    assert counts.decided == counts.sent == 3000
    assert any(d.reason is Reason.OVERLOAD for d in decisions)
    assert calm.sent == calm.hits_kept + calm.misses_dropped == 100  # all judged again
