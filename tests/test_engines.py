"""The onnxruntime engine gives the TorchScript engine's scores, alone and serving (issue #22)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hitveto.models import artifact, preprocess
from hitveto.models.engine import Engine
from hitveto.models.onnx_engine import OnnxEngine, exported
from hitveto.sim.params import PRESETS
from hitveto.sim.run import frames
from hitveto_client.protocol import EventKey, Reason

from helpers import running_daemon, simulated_regions, stream


@pytest.fixture(scope="module")
def raw_frames():
    """Full simulated CSPAD frames: hits and misses of the lysozyme preset."""
    params = dataclasses.replace(PRESETS["lysozyme"], seed=21, n_frames=12)
    return [ev.image for ev in frames(params, "raw")]


@pytest.mark.parametrize(
    "model", [artifact.DEFAULT_ARTIFACT, artifact.REGION_ARTIFACT], ids=["full", "region"]
)
def test_onnxruntime_scores_as_torchscript(model, raw_frames, tmp_path, monkeypatch):
    monkeypatch.setenv("HITVETO_CACHE", str(tmp_path))  # exported here, not reused from elsewhere
    art = artifact.read(model)
    inputs = [preprocess.region(f, art.spec) for f in raw_frames]
    if art.spec.layout == "roi":
        inputs += list(simulated_regions(5, 12))
    reference = Engine(art, device="cpu", max_batch=8).score(inputs)
    onnx = OnnxEngine(art, max_batch=8)
    scores = onnx.score(inputs)
    assert scores.shape == reference.shape and np.abs(scores - reference).max() < 1e-4
    assert (scores >= art.info.threshold).any() and (scores < art.info.threshold).any()  # both verdicts
    as_float = onnx.score([x.astype(np.float32) for x in inputs])  # calibrated float frames: their graph
    assert np.abs(as_float - reference).max() < 1e-4
    cached = exported(art, "int32")
    assert (
        cached.parent == tmp_path / "onnx"
        and exported(art, "int32").stat().st_mtime == cached.stat().st_mtime
    )


def test_a_daemon_on_onnxruntime_gives_the_verdicts_of_one_on_torchscript(raw_frames):
    items = [(EventKey(run=1, pulse_id=i), f) for i, f in enumerate(raw_frames)]
    verdicts = {}
    for engine in ("torchscript", "onnxruntime"):
        with running_daemon(artifact.DEFAULT_ARTIFACT, **{"model.engine": engine}) as daemon:
            _, decisions = stream(daemon, items)
            assert daemon.status()["device"] == "cpu"
        assert {d.reason for d in decisions} == {Reason.MODEL}
        verdicts[engine] = {d.key.pulse_id: (d.verdict.hit, d.verdict.score) for d in decisions}
    for pulse, (hit, score) in verdicts["torchscript"].items():
        other_hit, other_score = verdicts["onnxruntime"][pulse]
        assert hit == other_hit and abs(score - other_score) < 1e-4


def test_onnxruntime_refuses_a_gpu_or_half_precision():
    from hitveto import config
    from hitveto.serving.model_slot import ModelSlot

    for bad in ({"model.device": "cuda:0"}, {"model.precision": "fp16"}):
        slot = ModelSlot(config.load(overrides={"model.engine": "onnxruntime", **bad}))
        with pytest.raises(config.ConfigError, match="onnxruntime runs fp32 on the CPU"):
            slot.engines(slot.artifact)
