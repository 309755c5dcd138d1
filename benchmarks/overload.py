"""Overload: a daemon offered 5x what it can judge, then a nominal load again.

    python benchmarks/overload.py                         # 10 s at 0.5x, 60 s at 5x, 30 s at 0.5x
    python benchmarks/overload.py --quick                 # 3 s / 8 s / 5 s (the test's version)
    python benchmarks/overload.py --watchers              # with a shadow peakfinder8 and drift on

The daemon serves the study's CNN shape (untrained: the cost is what matters; about 10 ms a frame
on one core) on 350x350 region frames, so that 5x its capacity is a rate this machine can still
send. Its capacity C is its engine's rate at full batches, measured first in this process. Three
phases:

1. nominal: 0.5 C, every frame judged; its largest RSS is the baseline;
2. overload: 5 C offered; the daemon keeps what it cannot judge in time (`overload`), and its
   resident memory may grow over the baseline by at most the frames its config lets it hold
   (service/hitveto/serving/intake.py INTERNAL_HWM) plus the model's working set at a full batch;
3. recovery: 0.5 C again; every frame judged again by the end.

Each second records the offered and judged rates, fallback keeps, the judged frames' p99 latency and
the daemon's RSS. Prints a table, saves JSON and a PNG; exits non-zero if a frame was lost or the
memory bound was broken. The audit sample is on (its default, 2 % of misses); `--watchers` adds a
shadow peakfinder8 process and the drift monitor (docs/TRUST.md), whose work must not cost a frame.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from hitveto.serving.launcher import DaemonProcess

from common import Pacer, Tally, figure, parser, poisson_images, record, serving, timed

SHAPE = (350, 350)
SETTINGS = {"ingest.rcvhwm": 200, "batch.max_queue": 256, "ingest.workers": 2, "batch.max_batch": 8}


def seed_artifact(folder: Path) -> Path:
    """The study's CNN shape on the CSPAD region, untrained, as an artifact."""
    import torch

    from hitveto.io import geometry
    from hitveto.models import artifact, networks

    net = networks.build("seed", SHAPE[0], adu_per_photon=35.0).eval()
    scripted = torch.jit.freeze(torch.jit.script(net))
    info = artifact.ModelInfo(
        version="seed-untrained",
        architecture="seed",
        detector="cspad",
        raw_shape=geometry.RAW_SHAPE,
        roi_shape=SHAPE,
        adu_per_photon=35.0,
        threshold=0.5,
    )
    return artifact.save(folder / "seed.pt", scripted, info, geometry.roi_index(SHAPE[0]))


def engine_capacity(path: Path) -> tuple[float, float]:
    """(frames/s of one inference thread at full batches, MB its model and activations take),
    measured in this process as the daemon's engine runs."""
    from hitveto.models import artifact
    from hitveto.models.engine import Engine

    before = peak_rss_mb(reset=True)
    loaded = artifact.read(path)
    engine = Engine(loaded, device="cpu", max_batch=SETTINGS["batch.max_batch"], threads=1)
    batch = poisson_images(SHAPE, 1, seed=1) * SETTINGS["batch.max_batch"]
    return len(batch) / timed(engine.infer, [batch], repeat=5), peak_rss_mb() - before


def peak_rss_mb(reset: bool = False) -> float:
    """This process's peak resident memory (VmHWM); `reset` first brings the peak down to the
    current RSS, so that an earlier peak (building the artifact) cannot hide the engine's working
    set (it once read 0 MB and made the memory bound too tight to hold)."""
    if reset:
        Path("/proc/self/clear_refs").write_text("5")
    status = Path("/proc/self/status").read_text()
    return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:"))) / 1024


def memory_bound_mb(frame_bytes: int) -> float:
    """What the config lets the daemon hold in frames (service/hitveto/serving/intake.py INTERNAL_HWM)."""
    from hitveto.serving.intake import INTERNAL_HWM

    frames = (
        SETTINGS["ingest.rcvhwm"]
        + 2 * INTERNAL_HWM * SETTINGS["ingest.workers"]
        + SETTINGS["batch.max_queue"]
    )
    return frames * frame_bytes / 2**20


def drive(pacer: Pacer, daemon: DaemonProcess, rate_hz: float, seconds: float, phase: str) -> list[dict]:
    """Send for `seconds` at rate_hz; one record per second."""
    windows = []

    def close(_t: float, span: float, w: Tally) -> None:
        windows.append(
            {
                "phase": phase,
                "offered_hz": w.sent / span,
                "judged_hz": w.judged / span,
                "fallback": w.kept,
                **w.latency_ms(99, ndigits=1),
                "rss_mb": round(daemon.rss_mb(), 1),
            }
        )

    pacer.run(rate_hz, seconds, close)
    return windows


def watched(path: Path, images: list[np.ndarray]) -> Path:
    """The artifact with its threshold at the median score of `images` (half misses, for the
    audit sample to pick from) and their training profile (for the drift monitor)."""
    from hitveto.models import artifact, stream_profile
    from hitveto.models.engine import Engine

    art = artifact.read(path)
    scores = Engine(art, device="cpu").infer(images)
    threshold = float(np.median(scores))
    stats = stream_profile.frame_statistics(images, scores, threshold, art.spec)
    return artifact.rewrite(art, path, threshold=threshold, profile=stream_profile.profile(stats).to_dict())


