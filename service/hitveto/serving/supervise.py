"""Supervised worker threads: a crash is counted and the loop restarted; a loop that keeps crashing
stays down, and the daemon sees it (`Daemon.unhealthy`): not ready, no watchdog ping, exit 1, so
systemd restarts the process. No worker thread may die unnoticed while the daemon reports ready.

Each loop handles its own per-frame errors (a frame answered fail-open); this is the last line,
for what escapes a loop: a bug in the loop itself, or a library raising where it never did before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)
MAX_RESTARTS = 5  # crashes within WINDOW_S before a loop is given up
WINDOW_S = 60.0
RESTART_PAUSE_S = 0.05  # between a crash and the restart: a crash loop must not spin a core


class Supervised:
    """A daemon thread that runs `loop` until it returns; restarts it after a crash."""

    def __init__(
        self,
        name: str,
        loop: Callable[[], None],
        *,
        on_crash: Callable[[str], None] = lambda name: None,
        max_restarts: int = MAX_RESTARTS,
        window_s: float = WINDOW_S,
    ) -> None:
        self.name = name
        self._loop = loop
        self._on_crash = on_crash
        self._max_restarts = max_restarts
        self._window_s = window_s
        self.crashes = 0
        self.failed = False  # crashed too often: given up
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _main(self) -> None:
        _name_os_thread(self.name)
        recent: deque[float] = deque()
        while True:
            try:
                self._loop()
                return
            except Exception:
                self.crashes += 1
                log.exception("thread %s crashed (%d so far)", self.name, self.crashes)
                try:
                    self._on_crash(self.name)
                except Exception:
                    log.exception("counting the crash of %s failed", self.name)
            now = time.monotonic()
            recent.append(now)
            while recent and now - recent[0] > self._window_s:
                recent.popleft()
            if len(recent) > self._max_restarts:
                self.failed = True
                log.critical(
                    "thread %s crashed %d times in %.0f s: given up", self.name, len(recent), self._window_s
                )
                return
            time.sleep(RESTART_PAUSE_S)
            log.warning("restarting thread %s", self.name)


def _name_os_thread(name: str) -> None:
    """The thread's name where `top -H`, `ps -L` and /proc show it (Linux; at most 15 bytes): which
    thread uses the cores is then one command away."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass  # not Linux: the name is cosmetic
