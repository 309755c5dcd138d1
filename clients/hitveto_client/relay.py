"""`hitveto write`: a hit writer that a DAQ sender of any language feeds over ZeroMQ.

    DAQ sender --PUSH frames--> [PULL  hit writer  VetoClient] --frames--> daemon
                                      |            <--verdicts, joined by event key--
                                      +--> CXI files: hits, and frames kept by fallback (flagged)

The sender speaks the daemon's own frame protocol (docs/PROTOCOL.md) and knows nothing of verdicts:
the writer holds each frame until its verdict (or its deadline: fail-open), writes what is kept, and
flushes each frame as it is written. A message that does not decode is counted by reason and
dropped: it carries no frame that could be written.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq

from hitveto_client.cxi import UNKNOWN, CxiWriter, Experiment
from hitveto_client.hitwriter import Frame, Summary, stream
from hitveto_client.protocol import ProtocolError, decode_frame
from hitveto_client.veto import VetoClient

log = logging.getLogger("hitveto.write")
IDLE_MS = 50  # how often the writer checks deadlines and the stop flag while no frame arrives
STOP_GRACE_S = 2.0  # after SIGTERM, frames still arriving are taken this long at most


def receive_frames(
    sock: zmq.Socket, stop: threading.Event, rejected: Counter, *, count: int | None = None
) -> Iterator[Frame | None]:
    """Frames from a PULL socket until `count` came, or `stop` is set and no frame came for
    IDLE_MS (frames on their way are taken, for at most STOP_GRACE_S); None while idle."""
    received, stopping_since = 0, None
    while count is None or received < count:
        if stop.is_set():
            stopping_since = stopping_since or time.monotonic()
            if time.monotonic() - stopping_since > STOP_GRACE_S:  # a sender that never pauses
                return
        if not sock.poll(IDLE_MS, zmq.POLLIN):
            if stop.is_set():
                return
            yield None
            continue
        parts = sock.recv_multipart(copy=False)
        try:
            header, image = decode_frame(parts)
        except ProtocolError as e:
            rejected[e.reason] += 1
            continue
        received += 1
        energy, distance = _beam(header.meta)
        yield Frame(key=header.key, image=image, photon_energy_ev=energy, distance_m=distance)


def _beam(meta: dict) -> tuple[float | None, float | None]:
    """The pulse's photon energy (eV) and detector distance (m), where the sender put them in the
    header's `meta` (`photon_energy_ev`, `distance_m`); None where absent or not a number."""
    values = (meta.get(name) for name in ("photon_energy_ev", "distance_m"))
    energy, distance = (
        float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None for v in values
    )
    return energy, distance


def write_hits(
    listen: str,
    *,
    frames_endpoint: str,
    verdicts_endpoint: str,
    out_dir: Path,
    deadline_ms: float = 1000.0,
    max_frames: int = 10_000,
    max_bytes: int = 4 << 30,
    count: int | None = None,
    stop: threading.Event | None = None,
    metrics_port: int | None = None,
    experiment: Experiment = UNKNOWN,
) -> Summary:
    """Receive frames on `listen` (bound), relay them to the daemon, write what it keeps.

    Runs until `stop` is set or `count` frames arrived; then waits for the verdicts in flight (at
    most the deadline) and returns the summary. With `metrics_port`, the frames written and not
    written are on /metrics there (loopback) while it runs. The files carry `experiment` (energy,
    distance, gain), a frame's own energy and distance where its header's `meta` gives them.
    """
    stop = stop or threading.Event()
    rejected: Counter = Counter()
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.setsockopt(zmq.RCVHWM, 1000)
    try:
        pull.bind(listen)
        with (
            VetoClient(frames_endpoint, verdicts_endpoint, deadline_ms=deadline_ms, context=context) as veto,
            CxiWriter(
                Path(out_dir) / "hits", max_frames=max_frames, max_bytes=max_bytes, experiment=experiment
            ) as writer,
        ):
            server = serve_metrics(writer, metrics_port) if metrics_port is not None else None
            veto.wait_subscribed()
            log.info(
                "listening for frames on %s; daemon %s, verdicts %s",
                listen,
                frames_endpoint,
                verdicts_endpoint,
            )
            try:
                summary = stream(receive_frames(pull, stop, rejected, count=count), veto, writer)
            finally:
                if server is not None:
                    server.shutdown()
                    server.server_close()
    finally:
        pull.close(linger=0)
        context.term()
    return dataclasses.replace(summary, rejected=dict(rejected))


def serve_metrics(writer: CxiWriter, port: int, address: str = "127.0.0.1") -> Any:
    """The writer's counts on /metrics (prometheus_client, imported only here); returns the server.

    hitveto_writer_frames_written_total and hitveto_writer_frames_not_written_total: a kept frame
    not written is a lost hit (deploy/prometheus: HitvetoWriterLosingFrames).
    """
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily

    class Counts:
        def collect(self) -> Iterator[CounterMetricFamily]:
            yield CounterMetricFamily(
                "hitveto_writer_frames_written", "Kept frames written", value=writer.written
            )
            yield CounterMetricFamily(
                "hitveto_writer_frames_not_written",
                "Kept frames the writer could not store (lost hits)",
                value=writer.not_written,
            )

    registry = CollectorRegistry()
    registry.register(Counts())
    server, _thread = start_http_server(port, addr=address, registry=registry)
    log.info("writer metrics on http://%s:%d/metrics", address, server.server_address[1])
    return server
