"""Start a daemon process and wait for its READY=1 the way systemd does (NOTIFY_SOCKET).

Used by the demo, the benchmarks and the fault tests; deploy/ has the systemd unit for production.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hitveto.serving.sockets import free_tcp_endpoint


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonProcess:
    process: subprocess.Popen[bytes]
    ingest: str
    publish: str
    control: str
    metrics_port: int
    messages: tuple[str, ...]  # sd_notify messages received up to READY
    command: tuple[str, ...]
    log_path: Path | None = None

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM (the daemon drains), then wait; returns the exit code. The control socket's
        folder goes with it (restart() makes it again)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout_s)
        shutil.rmtree(_socket_folder(self.control), ignore_errors=True)
        return code

    def kill(self) -> int:
        """SIGKILL (no drain: crash drills, clean-up after a failed test), then as stop()."""
        self.process.kill()
        return self.stop()

    def rss_mb(self) -> float:
        """The process's resident memory now (MB), from /proc; NaN once it has exited."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except FileNotFoundError:
            return float("nan")
        kb = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(kb) / 1024

    def restart(self, timeout_s: float = 60.0) -> DaemonProcess:
        """Start the same command on the same endpoints once this process has ended, as systemd's
        Restart= does; returns the new process, READY."""
        self.process.wait()
        _socket_folder(self.control).mkdir(mode=0o700, exist_ok=True)
        process, messages = _launch(self.command, self.log_path, timeout_s)
        return dataclasses.replace(self, process=process, messages=messages)


LAUNCH_ATTEMPTS = 3


class DaemonExited(RuntimeError):
    """The daemon process ended before it said READY=1."""


def start_daemon(
    *settings: str,
    artifact: Path | None = None,
    timeout_s: float = 60.0,
    log_path: Path | None = None,
    metrics_port: int | None = None,
) -> DaemonProcess:
    """Launch `hitveto serve` on free loopback ports (metrics on `metrics_port` if given); returns
    once it says READY=1.

    settings are extra `section.key=value` overrides. Raises RuntimeError if it dies or times out.
    """
    for attempt in range(1, LAUNCH_ATTEMPTS + 1):
        # The ports are free when chosen, not when the daemon binds them: on a busy machine another
        # socket can take one in between (measured: the metrics port, once in ~30 suite runs).
        # New ports then, and the same start again; a daemon that fails for any other reason fails
        # LAUNCH_ATTEMPTS times and its error is raised.
        ingest, publish = free_tcp_endpoint(), free_tcp_endpoint()
        control = f"ipc://{tempfile.mkdtemp(prefix='hitveto-')}/control"  # owner-only Unix socket
        port = metrics_port or int(free_tcp_endpoint().rsplit(":", 1)[1])
        cmd = [
            sys.executable,
            "-m",
            "hitveto.cli",
            "serve",
            "--ingest",
            ingest,
            "--publish",
            publish,
            "--control",
            control,
            "--metrics-port",
            str(port),
            *[a for s in settings for a in ("--set", s)],
        ]
        if artifact is not None:
            cmd += ["--artifact", str(artifact)]
        try:
            process, messages = _launch(tuple(cmd), log_path, timeout_s)
            break
        except DaemonExited:
            shutil.rmtree(_socket_folder(control), ignore_errors=True)
            if attempt == LAUNCH_ATTEMPTS:
                raise
    return DaemonProcess(
        process=process,
        ingest=ingest,
        publish=publish,
        control=control,
        metrics_port=port,
        messages=messages,
        command=tuple(cmd),
        log_path=log_path,
    )


def _socket_folder(control: str) -> Path:
    """The owner-only temporary folder start_daemon made for an ipc:// control socket."""
    return Path(control.removeprefix("ipc://")).parent


def _launch(
    cmd: tuple[str, ...], log_path: Path | None, timeout_s: float
) -> tuple[subprocess.Popen[bytes], tuple[str, ...]]:
    """The process, once it said READY=1 on its notify socket, and what it said."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            log = open(log_path, "ab") if log_path else subprocess.DEVNULL
            proc = subprocess.Popen(
                cmd, env={**os.environ, "NOTIFY_SOCKET": path}, stdout=log, stderr=subprocess.STDOUT
            )
            return proc, _wait_ready(sock, proc, timeout_s)


def _wait_ready(sock: socket.socket, proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[str, ...]:
    end = time.monotonic() + timeout_s
    messages: list[str] = []
    sock.settimeout(0.2)
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise DaemonExited(f"daemon exited with code {proc.returncode} before READY")
        try:
            messages += sock.recv(4096).decode().splitlines()
        except TimeoutError:
            continue
        if "READY=1" in messages:
            return tuple(messages)
    proc.kill()
    raise RuntimeError(f"daemon not READY within {timeout_s} s")
