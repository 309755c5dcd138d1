"""What the tests share that is not a fixture: the small test layout, artifacts built in-process, a
daemon on loopback ports and clients for it, metric samples, and a real Prometheus.

Test modules import from here (`from helpers import ...`: pytest puts tests/ first on sys.path, as
Python does for tests/fuzz_ingest.py run as a script) and take fixtures from conftest.py; never from
one another.
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hitveto_client.protocol import EventKey
from hitveto_client.veto import VetoClient

RAW = (4, 20, 30)  # a small stand-in raw stack: the wire and the daemon do not care about size
ROI = (24, 24)
ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"


# Artifacts -----------------------------------------------------------------------------------------


def tiny_roi_index() -> np.ndarray:
    """Region = a 24x24 window spanning two of the four panels, with a 2-pixel gap of -1."""
    index = np.full(ROI, -1, dtype=np.int64)
    flat = np.arange(np.prod(RAW)).reshape(RAW)
    index[:11, :] = flat[0, 5:16, 3:27]
    index[13:, :] = flat[1, 5:16, 3:27]
    return index


def make_artifact(
    path: Path,
    *,
    threshold: float = 0.5,
    version: str = "test-1",
    bias: float = 0.0,
    detector: str = "cspad",
    roi_index: np.ndarray | None = None,
    raw_shape: tuple[int, ...] = RAW,
    profile: dict | None = None,
) -> Path:
    """A scripted, untrained CompactCNN artifact; `bias` shifts its logits (large: all hits).

    By default it takes the small test layout; pass a roi_index and raw_shape for real CSPAD frames.
    """
    import torch

    from hitveto.models import artifact, networks

    index = tiny_roi_index() if roi_index is None else roi_index
    torch.manual_seed(0)
    net = networks.build("compact", index.shape[0], adu_per_photon=10.0).eval()
    with torch.no_grad():
        net.net.classify.bias.fill_(bias)
    scripted = torch.jit.freeze(torch.jit.script(net))
    info = artifact.ModelInfo(
        version=version,
        architecture="compact",
        detector=detector,
        raw_shape=raw_shape,
        roi_shape=index.shape,
        adu_per_photon=10.0,
        threshold=threshold,
        profile=profile or {},
    )
    return artifact.save(path, scripted, info, index)


CLASSES = {"multiple": 0.5, "ice": 0.3}  # the class model's verdict classes and their thresholds


def class_artifact(path: Path, *, threshold: float = 0.5, profile: dict | None = None) -> Path:
    """A model with verdict classes whose outputs the frame sets: the region's first row, in
    percent, is P(hit), then P(multiple), P(ice) (clipped to [0, 1]; a negative pixel gives NaN)."""
    import torch

    from hitveto.models import artifact

    class PixelClasses(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            row = x[:, 0, :3].float() / 100.0
            return torch.where(row < 0, torch.full_like(row, float("nan")), row.clamp(0.0, 1.0))

    info = artifact.ModelInfo(
        version="classes-1",
        architecture="pixel-classes",
        detector="cspad",
        raw_shape=RAW,
        roi_shape=ROI,
        adu_per_photon=10.0,
        threshold=threshold,
        classes=tuple(CLASSES),
        class_thresholds=dict(CLASSES),
        profile=profile or {},
    )
    return artifact.save(path, torch.jit.script(PixelClasses()), info, tiny_roi_index())


def median_threshold_artifact(path: Path, images: list[np.ndarray], make=make_artifact, **kw) -> Path:
    """An artifact (`make`'s) whose threshold is the median score of `images`: about half hits,
    half misses. Its training profile (drift) is that of `images`, as if it had been trained on them.
    """
    from hitveto.models import artifact, stream_profile
    from hitveto.models.engine import Engine
    from hitveto.models.preprocess import region

    probe = artifact.read(make(path, **kw))
    regions = [region(i, probe.spec) for i in images]
    scores = Engine(probe, device="cpu").infer(regions)
    threshold = float(np.median(scores))
    prof = stream_profile.profile(stream_profile.frame_statistics(regions, scores, threshold, probe.spec))
    return make(path, threshold=threshold, profile=prof.to_dict(), **kw)


@functools.cache
def simulated_regions(
    seed: int, n: int, preset: str = "lysozyme", distance_m: float | None = None
) -> tuple[np.ndarray, ...]:
    """n simulated 350x350 CSPAD regions (ADU) of a preset, optionally at another detector distance
    (made once per session)."""
    from hitveto.sim.run import regions

    return tuple(regions(preset, seed=seed, n=n, distance_m=distance_m))


# A daemon in this process, and clients for it ------------------------------------------------------


def loopback_config(artifact_path: Path, **overrides):
    """Daemon config on free loopback ports. Overload is off unless a test asks for it (a small
    batch.max_queue): a busy CI machine must not turn slowness into keeps in tests of other things.
    The audit sample and the shadow peakfinder8 are off too, unless asked for (`audit.fraction`,
    `shadow.workers`): on a machine with spare cores the shadow would start by itself."""
    from hitveto import config

    values = {
        "model.artifact": str(artifact_path),
        "model.device": "cpu",
        "batch.latency_budget_ms": 60_000.0,
        "batch.max_queue": 100_000,
        "ingest.endpoint": "tcp://127.0.0.1:*",
        "publish.endpoint": "tcp://127.0.0.1:*",
        "metrics.port": 0,
        "model.threads": 1,
        "audit.fraction": 0.0,
        "shadow.workers": 0,
        "control.endpoint": f"ipc://{tempfile.mkdtemp(prefix='hv-')}/control",
    }
    values.update(overrides)
    return config.load(overrides=values)


@contextlib.contextmanager
def running_daemon(artifact_path: Path, **overrides) -> Iterator:
    from prometheus_client import CollectorRegistry

    from hitveto.serving.daemon import Daemon

    with Daemon(loopback_config(artifact_path, **overrides), registry=CollectorRegistry()) as d:
        yield d


def frames(n: int, shape=RAW, seed: int = 0):
    """n (key, Poisson image) pairs of run 1, pulse ids 0..n-1."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        yield EventKey(run=1, pulse_id=i, timestamp=1000 + i), rng.poisson(5, shape).astype(np.int16)


def stream(daemon, items, **client_kw):
    """Send (key, image) pairs as fast as they come, then wait for every decision."""
    with VetoClient(daemon.endpoints.ingest, daemon.endpoints.publish, **client_kw) as veto:
        veto.wait_subscribed()
        decisions = []
        for key, image in items:
            veto.send(key, image)
            decisions += veto.poll()
        decisions += veto.flush(timeout_s=10)
        return veto.counts, decisions


def paced_stream(daemon, images, rate_hz: float, run: int = 1):
    """Send images at about rate_hz (as a DAQ would), then wait for every decision."""
    with VetoClient(daemon.endpoints.ingest, daemon.endpoints.publish) as veto:
        veto.wait_subscribed()
        start = time.monotonic()
        for i, image in enumerate(images):
            time.sleep(max(0.0, start + i / rate_hz - time.monotonic()))
            veto.send(EventKey(run=run, pulse_id=i), image)
            veto.poll()
        veto.flush(timeout_s=10)
        return veto.counts


def sample(daemon, name: str, **labels: str) -> float:
    """A sample of the daemon's metrics registry, 0 where it has none yet (prometheus-client's
    public get_sample_value)."""
    return daemon.metrics.registry.get_sample_value(name, labels) or 0.0


# A daemon process (serving.launcher) and the hit writer in this process ----------------------------


def write_through(daemon, items, out_dir: Path, rate_hz: float):
    """Stream hitwriter Frames at rate_hz through a launched daemon (a client deadline of 500 ms)
    into a CXI writer in out_dir; returns the stream summary and the files written."""
    from hitveto_client.cxi import CxiWriter
    from hitveto_client.hitwriter import stream as write_stream

    with (
        VetoClient(daemon.ingest, daemon.publish, deadline_ms=500) as veto,
        CxiWriter(out_dir) as writer,
    ):
        veto.wait_subscribed()
        summary = write_stream(items, veto, writer, rate_hz=rate_hz)
    return summary, writer.files


def start_writer(listen: str, daemon, out: Path, *extra: str) -> subprocess.Popen:
    """`hitveto write` as its own process: frames pushed to `listen`, the daemon's verdicts, files
    in `out`; returned once it listens (its signals handled). Its stdout and stderr are pipes."""
    cmd = [sys.executable, "-m", "hitveto.cli", "write", "--listen", listen, "--out", str(out)]
    cmd += ["--frames", daemon.endpoints.ingest, "--verdicts", daemon.endpoints.publish, *extra]
    writer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in writer.stderr:
        if "listening for frames" in line:
            return writer
    raise AssertionError(f"writer exited: {writer.wait()}")


def run_benchmark(name: str, *args: str, out: Path, timeout_s: float) -> dict:
    """benchmarks/<name>.py run as a user runs it (from the repository root) with `--out out`; it
    must succeed. Returns the result it writes, out/<name>.json."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args, "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout_s)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / f"{name}.json").read_text())


# A real Prometheus scraping daemons ----------------------------------------------------------------


@contextlib.contextmanager
def prometheus(tmp_path: Path, *target_ports: int, rules: Path = DEPLOY / "prometheus" / "hitveto.rules.yml"):
    """The shipped Prometheus config (rules, by default the shipped ones), scraping target_ports
    every second; yields its base URL."""
    import yaml

    from hitveto.serving.sockets import free_tcp_endpoint

    port = int(free_tcp_endpoint().rsplit(":", 1)[1])
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules)]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{p}" for p in target_ports]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prom.log").open("w"),
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def query(base: str, expr: str) -> dict:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", (expr, body)
    return body["data"]


def wait_for(base: str, expr: str, timeout_s: float = 60.0) -> None:
    """Wait until Prometheus itself answers expr with data (an external system: no other signal)."""
    import pytest

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        with contextlib.suppress(OSError):
            if query(base, expr)["result"]:
                return
        time.sleep(0.5)
    pytest.fail(f"Prometheus never answered {expr!r}")


def rules_firing_at_once(tmp_path: Path) -> Path:
    """The shipped rules without their `for:` waits (promtool's tests check those)."""
    import yaml

    groups = yaml.safe_load((DEPLOY / "prometheus" / "hitveto.rules.yml").read_text())
    for group in groups["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    path = tmp_path / "rules-at-once.yml"
    path.write_text(yaml.safe_dump(groups))
    return path


def firing(base: str, alertname: str) -> set[str]:
    """Instances (host:port) on which the alert fires now."""
    result = query(base, f'ALERTS{{alertname="{alertname}", alertstate="firing"}}')["result"]
    return {r["metric"]["instance"] for r in result}


@contextlib.contextmanager
def daemons_under_alerts(tmp_path: Path, artifacts: list[Path], **overrides) -> Iterator[tuple[list, str]]:
    """A daemon per artifact (running_daemon, the same overrides) and a real Prometheus scraping
    them all with the shipped rules firing at once; yields the daemons and Prometheus's base URL."""
    with contextlib.ExitStack() as stack:
        daemons = [stack.enter_context(running_daemon(a, **overrides)) for a in artifacts]
        ports = [d.endpoints.metrics_port for d in daemons]
        prom = stack.enter_context(prometheus(tmp_path, *ports, rules=rules_firing_at_once(tmp_path)))
        yield daemons, prom
