"""Who may reach the daemon (issue #18): CURVE intake under client churn, the control socket and
what it may load, the version a verdict names, and a bound on subscribers.

Each test here is one attack or accident that once broke the daemon; each failed on the code before
its fix. Real sockets on loopback.
"""

from __future__ import annotations

import os
import stat
import time

import numpy as np
import pytest
import zmq
import zmq.auth

from hitveto import config
from hitveto.models import artifact
from hitveto.serving.security import create_keys
from hitveto_client.protocol import EventKey, Reason
from hitveto_client.veto import CurveKeys, VetoClient

from helpers import RAW, frames, make_artifact, running_daemon, sample, stream

# CURVE intake died on a client connection ---------------------------------------------------------


def curve_settings(keys) -> dict[str, str]:
    return {
        "security.curve": "true",
        "security.server_secret_file": str(keys["server_secret"]),
        "security.clients_dir": str(keys["clients_dir"]),
    }


@pytest.mark.slow  # ~21 s
def test_curve_intake_survives_clients_coming_and_going_and_counts_every_refusal(
    tiny_artifact, tmp_path, monkeypatch
):
    keys = create_keys(tmp_path / "keys")
    _, intruder_secret = zmq.auth.create_certificates(tmp_path, "intruder")
    good = CurveKeys.from_files(str(keys["server_public"]), str(keys["client_secret"]))
    wrong = CurveKeys.from_files(str(keys["server_public"]), intruder_secret)
    real_proxy, calls = zmq.proxy_steerable, []

    def proxy_failing_once(*sockets):  # what a client connection did to the CURVE intake
        calls.append(1)
        if len(calls) == 1:
            raise zmq.Again()
        return real_proxy(*sockets)

    monkeypatch.setattr(zmq, "proxy_steerable", proxy_failing_once)
    judged = []
    with running_daemon(tiny_artifact, **curve_settings(keys)) as daemon:
        for run, client in enumerate([good, wrong, None, good, wrong, None, good]):
            with VetoClient(
                daemon.endpoints.ingest,
                daemon.endpoints.publish,
                curve=client,
                deadline_ms=2000 if client is good else 300,
            ) as veto:
                if client is good:
                    veto.wait_subscribed()
                for i in range(10):
                    veto.send(EventKey(run=run, pulse_id=i), np.zeros(RAW, np.int16))
                judged.append(sum(d.verdict is not None for d in veto.flush(timeout_s=5)))
        time.sleep(0.3)
        refused = sample(daemon, "hitveto_auth_failures_total")
        received = sample(daemon, "hitveto_frames_received_total")
    print(f"CURVE churn: judged {judged}, refusals counted {refused:.0f}")
    assert judged == [10, 0, 0, 10, 0, 0, 10] and received == 30
    assert refused >= 4  # two wrong-keyed and two unkeyed clients, at least once


# The control socket let anyone on the host swap the model -----------------------------------------


def test_control_socket_is_a_private_unix_socket_and_tcp_needs_curve(tiny_artifact):
    with running_daemon(tiny_artifact) as daemon:
        mode = stat.S_IMODE(os.stat(daemon.endpoints.control.removeprefix("ipc://")).st_mode)
    assert mode == 0o600
    with pytest.raises(config.ConfigError, match="needs security.curve"):
        config.load(overrides={"control.endpoint": "tcp://127.0.0.1:5552"})
    with pytest.raises(config.ConfigError, match="socket_mode"):
        config.load(overrides={"control.socket_mode": "0666"})


def test_reload_takes_only_regular_files_from_the_reload_folders(tiny_artifact, tmp_path):
    from hitveto.serving.control import request

    elsewhere = make_artifact(tmp_path / "elsewhere" / "zero.pt", version="test-1", bias=-50.0)
    allowed = tmp_path / "models"
    fifo = allowed / "fifo.pt"
    allowed.mkdir()
    os.mkfifo(fifo)
    (allowed / "link.pt").symlink_to(elsewhere)
    with running_daemon(tiny_artifact, **{"model.reload_dirs": f"{allowed},/dev"}) as daemon:
        ep = daemon.endpoints.control
        outside = request(ep, "reload", artifact=str(elsewhere))
        via_link = request(ep, "reload", artifact=str(allowed / "link.pt"))
        t0 = time.monotonic()
        from_fifo = request(ep, "reload", artifact=str(fifo), timeout_s=5)
        from_zero = request(ep, "reload", artifact="/dev/zero", timeout_s=5)
        seconds = time.monotonic() - t0
        version = request(ep, "status")["result"]["version"]
        refused = sample(daemon, "hitveto_reloads_total", result="refused")
    assert "not in a reload folder" in outside["error"] and "not in a reload folder" in via_link["error"]
    assert "not a regular file" in from_fifo["error"] and "not a regular file" in from_zero["error"]
    assert seconds < 5 and refused == 4
    assert version == artifact.read(tiny_artifact).served_version


def test_the_served_version_changes_with_the_file_not_only_the_metadata(tiny_artifact, tmp_path):
    from hitveto.serving.control import request

    impostor = make_artifact(tmp_path / "impostor.pt", version="test-1", bias=-50.0)
    with running_daemon(tiny_artifact) as daemon:  # the model's own folder: a reload folder
        _, before = stream(daemon, frames(5))
        assert request(daemon.endpoints.control, "reload", artifact=str(impostor))["ok"]
        _, after = stream(daemon, frames(5))
    (mine,), (theirs,) = ({d.verdict.model_version for d in ds} for ds in (before, after))
    assert mine != theirs  # same metadata, another file: another version
    assert mine.startswith("test-1@") and theirs == artifact.read(impostor).served_version


# Subscribers without a bound ----------------------------------------------------------------------


def test_subscribers_are_bounded_and_one_over_the_limit_gets_no_verdicts(tiny_artifact):
    with running_daemon(tiny_artifact, **{"publish.max_subscribers": 2}) as daemon:
        subs = [
            VetoClient(daemon.endpoints.ingest, daemon.endpoints.publish, deadline_ms=500) for _ in range(3)
        ]
        for s in subs:
            s.wait_subscribed()
        admitted = _gauge_after(daemon, "hitveto_subscribers", 2)
        time.sleep(0.3)
        for i, s in enumerate(subs):
            s.send(EventKey(run=9, pulse_id=i), np.zeros(RAW, np.int16))
        judged = [sum(d.verdict is not None for d in s.flush(timeout_s=2)) for s in subs]
        refused = sample(daemon, "hitveto_subscribers_refused_total")
        for s in subs:
            s.close()
        left = _gauge_after(daemon, "hitveto_subscribers", 0)
        late = VetoClient(daemon.endpoints.ingest, daemon.endpoints.publish)  # room again
        late.wait_subscribed()
        late.send(EventKey(run=9, pulse_id=9), np.zeros(RAW, np.int16))
        (decision,) = late.flush(timeout_s=5)
        late.close()
    assert admitted == 2 and refused == 1 and left == 0
    assert sorted(judged) == [0, 1, 1] and decision.reason is Reason.MODEL


def _gauge_after(daemon, name: str, want: float, timeout_s: float = 5.0) -> float:
    end = time.monotonic() + timeout_s
    while (value := sample(daemon, name)) != want and time.monotonic() < end:
        time.sleep(0.1)
    return value
