"""A daemon's life under systemd (Type=notify, WatchdogSec): READY once serving, WATCHDOG pings while
every thread is up, RELOADING on SIGHUP, STOPPING on SIGTERM, and a restart asked for (exit 1) when
a thread stays down, since a daemon that cannot judge must not look alive."""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING

from hitveto.models.artifact import ArtifactError
from hitveto.serving.notify import notify, watchdog_interval_s

if TYPE_CHECKING:
    from hitveto.serving.daemon import Daemon

log = logging.getLogger(__name__)


def serve_with_signals(daemon: Daemon) -> None:
    """serve() with SIGTERM/SIGINT asking for the stop and SIGHUP for a reload (main thread only)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: daemon.stop_requested.set())
    signal.signal(signal.SIGHUP, lambda *_: daemon.reload_requested.set())
    serve(daemon)


def serve(daemon: Daemon) -> None:
    """Until stop_requested is set, ping the watchdog while every thread is up and reload when asked;
    then drain and stop. A thread that stays down ends it too, with exit_code 1."""
    interval = min(watchdog_interval_s() or 1.0, 1.0)
    while not daemon.stop_requested.wait(interval):
        if down := daemon.unhealthy():
            _give_up(daemon, down)
            break
        if daemon.reload_requested.is_set():
            daemon.reload_requested.clear()
            _reload(daemon)
        notify("WATCHDOG=1")
        notify(f"STATUS={daemon.status_line()}")
    daemon.shutdown()


def _give_up(daemon: Daemon, down: list[str]) -> None:
    log.critical("worker threads down: %s; not ready, stopping (exit 1) for a restart", ", ".join(down))
    daemon.metrics.ready.set(0)
    notify(f"STATUS=worker threads down: {', '.join(down)}; stopping")
    daemon.exit_code = 1


def _reload(daemon: Daemon) -> None:
    notify("RELOADING=1")
    try:
        daemon.reload()
    except (ArtifactError, RuntimeError, OSError) as exc:
        log.error("reload refused, still serving %s: %s", daemon.artifact.served_version, exc)
    notify("READY=1")
