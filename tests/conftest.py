"""Shared fixtures: a small artifact built in-process and a daemon on loopback ports."""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

RAW = (4, 20, 30)   # a small stand-in raw stack: the wire and the daemon do not care about size
ROI = (24, 24)


def tiny_roi_index() -> np.ndarray:
    """Region = a 24x24 window spanning two of the four panels, with a 2-pixel gap of -1."""
    index = np.full(ROI, -1, dtype=np.int64)
    flat = np.arange(np.prod(RAW)).reshape(RAW)
    index[:11, :] = flat[0, 5:16, 3:27]
    index[13:, :] = flat[1, 5:16, 3:27]
    return index


def make_artifact(path: Path, *, threshold: float = 0.5, version: str = "test-1",
                  bias: float = 0.0, detector: str = "cspad", roi_index: np.ndarray | None = None,
                  raw_shape: tuple[int, ...] = RAW, profile: dict | None = None) -> Path:
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
    info = artifact.ModelInfo(version=version, architecture="compact", detector=detector,
                              raw_shape=raw_shape, roi_shape=index.shape, adu_per_photon=10.0,
                              threshold=threshold, profile=profile or {})
    return artifact.save(path, scripted, info, index)


def median_threshold_artifact(path: Path, images: list[np.ndarray], **kw) -> Path:
    """An artifact whose threshold is the median score of `images`: about half hits, half misses.

    Its training profile (drift) is that of `images`, as if it had been trained on them.
    """
    from hitveto.models import artifact
    from hitveto.models import stream_profile
    from hitveto.models.engine import Engine
    from hitveto.models.preprocess import region
    probe = artifact.read(make_artifact(path, **kw))
    regions = [region(i, probe.spec) for i in images]
    scores = Engine(probe, device="cpu").infer(regions)
    threshold = float(np.median(scores))
    prof = stream_profile.profile(stream_profile.frame_statistics(regions, scores, threshold, probe.spec))
    return make_artifact(path, threshold=threshold, profile=prof.to_dict(), **kw)


@pytest.fixture(autouse=True, scope="session")
def no_leftover_mpich_segments():
    """psana's MPI must not leave /dev/shm/mpich_shm_* segments behind (they fill /dev/shm).

    A segment is named after its process id (hex); this process's own is removed at its exit.
    """
    before = set(Path("/dev/shm").glob("mpich_shm_*"))
    yield
    left = {p for p in set(Path("/dev/shm").glob("mpich_shm_*")) - before
            if int(p.name.split("_")[2], 16) != os.getpid()}
    assert not left, f"leftover MPI shared memory: {sorted(map(str, left))}"


@pytest.fixture
def tiny_artifact(tmp_path: Path) -> Path:
    return make_artifact(tmp_path / "tiny.pt")


def loopback_config(artifact_path: Path, **overrides):
    """Daemon config on free loopback ports. Overload is off unless a test asks for it (a small
    batch.max_queue): a busy CI machine must not turn slowness into keeps in tests of other things.
    The audit sample and the shadow peakfinder8 are off too, unless asked for (`audit.fraction`,
    `shadow.workers`): on a machine with spare cores the shadow would start by itself."""
    from hitveto import config
    values = {"model.artifact": str(artifact_path), "model.device": "cpu",
              "batch.latency_budget_ms": 60_000.0, "batch.max_queue": 100_000,
              "ingest.endpoint": "tcp://127.0.0.1:*", "publish.endpoint": "tcp://127.0.0.1:*",
              "metrics.port": 0, "model.threads": 1, "audit.fraction": 0.0, "shadow.workers": 0,
              "control.endpoint": f"ipc://{tempfile.mkdtemp(prefix='hv-')}/control"}
    values.update(overrides)
    return config.load(overrides=values)


@contextlib.contextmanager
def running_daemon(artifact_path: Path, **overrides) -> Iterator:
    from prometheus_client import CollectorRegistry

    from hitveto.serving.daemon import Daemon
    with Daemon(loopback_config(artifact_path, **overrides), registry=CollectorRegistry()) as d:
        yield d


@functools.cache
def simulated_regions(seed: int, n: int, preset: str = "lysozyme",
                      distance_m: float | None = None) -> tuple[np.ndarray, ...]:
    """n simulated 350x350 CSPAD regions (ADU) of a preset, optionally at another detector distance
    (made once per session)."""
    from hitveto.sim.run import regions
    return tuple(regions(preset, seed=seed, n=n, distance_m=distance_m))


def paced_stream(daemon, images, rate_hz: float, run: int = 1):
    """Send images at about rate_hz (as a DAQ would), then wait for every decision."""
    import time

    from hitveto_client.veto import VetoClient
    from hitveto_client.protocol import EventKey
    with VetoClient(daemon.endpoints.ingest, daemon.endpoints.publish) as veto:
        veto.wait_subscribed()
        start = time.monotonic()
        for i, image in enumerate(images):
            time.sleep(max(0.0, start + i / rate_hz - time.monotonic()))
            veto.send(EventKey(run=run, pulse_id=i), image)
            veto.poll()
        veto.flush(timeout_s=10)
        return veto.counts