def scrape(port: int) -> dict[str, float]:
    """Sample name (with labels) -> value from a daemon's /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        s.name + str(sorted(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def run(probe_s: float, overload_s: float, recover_s: float, out: Path, watchers: bool) -> dict:
    images = poisson_images(SHAPE, 16)
    with tempfile.TemporaryDirectory() as tmp:
        path = seed_artifact(Path(tmp))
        capacity, working_set = engine_capacity(path)
        print(
            f"engine: {capacity:.0f} frames/s at batch {SETTINGS['batch.max_batch']}, "
            f"{working_set:.0f} MB model and activations",
            flush=True,
        )
        sets = [f"{k}={v}" for k, v in SETTINGS.items()] + ["model.device=cpu", "model.threads=1"]
        if watchers:
            path = watched(path, images)
            sets += ["shadow.workers=1", "drift.min_frames=20"]
        client = {"deadline_ms": 3000, "max_pending": 100_000}
        with serving(*sets, artifact=path, log_path=out / "overload-daemon.log", client=client) as (
            daemon,
            veto,
        ):
            pacer = Pacer(veto, images)
            nominal = drive(pacer, daemon, 0.5 * capacity, probe_s, "nominal")
            over = drive(pacer, daemon, 5 * capacity, overload_s, "overload")
            calm = drive(pacer, daemon, 0.5 * capacity, recover_s, "recovery")
            veto.flush()
            counts = veto.counts
            metrics = scrape(daemon.metrics_port)
    watch = {
        "watchers": watchers,
        "shadowed": sum(v for k, v in metrics.items() if k.startswith("hitveto_shadow_frames_total")),
        "drift_measured": metrics.get("hitveto_drift_window_frames[]", 0.0),
    }
    result = summary(nominal, over, calm, counts, capacity, working_set, images[0].nbytes, watch)
    for w in result["windows"]:
        print(
            f"{w['phase']:9s} offered {w['offered_hz']:7.1f}/s  judged {w['judged_hz']:6.1f}/s  "
            f"fallback {w['fallback']:5d}  p99 {w['p99_ms']:7.1f} ms  RSS {w['rss_mb']:7.1f} MB"
        )
    return result


def summary(
    nominal: list[dict],
    over: list[dict],
    calm: list[dict],
    counts,
    capacity: float,
    working_set: float,
    frame_bytes: int,
    watch: dict,
) -> dict:
    windows = nominal + over + calm
    rss_nominal = max(w["rss_mb"] for w in nominal)
    bound = memory_bound_mb(frame_bytes) + working_set
    result = {
        "capacity_hz": round(capacity, 1),
        "offered_overload_hz": round(float(np.median([w["offered_hz"] for w in over])), 1),
        "judged_overload_hz": round(float(np.median([w["judged_hz"] for w in over])), 1),
        "p99_overload_ms": round(float(np.nanmax([w["p99_ms"] for w in over])), 1),
        "sent": counts.sent,
        "decided": counts.decided,
        "lost": counts.sent - counts.decided,
        "kept_by_reason": {str(r): v for r, v in counts.kept_by_reason.items()},
        "rss_nominal_mb": rss_nominal,
        "rss_max_mb": max(w["rss_mb"] for w in windows),
        "memory_bound_mb": round(bound, 1),
        "frames_bound_mb": round(bound - working_set, 1),
        "working_set_mb": round(working_set, 1),
        "settings": SETTINGS,
        "windows": windows,
        "recovered": calm[-1]["fallback"] == 0 if calm else False,
        "audited": counts.audited,
        **watch,
    }
    result["memory_ok"] = result["rss_max_mb"] - rss_nominal <= bound
    return result


def plot(result: dict, path: Path) -> None:
    w = result["windows"]
    t = np.arange(len(w))
    with figure(path, 3, figsize=(14, 3.8)) as (fig, (a, b, c)):
        a.plot(t, [x["offered_hz"] for x in w], label="offered")
        a.plot(t, [x["judged_hz"] for x in w], label="judged")
        a.plot(t, [x["fallback"] for x in w], label="kept by fallback")
        a.set(xlabel="time (s)", ylabel="frames/s", title="rates")
        a.legend()
        b.plot(t, [x["p99_ms"] for x in w], "o-")
        b.set(xlabel="time (s)", ylabel="ms", title="p99 latency of judged frames")
        c.plot(t, [x["rss_mb"] for x in w], "o-", label="daemon RSS")
        c.axhline(result["rss_nominal_mb"] + result["memory_bound_mb"], color="r", ls="--", label="bound")
        c.set(xlabel="time (s)", ylabel="MB", title="memory")
        c.legend()
        for ax in (a, b, c):
            for x in np.flatnonzero(
                np.diff([["nominal", "overload", "recovery"].index(v["phase"]) for v in w])
            ):
                ax.axvline(x + 0.5, color="grey", lw=0.8)
        fig.suptitle(
            f"overload: capacity {result['capacity_hz']:.0f}/s, offered "
            f"{result['offered_overload_hz']:.0f}/s, {result['sent']} sent, {result['lost']} lost"
        )


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--quick", action="store_true", help="3 s nominal, 8 s overload, 5 s recovery")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--watchers", action="store_true", help="shadow peakfinder8 and drift monitor on")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(*((3, 8, 5) if args.quick else (10, 60, 30)), args.out, args.watchers)
    record(args.out / "overload.json", result, lambda png: plot(result, png))
    ok = result["lost"] == 0 and result["memory_ok"] and result["recovered"]
    print(
        f"overload {'OK' if ok else 'FAILED'}: capacity {result['capacity_hz']}/s, offered "
        f"{result['offered_overload_hz']}/s, {result['sent']} sent, {result['lost']} lost, kept "
        f"{result['kept_by_reason']}, RSS {result['rss_nominal_mb']:.0f} -> "
        f"max {result['rss_max_mb']:.0f} MB "
        f"(bound +{result['memory_bound_mb']:.0f} MB), recovered: {result['recovered']}; "
        f"{result['audited']} audited, {result['shadowed']:.0f} shadowed, "
        f"{result['drift_measured']:.0f} in the drift window"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
