"""CPU cost of the DAQ-side client per frame: VetoClient.send + poll, measured in the client thread.

A real daemon (its own process) answers; only the client thread's CPU time (time.thread_time) is
counted, so the figure is what embedding the client costs a DAQ writer, not the daemon's work.

    python benchmarks/client_overhead.py [--frames 3000]
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hitveto.serving.launcher import start_daemon
from hitveto_client.protocol import EventKey

from common import SHAPES, parser, poisson_images, record, subscribed


def cost(daemon, shape: tuple[int, ...], n: int, rate_hz: float) -> dict:
    (image,) = poisson_images(shape, 1)
    send_cpu, poll_cpu = [], []
    with subscribed(daemon, deadline_ms=2000, max_pending=100_000) as veto:
        t0 = time.monotonic()
        for i in range(n):
            while time.monotonic() < t0 + i / rate_hz:
                pass  # pacing: not counted below
            c0 = time.thread_time()
            veto.send(EventKey(run=1, pulse_id=i), image)
            c1 = time.thread_time()
            veto.poll()
            c2 = time.thread_time()
            send_cpu.append(c1 - c0)
            poll_cpu.append(c2 - c1)
        veto.flush()
        decided = veto.counts.decided
    return {
        "frames": n,
        "decided": decided,
        "send_us_median": float(np.median(send_cpu) * 1e6),
        "poll_us_mean": float(np.mean(poll_cpu) * 1e6),
        "total_us_per_frame": float((np.sum(send_cpu) + np.sum(poll_cpu)) / n * 1e6),
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--frames", type=int, default=3000)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    daemon = start_daemon("model.device=cpu", "batch.max_batch=64", "batch.max_delay_ms=5")
    rows = {}
    try:
        for kind, rate in (("region", 500.0), ("full", 120.0)):
            n = args.frames if kind == "region" else args.frames // 5
            rows[kind] = cost(daemon, SHAPES[kind], n, rate)
            r = rows[kind]
            print(
                f"{kind:6s} {SHAPES[kind]} at {rate:.0f}/s: send {r['send_us_median']:.1f} us (median), "
                f"poll {r['poll_us_mean']:.1f} us (mean), {r['total_us_per_frame']:.1f} us CPU per frame "
                f"in the client thread; {r['decided']}/{r['frames']} decided"
            )
    finally:
        daemon.stop()
    record(args.out / "client-overhead.json", rows)


if __name__ == "__main__":
    main()
