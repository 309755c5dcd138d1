"""Optional CURVE authentication and encryption for the frame, verdict and control sockets.

The daemon holds a server keypair; clients must present a public key found in `clients_dir`
(ZAP allow-list). A refused client gets nothing and is counted (hitveto_auth_failures_total) by the
socket monitors, which see every refused handshake: an unknown key (ZAP says no) and a client
without CURVE (a mechanism mismatch, which never reaches ZAP).
Keys are ZMQ certificate files made by `hitveto keys DIR` (zmq.auth.create_certificates).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from hitveto.config import SecurityConfig
from hitveto.serving.supervise import Supervised

log = logging.getLogger(__name__)


REFUSED = (
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


class AllowList:
    """ZAP credentials provider: a client key is allowed if its public key file is in the folder."""

    def __init__(self, clients_dir: Path) -> None:
        self._keys = {public for public, _ in _certificates(clients_dir)}
        if not self._keys:
            raise ValueError(f"CURVE on, but no client public keys (*.key) in {clients_dir}")

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self._keys:
            return True
        log.warning("refused a client with unknown CURVE key %s", key.decode(errors="replace"))
        return False


def start_authenticator(context: zmq.Context[Any], cfg: SecurityConfig) -> ThreadAuthenticator | None:
    """Start ZAP for `context` when CURVE is on; None when off."""
    if not cfg.curve:
        return None
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve_callback("*", AllowList(Path(cfg.clients_dir)))
    return auth


class HandshakeMonitor:
    """Counts the refused handshakes of the secured sockets, from their ZMQ socket monitors.

    watch() each socket before the thread that owns it starts; then start() the monitor's thread.
    """

    def __init__(self, on_refused: Callable[[], None], on_crash: Callable[[str], None]) -> None:
        self._on_refused = on_refused
        self._monitors: list[zmq.Socket[Any]] = []
        self._stop = threading.Event()
        self.thread = Supervised("hitveto-handshakes", self._run, on_crash=on_crash)

    def watch(self, sock: zmq.Socket[Any]) -> None:
        self._monitors.append(sock.get_monitor_socket(REFUSED))

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(2.0)
        for monitor in self._monitors:
            monitor.close(linger=0)

    def _run(self) -> None:
        poller = zmq.Poller()
        for monitor in self._monitors:
            poller.register(monitor, zmq.POLLIN)
        while not self._stop.is_set():
            for monitor, _ in poller.poll(100):
                event = recv_monitor_message(monitor)
                if event["event"] & REFUSED:
                    self._on_refused()
                    log.warning(
                        "refused a handshake from %s (event %#x, error %s)",
                        event.get("endpoint", b"?"),
                        event["event"],
                        event["value"],
                    )


def server_options(cfg: SecurityConfig) -> dict[int, int | bytes]:
    """Socket options that make a bound socket a CURVE server ({} when CURVE is off)."""
    if not cfg.curve:
        return {}
    public, secret = zmq.auth.load_certificate(cfg.server_secret_file)
    if secret is None:
        raise ValueError(f"{cfg.server_secret_file}: not a secret key file (*.key_secret)")
    return {zmq.CURVE_SERVER: 1, zmq.CURVE_PUBLICKEY: public, zmq.CURVE_SECRETKEY: secret}


def create_keys(folder: Path) -> dict[str, Path]:
    """A server and a client keypair in `folder` (clients/ holds the allowed public keys)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "clients").mkdir(exist_ok=True)
    server_public, server_secret = zmq.auth.create_certificates(folder, "server")
    client_public, client_secret = zmq.auth.create_certificates(folder, "client")
    allowed = folder / "clients" / Path(client_public).name
    allowed.write_bytes(Path(client_public).read_bytes())
    return {
        "server_public": Path(server_public),
        "server_secret": Path(server_secret),
        "client_public": Path(client_public),
        "client_secret": Path(client_secret),
        "clients_dir": folder / "clients",
    }


def _certificates(folder: Path) -> Iterator[tuple[bytes, bytes | None]]:
    for path in sorted(Path(folder).glob("*.key")):
        yield zmq.auth.load_certificate(path)
