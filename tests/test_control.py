"""Control channel and hot model swap: status, stats, unknown commands, reload under load."""

from __future__ import annotations

import msgpack
import zmq

from hitveto.serving.control import request
from hitveto_client.protocol import Reason
from hitveto_client.veto import VetoClient

from helpers import frames, make_artifact, running_daemon


def test_status_stats_and_unknown_command(tiny_artifact):
    with running_daemon(tiny_artifact) as daemon:
        ep = daemon.endpoints.control
        status = request(ep, "status")
        stats = request(ep, "stats")
        unknown = request(ep, "selfdestruct")
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.connect(ep)
        sock.send(b"\xc1 not msgpack")
        garbage = msgpack.unpackb(sock.recv())
        sock.close()
    assert status["ok"] and status["result"]["trained_version"] == "test-1"
    assert status["result"]["version"] == served(tiny_artifact)
    assert stats["ok"] and stats["result"]["frames_received"] == 0
    assert not unknown["ok"] and "selfdestruct" in unknown["error"]
    assert not garbage["ok"] and "bad request" in garbage["error"]


def test_model_swap_under_load_loses_nothing_and_switches_version(tiny_artifact, tmp_path):
    v2 = make_artifact(tmp_path / "v2.pt", version="test-2", bias=3.0)
    n, swap_at = 1500, 500
    with (
        running_daemon(tiny_artifact) as daemon,
        VetoClient(daemon.endpoints.ingest, daemon.endpoints.publish, deadline_ms=10_000) as veto,
    ):
        veto.wait_subscribed()
        decisions = []
        for i, (key, image) in enumerate(frames(n)):
            if i == swap_at:
                reply = request(daemon.endpoints.control, "reload", artifact=str(v2))
            veto.send(key, image)
            decisions += veto.poll()
        decisions += veto.flush(timeout_s=20)
    one, two = served(tiny_artifact), served(v2)
    assert reply["ok"] and reply["result"]["previous"] == one
    assert veto.counts.decided == veto.counts.sent == n and veto.counts.kept_fallback == 0
    assert {d.reason for d in decisions} == {Reason.MODEL}
    versions = [d.verdict.model_version for d in sorted(decisions, key=lambda d: d.key.pulse_id)]
    assert versions[0] == one and versions[-1] == two
    switch = versions.index(two)
    assert set(versions[switch:]) == {two}  # once swapped, never back


def test_corrupt_model_is_refused_and_old_model_keeps_serving(tiny_artifact, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(tiny_artifact.read_bytes()[:1000])
    with running_daemon(tiny_artifact) as daemon:
        reply = request(daemon.endpoints.control, "reload", artifact=str(broken))
        status = request(daemon.endpoints.control, "status")
    assert not reply["ok"] and "unreadable model artifact" in reply["error"]
    assert status["result"]["version"] == served(tiny_artifact)


def served(path) -> str:
    """The version a daemon serving this file puts on its verdicts."""
    from hitveto.models import artifact

    return artifact.read(path).served_version
