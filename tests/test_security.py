"""CURVE: a client with an allowed key is served; one without it is refused and counted."""

from __future__ import annotations

import zmq
import zmq.auth

from hitveto.serving.security import create_keys
from hitveto_client.veto import CurveKeys, VetoClient

from helpers import frames, running_daemon, sample, stream


def test_curve_refuses_unknown_sender_and_serves_known_one(tiny_artifact, tmp_path):
    keys = create_keys(tmp_path / "keys")
    intruder_public, intruder_secret = zmq.auth.create_certificates(tmp_path, "intruder")
    with running_daemon(
        tiny_artifact,
        **{
            "security.curve": "true",
            "security.server_secret_file": str(keys["server_secret"]),
            "security.clients_dir": str(keys["clients_dir"]),
        },
    ) as daemon:
        good = CurveKeys.from_files(str(keys["server_public"]), str(keys["client_secret"]))
        counts, decisions = stream(daemon, frames(20), curve=good)
        bad = CurveKeys.from_files(str(keys["server_public"]), str(intruder_secret))
        with VetoClient(
            daemon.endpoints.ingest, daemon.endpoints.publish, curve=bad, deadline_ms=300
        ) as veto:
            for key, image in frames(5):
                veto.send(key, image)
            refused = veto.flush()
        plain = zmq.Context.instance().socket(zmq.PUSH)  # no CURVE at all: handshake never completes
        plain.connect(daemon.endpoints.ingest)
        plain.send_multipart([b"x", b"y"], flags=zmq.NOBLOCK) if plain.poll(200, zmq.POLLOUT) else None
        plain.close(linger=0)
        received = sample(daemon, "hitveto_frames_received_total")
        failures = sample(daemon, "hitveto_auth_failures_total")
    assert counts.decided == counts.sent == 20 and counts.kept_fallback == 0
    assert len(refused) == 5 and all(d.keep and d.verdict is None for d in refused)
    assert received == 20  # nothing from the intruder or the plain socket got in
    assert failures >= 1  # the intruder's handshakes were refused and counted
