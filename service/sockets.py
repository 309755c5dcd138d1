"""Socket factory: bind/connect with explicit HWM and LINGER, endpoints read back after binding."""

from __future__ import annotations

import zmq


def bind(context: zmq.Context, kind: int, endpoint: str, *, hwm: int | None = None,
         linger_ms: int = 0, options: dict[int, int | bytes] | None = None) -> tuple[zmq.Socket, str]:
    """A bound socket and its real endpoint (tcp://127.0.0.1:* resolves to the port chosen)."""
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    if hwm is not None:
        sock.setsockopt(zmq.RCVHWM if kind in (zmq.PULL, zmq.SUB) else zmq.SNDHWM, hwm)
    for option, value in (options or {}).items():
        sock.setsockopt(option, value)
    sock.bind(endpoint)
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def free_tcp_endpoint(host: str = "127.0.0.1") -> str:
    """A loopback endpoint whose port was free a moment ago (for launching daemons in other processes)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return f"tcp://{host}:{s.getsockname()[1]}"
