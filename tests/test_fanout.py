"""Three daemon processes behind one client: ZMQ's PUSH deals the frames, the client subscribes to
every daemon's verdicts, and each frame is decided exactly once, also when one daemon is killed."""

from __future__ import annotations

import signal
from collections import Counter

import numpy as np

from hitveto.serving.launcher import start_daemon
from hitveto_client.protocol import JUDGED, EventKey, Reason
from hitveto_client.veto import VetoClient

from helpers import RAW, make_artifact

N, KILL_AT = 900, 300


def test_three_daemons_share_the_stream_and_one_dying_loses_nothing(tmp_path):
    # Same weights, a version per daemon: the verdicts say which daemon judged each frame.
    # No overload keeps (as in conftest.loopback_config): a busy CI machine must not turn a stall
    # of a live daemon into a keep that this test would read as a frame the dead one held.
    daemons = [
        start_daemon(
            "model.device=cpu",
            "model.threads=1",
            "ingest.workers=1",
            "batch.latency_budget_ms=60000",
            artifact=make_artifact(tmp_path / f"d{i}.pt", version=f"daemon-{i}"),
            log_path=tmp_path / f"d{i}.log",
        )
        for i in range(3)
    ]
    image = np.random.default_rng(0).poisson(3, RAW).astype(np.int16)
    decisions = []
    try:
        with VetoClient(
            [d.ingest for d in daemons], ",".join(d.publish for d in daemons), deadline_ms=1000
        ) as veto:
            veto.wait_subscribed()
            for i in range(N):
                if i == KILL_AT:
                    daemons[1].process.send_signal(signal.SIGKILL)
                veto.send(EventKey(run=1, pulse_id=i), image)
                decisions += veto.poll(2)  # about 400 frames/s
            decisions += veto.flush(timeout_s=5)
    finally:
        for d in daemons:
            d.kill()
    assert veto.counts.sent == veto.counts.decided == N
    assert sorted(d.key.pulse_id for d in decisions) == list(range(N))  # once each

    def daemon(d):  # the trained version names the daemon; the file digest follows the "@"
        return d.verdict.model_version.split("@")[0]

    judged_by = Counter(daemon(d) for d in decisions if d.reason in JUDGED)
    before = Counter(daemon(d) for d in decisions if d.reason in JUDGED and d.key.pulse_id < KILL_AT)
    assert set(before) == {"daemon-0", "daemon-1", "daemon-2"}  # all three dealt to
    assert min(before.values()) > KILL_AT / 6
    late = [d for d in decisions if d.key.pulse_id >= KILL_AT + 50]
    stray = [
        (d.key.pulse_id, d.reason.value, d.verdict and d.verdict.model_version)
        for d in late
        if not (d.reason in JUDGED and daemon(d) != "daemon-1")
    ]
    assert not stray, f"frames after the kill not judged by a live daemon: {stray[:10]}"
    fallback = [d for d in decisions if d.reason not in JUDGED]
    # Only the frames the dead daemon held (at most its queues) were kept by the deadline.
    assert all(d.reason is Reason.NO_VERDICT for d in fallback) and len(fallback) < 100
    assert sum(judged_by.values()) + len(fallback) == N
    print(f"judged by {dict(judged_by)}, kept by deadline {len(fallback)}")
