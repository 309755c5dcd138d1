"""The control channel: a REP socket with a closed set of commands (status, stats, reload, learn, calib).

Request: msgpack map {"command": str, "params": map}. Reply: {"ok": true, "result": ...} or
{"ok": false, "error": str}; an unknown command gets an error reply. The socket is a Unix socket
file with owner-only permissions by default, or TCP with CURVE (docs/OPERATIONS.md).
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import msgpack
import zmq

from hitveto.serving.supervise import Supervised

log = logging.getLogger(__name__)


class Command(enum.StrEnum):
    STATUS = "status"
    STATS = "stats"
    RELOAD = "reload"
    LEARN = "learn"
    CALIB = "calib"


class Controlled(Protocol):
    def status(self) -> dict[str, Any]: ...
    def stats(self) -> dict[str, Any]: ...
    def reload(self, artifact: str | None = None) -> dict[str, Any]: ...
    def learn(self, on: bool) -> dict[str, Any]: ...
    def calib(self, constants: str) -> dict[str, Any]: ...


HANDLERS: dict[Command, Callable[[Controlled, Mapping[str, Any]], dict[str, Any]]] = {
    Command.STATUS: lambda d, _: d.status(),
    Command.STATS: lambda d, _: d.stats(),
    Command.RELOAD: lambda d, p: d.reload(p.get("artifact")),
    Command.LEARN: lambda d, p: d.learn(bool(p.get("on", True))),
    Command.CALIB: lambda d, p: d.calib(str(p["constants"])),
}


def handle(target: Controlled, raw: bytes) -> bytes:
    """One request in, one reply out; never raises."""
    try:
        req = msgpack.unpackb(raw)
        command = Command(req["command"])
        params = req.get("params") or {}
        if not isinstance(params, Mapping):
            raise TypeError("params must be a map")
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        return _packed({"ok": False, "error": f"bad request: {type(exc).__name__}: {exc}"})
    try:
        return _packed({"ok": True, "result": HANDLERS[command](target, params)})
    except Exception as exc:  # a failed command must not take the control thread down
        log.warning("control %s failed: %s", command.value, exc)
        return _packed({"ok": False, "error": str(exc)})


def _packed(reply: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(reply)
    return packed


class ControlServer:
    """Serves the control socket from one thread until stop() is called."""

    def __init__(
        self,
        sock: zmq.Socket[Any],
        target: Controlled,
        *,
        on_crash: Callable[[str], None] = lambda name: None,
    ) -> None:
        self._sock = sock
        self._target = target
        self._stop = threading.Event()
        self.thread = Supervised("hitveto-control", self._run, on_crash=on_crash)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._sock.poll(100, zmq.POLLIN):
                self._sock.send(handle(self._target, self._sock.recv()))
        self._sock.close(linger=0)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(2.0)


def request(endpoint: str, command: str, timeout_s: float = 10.0, **params: Any) -> dict[str, Any]:
    """Send one control command and return the reply map; TimeoutError names endpoint and wait."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send(msgpack.packb({"command": command, "params": params}))
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise TimeoutError(f"no reply from control socket {endpoint} within {timeout_s} s")
        reply: dict[str, Any] = msgpack.unpackb(sock.recv())
        return reply
    finally:
        sock.close()
