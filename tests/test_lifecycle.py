"""Daemon lifecycle as systemd sees it: READY/STATUS/WATCHDOG over NOTIFY_SOCKET, SIGTERM drains."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hitveto.serving.launcher import start_daemon
from hitveto_client.protocol import EventKey, Reason
from hitveto_client.veto import VetoClient

from helpers import RAW, loopback_config


def test_process_reports_ready_and_drains_on_sigterm(tiny_artifact, tmp_path):
    daemon = start_daemon(
        "model.device=cpu",
        "batch.max_delay_ms=50",
        "batch.max_batch=64",
        "batch.latency_budget_ms=60000",
        artifact=tiny_artifact,
        log_path=tmp_path / "daemon.log",
    )
    n = 200
    try:
        assert "READY=1" in daemon.messages and any(m.startswith("STATUS=") for m in daemon.messages)
        with VetoClient(daemon.ingest, daemon.publish, deadline_ms=20_000) as veto:
            veto.wait_subscribed()
            image = np.ones(RAW, np.int16)
            for i in range(n):
                veto.send(EventKey(run=1, pulse_id=i), image)
            assert daemon.stop() == 0  # SIGTERM while frames are in flight
            assert not Path(daemon.control.removeprefix("ipc://")).parent.exists()  # nothing left in /tmp
            decisions = veto.flush(timeout_s=10)
    finally:
        daemon.kill()
    assert veto.counts.decided == veto.counts.sent == n
    reasons = {d.reason for d in decisions}
    assert reasons <= {Reason.MODEL, Reason.AUDIT, Reason.SHUTDOWN}  # judged, or answered at shutdown
    assert Reason.NO_VERDICT not in reasons  # nothing left unanswered


def test_watchdog_pings_arrive(tiny_artifact, notify_socket, monkeypatch):
    import threading

    from prometheus_client import CollectorRegistry

    from hitveto.serving.daemon import Daemon

    notify_socket.settimeout(5)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    d = Daemon(loopback_config(tiny_artifact), registry=CollectorRegistry())
    d.start()
    runner = threading.Thread(target=d.serve_forever_without_signals)
    runner.start()
    seen = set()
    while "WATCHDOG=1" not in seen:
        seen |= set(notify_socket.recv(4096).decode().splitlines())
    d.stop_requested.set()
    runner.join(10)
    assert {"READY=1", "WATCHDOG=1"} <= seen
