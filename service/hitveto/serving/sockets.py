"""Socket factory: bind/connect with explicit HWM and LINGER, endpoints read back after binding."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import zmq


def bind(
    context: zmq.Context[Any],
    kind: int,
    endpoint: str,
    *,
    hwm: int | None = None,
    linger_ms: int = 0,
    options: dict[int, int | bytes] | None = None,
) -> tuple[zmq.Socket[Any], str]:
    """A bound socket and its real endpoint (tcp://127.0.0.1:* resolves to the port chosen)."""
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    if hwm is not None:
        sock.setsockopt(zmq.RCVHWM if kind in (zmq.PULL, zmq.SUB) else zmq.SNDHWM, hwm)
    for option, value in (options or {}).items():
        sock.setsockopt(option, value)
    sock.bind(endpoint)
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def bind_private_ipc(
    context: zmq.Context[Any], kind: int, endpoint: str, *, mode: int = 0o600
) -> tuple[zmq.Socket[Any], str]:
    """A socket bound to a Unix socket file that only its owner (and group, by `mode`) may
    connect to: created under a strict umask, so that it is never open to others, then `mode`."""
    path = Path(endpoint.removeprefix("ipc://"))
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    old = os.umask(0o177)
    try:
        sock, endpoint = bind(context, kind, endpoint)
    finally:
        os.umask(old)
    os.chmod(path, mode)
    return sock, endpoint


def free_tcp_endpoint(host: str = "127.0.0.1") -> str:
    """A loopback endpoint whose port was free a moment ago (for launching daemons in other processes)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return f"tcp://{host}:{s.getsockname()[1]}"


def readable(sock: zmq.Socket[Any]) -> bool:
    """A message waits (ZMQ_EVENTS): cheaper than a Poller when asked for every message."""
    return bool(cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)
