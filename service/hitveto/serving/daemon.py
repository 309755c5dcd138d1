"""The veto daemon's composition root: builds the parts, owns the threads, runs the lifecycle.

    DAQ PUSH ──▶ PULL (bind) ─proxy─▶ inproc PUSH ──▶ N ingest workers ──▶ Batcher
                                                                            │
    subscribers ◀── PUB (bind) ◀── Publisher thread ◀── verdicts ◀── InferenceLoop (Engine)

Start: load and check the artifact, warm the engine, bind, start threads, then READY=1.
Stop (SIGTERM): frames still arriving are answered SHUTDOWN-keep, the batcher is drained through the
model, every verdict is published, then sockets close. Signal handlers only set an event.
Health: every thread is supervised (supervise.py); one that stays down makes the daemon not ready:
no watchdog ping, drain, exit 1, so that systemd restarts it. The parts: intake.py (socket, proxy,
ingest workers), batcher.py, inference.py (+ models/engine.py), publisher.py, control.py, and the
watchers shadow.py and drift.py; docs/ARCHITECTURE.md draws them.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from prometheus_client import CollectorRegistry

from hitveto.config import ServeConfig
from hitveto.models import kernels
from hitveto.models.artifact import Artifact
from hitveto.models.engine import ModelEngine
from hitveto.serving import lifecycle
from hitveto.serving.audit import AuditSample
from hitveto.serving.batcher import Batcher
from hitveto.serving.control import ControlServer
from hitveto.serving.guard import InputGuard
from hitveto.serving.inference import InferenceLoop
from hitveto.serving.intake import Intake
from hitveto.serving.metrics import Metrics
from hitveto.serving.model_slot import ModelSlot, devices_of, freeze_heap
from hitveto.serving.notify import notify
from hitveto.serving.publisher import Publisher
from hitveto.serving.security import HandshakeMonitor, server_options, start_authenticator
from hitveto.serving.sockets import bind, bind_private_ipc
from hitveto.serving.supervise import Supervised
from hitveto.serving.watchers import Watchers
from hitveto_client.protocol import WELCOME, Reason

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoints:
    ingest: str
    publish: str
    control: str | None
    metrics_port: int | None


class Daemon:
    """One veto daemon; a context manager that starts on enter and drains on exit."""

    def __init__(self, config: ServeConfig, *, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.metrics = Metrics(registry or CollectorRegistry())
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self._reload_lock = threading.Lock()
        self._started_s = time.monotonic()
        self._draining = threading.Event()
        self._context = zmq.Context()
        self._slot = ModelSlot(config)
        self.endpoints: Endpoints | None = None
        self.exit_code = 0  # 1 once a worker thread stayed down
        self._threads: list[Supervised] = []
        self._monitor: HandshakeMonitor | None = None

    @property
    def artifact(self) -> Artifact:
        return self._slot.artifact

    def start(self) -> Endpoints:
        cfg = self.config
        self._start_security()
        self.guard = InputGuard(cfg.calib.constants, self.artifact.spec, check_level=cfg.calib.guard)
        engines = self._slot.engines(self.artifact)
        warm_s = sum(e.warm_up() for e in engines) + kernels.warm_up()
        b = cfg.batch
        self.batcher = Batcher(max_batch=b.max_batch, max_delay_ms=b.max_delay_ms, max_queue=b.max_queue)
        pub_endpoint = self._bind_publisher()
        cpu_engines = sum(e.device == "cpu" for e in engines)
        self.watchers = Watchers.start(cfg, self.artifact, self.metrics, cpu_engines=cpu_engines)
        self.inference = self._inference_loops(engines)
        self.intake = Intake(
            self._context,
            cfg.ingest,
            curve=self._curve,
            batcher=self.batcher,
            metrics=self.metrics,
            publish=self.publisher.put,
            artifact=lambda: self._slot.artifact,
            guard=self.guard,
            draining=self._draining,
        )
        ingest_endpoint = self.intake.start(self._watch_handshakes)
        self.publisher.start()
        for loop in self.inference:
            loop.thread.start()
        port = self.metrics.serve(cfg.metrics.address, cfg.metrics.port) if cfg.metrics.enabled else None
        control_endpoint = self._start_control()
        if self._monitor is not None:
            self._monitor.start()
        self._threads = [
            *self.intake.threads,
            self.publisher.thread,
            *(loop.thread for loop in self.inference),
            *self.watchers.threads,
            *(t.thread for t in (self.control, self._monitor) if t is not None),
        ]
        self._announce_model(engines)
        self.endpoints = Endpoints(
            ingest=ingest_endpoint, publish=pub_endpoint, control=control_endpoint, metrics_port=port
        )
        served, devices = self.artifact.served_version, devices_of(engines)
        log.info("serving %s on %s (warm-up %.2f s): %s", served, devices, warm_s, self.endpoints)
        freeze_heap()
        notify(f"READY=1\nSTATUS=serving {served} on {devices}")
        return self.endpoints

    def _start_security(self) -> None:
        """ZAP (CURVE keys) and, with CURVE, the monitor that counts every refused handshake,
        whatever the client's mechanism."""
        self._auth = start_authenticator(self._context, self.config.security)
        self._curve = server_options(self.config.security)
        if self.config.security.curve:
            self._monitor = HandshakeMonitor(
                on_refused=self.metrics.auth_failures.inc, on_crash=self.metrics.thread_crashed
            )

    def _bind_publisher(self) -> str:
        cfg = self.config.publish
        options = {zmq.XPUB_WELCOME_MSG: WELCOME, zmq.XPUB_VERBOSER: 1, zmq.XPUB_MANUAL: 1, **self._curve}
        self._pub, endpoint = bind(
            self._context, zmq.XPUB, cfg.endpoint, hwm=cfg.sndhwm, linger_ms=500, options=options
        )
        # The publisher's own socket monitor counts this socket's refused handshakes.
        self.publisher = Publisher(self._pub, self.metrics, cfg.max_subscribers)
        return endpoint

    def _inference_loops(self, engines: list[ModelEngine]) -> list[InferenceLoop]:
        """One inference thread per engine, all taking batches from the one batcher: a free device
        takes the next due batch."""
        cfg = self.config
        return [
            InferenceLoop(
                engine=e,
                batcher=self.batcher,
                metrics=self.metrics,
                publish=self.publisher.put,
                name=f"hitveto-infer-{i}",
                latency_budget_ms=cfg.batch.latency_budget_ms,
                audit=AuditSample(cfg.audit.fraction, cfg.audit.seed),
                watchers=self.watchers.active,
            )
            for i, e in enumerate(engines)
        ]

    def _start_control(self) -> str | None:
        endpoint = self.config.control.endpoint
        if not endpoint:
            self.control = None
            return None
        if endpoint.startswith("ipc://"):
            sock, endpoint = bind_private_ipc(
                self._context, zmq.REP, endpoint, mode=int(self.config.control.socket_mode, 8)
            )
        else:  # tcp:// only with CURVE (config refuses it otherwise)
            sock, endpoint = bind(self._context, zmq.REP, endpoint, options=self._curve)
            self._watch_handshakes(sock)
        self.control = ControlServer(sock, self, on_crash=self.metrics.thread_crashed)
        self.control.thread.start()
        return endpoint

    def _watch_handshakes(self, sock: zmq.Socket[Any]) -> None:
        """Count the socket's refused handshakes (before its owner thread starts using it)."""
        if self._monitor is not None:
            self._monitor.watch(sock)

    def _announce_model(self, engines: list[ModelEngine]) -> None:
        info = self.artifact.info
        self.metrics.set_model(
            self.artifact.served_version,
            info.architecture,
            info.detector,
            devices_of(engines),
            self.artifact.sha256,
            info.threshold,
            info.classes,
        )
        self.metrics.gpu_memory.set(sum(e.gpu_memory_bytes() for e in engines))
        self.metrics.ready.set(1)

    def status(self) -> dict[str, Any]:
        """What is being served, where, and how full the queue is."""
        info = self.artifact.info
        return {
            "version": self.artifact.served_version,
            "trained_version": info.version,
            "sha256": self.artifact.sha256,
            "detector": info.detector,
            "threshold": info.threshold,
            "classes": dict(zip(info.classes, (info.class_thresholds.get(c) for c in info.classes))),
            "device": devices_of([loop.engine for loop in self.inference]),
            "artifact": str(self.artifact.path),
            "queue_depth": self.batcher.depth(),
            "uptime_s": round(time.monotonic() - self._started_s, 1),
            "draining": self._draining.is_set(),
            "unhealthy": self.unhealthy(),
            "learning": self.inference[0].audit.fraction == 1.0,
            "endpoints": dataclasses.asdict(self.endpoints) if self.endpoints else {},
        }

    def stats(self) -> dict[str, Any]:
        """Frame accounting: received, verdicts by outcome/reason, rejections by reason."""
        return self.metrics.accounting()

    def reload(self, path: str | None = None) -> dict[str, Any]:
        """Swap in a model file (default: the configured one) without dropping a frame.

        Only a regular file in model.reload_dirs is taken (the control channel must not be a way
        to run anyone's code). The new model is loaded, checked and warmed beside the old one, which
        keeps serving; the swap happens between two batches. ArtifactError (old model still
        serving) if it does not fit.
        """
        with self._reload_lock:
            try:
                new, engines = self._slot.prepare(path)
            except Exception:
                self.metrics.reloads.labels("refused").inc()
                raise
            old = self.artifact
            for loop, engine in zip(self.inference, engines):
                loop.swap(engine)
            self._slot.artifact = new
            self.watchers.use(new, old)
            self._announce_model(engines)
            freeze_heap()
            self.metrics.reloads.labels("ok").inc()
            log.info(
                "reloaded: %s (sha256 %s) replaces %s",
                new.served_version,
                new.sha256[:12],
                old.served_version,
            )
            return {"version": new.served_version, "sha256": new.sha256, "previous": old.served_version}

    def calib(self, constants: str) -> dict[str, Any]:
        """Swap in new calibration constants (a new dark mid-shift); frames go on meanwhile.
        ValueError (the old constants still in use) if the file does not fit the model."""
        loaded = self.guard.load(Path(constants), self.artifact.spec)
        log.info("calibration constants now %s (from %s)", constants, loaded.source)
        return {"constants": constants, "source": loaded.source}

    def learn(self, on: bool) -> dict[str, Any]:
        """Learn mode keeps every frame, the model's misses as `audit`, so that the hit writer
        stores a new experiment's first minutes whole for `hitveto adapt`; off: the configured
        audit share again. Verdicts, scores and the accounting are as always."""
        audit = self.config.audit
        fraction = 1.0 if on else audit.fraction
        for loop in self.inference:
            loop.audit = AuditSample(fraction, audit.seed)
        self.metrics.learning.set(int(on))
        log.info("learn mode %s: %g of the misses kept", "on" if on else "off", fraction)
        return {"learning": on, "audit_fraction": fraction}

    def serve_forever(self) -> None:
        """Run until SIGTERM/SIGINT (main thread only), pinging the watchdog; then drain and stop.
        SIGHUP reloads the configured artifact (lifecycle.py)."""
        lifecycle.serve_with_signals(self)

    def serve_forever_without_signals(self) -> None:
        """Run until stop_requested is set; then drain and stop (lifecycle.py)."""
        lifecycle.serve(self)

    def unhealthy(self) -> list[str]:
        """The worker threads that are down while the daemon serves (empty when healthy)."""
        if self._draining.is_set():
            return []
        return [t.name for t in self._threads if not t.is_alive()]

    def status_line(self) -> str:
        """For systemd's STATUS=."""
        verdicts, queued = self.publisher.published, self.batcher.depth()
        return f"serving {self.artifact.served_version}, {verdicts} verdicts, queue {queued}"

    def shutdown(self, deadline_s: float = 10.0) -> None:
        """Drain in phases: answer late arrivals, close intake, judge the backlog, publish all."""
        if self._context.closed:  # stopped already
            return
        if not self._threads:  # never started: nothing to drain
            self._context.destroy(linger=0)
            return
        notify("STOPPING=1")
        self.metrics.ready.set(0)
        end = time.monotonic() + deadline_s
        self._draining.set()
        self.intake.close(end)
        for loop in self.inference:
            loop.stop.set()
        for loop in self.inference:
            loop.thread.join(max(0.1, end - time.monotonic()))
        self._answer_left_behind()
        self.publisher.close(max(0.1, end - time.monotonic()))
        self._stop_watchers()
        self._pub.close(linger=500)
        self._context.term()
        log.info("stopped after %d verdicts", self.publisher.published)

    def _answer_left_behind(self) -> None:
        """Frames still queued (an inference thread that was down) are kept, never left unanswered."""
        artifact = self.artifact
        while batch := self.batcher.drain(self.batcher.max_batch):
            for p in batch:
                self.publisher.put(
                    p.kept(
                        Reason.SHUTDOWN,
                        model_version=artifact.served_version,
                        threshold=artifact.info.threshold,
                    )
                )

    def _stop_watchers(self) -> None:
        self.watchers.stop()
        if self.control is not None:
            self.control.stop()
        if self._monitor is not None:
            self._monitor.stop()
        if self._auth is not None:
            self._auth.stop()
        self.metrics.close()

    def __enter__(self) -> Daemon:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
