"""systemd sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET, a no-op when unset."""

from __future__ import annotations

import os
import socket


def notify(message: str, env: dict[str, str] | None = None) -> bool:
    """Send e.g. "READY=1" or "WATCHDOG=1"; True when a socket was there to take it."""
    path = (env if env is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # '@' = Linux abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError:
            return False
    return True


def watchdog_interval_s(env: dict[str, str] | None = None) -> float | None:
    """Half of WATCHDOG_USEC (systemd's advice), or None when the watchdog is off."""
    usec = (env if env is not None else os.environ).get("WATCHDOG_USEC", "")
    return int(usec) / 2e6 if usec.isdigit() else None
