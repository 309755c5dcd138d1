"""Adaptation to a new experiment: the serving network is rebuilt trainable; learn mode keeps every
frame; `adapt` learns from the writer's files, writes a model only when it meets the targets on the
window's validation part, and the daemon swaps it in through its reload path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hitveto.models import artifact
from hitveto.models.artifact import ArtifactError
from hitveto.models.engine import Engine
from hitveto.offline.adapt import AdaptConfig, adapt, trainable
from hitveto.offline.replay import frames_of, replay
from hitveto.offline.train import predict
from hitveto.serving.control import request
from hitveto.sim.run import simulate_runs

from helpers import running_daemon, simulated_regions


def test_the_serving_network_is_rebuilt_trainable_with_the_same_scores(tmp_path):
    shipped = artifact.read(artifact.REGION_ARTIFACT)
    images = np.stack(simulated_regions(seed=17, n=16))
    rebuilt = predict(trainable(shipped, shipped.info.adu_per_photon), images)
    assert np.allclose(rebuilt, Engine(shipped, device="cpu").infer(list(images)), atol=1e-5)
    mislabelled = artifact.read(artifact.rewrite(shipped, tmp_path / "m.pt", architecture="seed"))
    with pytest.raises(ArtifactError, match="cannot match its weights"):
        trainable(mislabelled, 35.0)


@pytest.mark.slow  # ~38 s
def test_learn_mode_then_adapt_then_reload(tmp_path):
    (run,) = simulate_runs(
        tmp_path / "runs", runs=[52], n_frames=900, preset="thermolysin", layout="roi", fmt="xtc2", seed=52
    )
    with running_daemon(
        artifact.REGION_ARTIFACT, **{"audit.fraction": 0.02, "model.reload_dirs": str(tmp_path)}
    ) as daemon:
        control = daemon.endpoints.control
        assert request(control, "learn", on=True)["result"]["audit_fraction"] == 1.0
        summary = replay(
            frames_of([run]),
            frames_endpoint=daemon.endpoints.ingest,
            verdicts_endpoint=daemon.endpoints.publish,
            out_dir=tmp_path / "learnt",
        )
        assert request(control, "learn", on=False)["result"]["audit_fraction"] == 0.02
        assert not request(control, "status")["result"]["learning"]
        # every frame kept: the model's hits, and its misses as audit
        assert summary.sent == summary.written == 900 and summary.accounted
        assert summary.audited == 900 - summary.hits_kept

        files = tuple(sorted((tmp_path / "learnt").glob("hits-*.cxi")))
        gain = 35.0 * 7000 / 9500  # thermolysin's 7 keV photons
        # 900 frames hold about 25 validation hits, where one lost hit is 4 %: the target here is
        # 0.9 (docs/TRUST.md adapts on a minute of beam for 0.99)
        cfg = AdaptConfig(
            sources=files,
            model=artifact.REGION_ARTIFACT,
            out=tmp_path / "new.pt",
            frames=900,
            workers=2,
            adu_per_photon=gain,
            target_sensitivity=0.9,
        )
        cfg = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, epochs=2))
        result = adapt(cfg)
        print("\n".join(result.lines()))
        assert result.path == cfg.out and result.after["sensitivity"] >= 0.9
        assert result.after["specificity"] >= 0.9 and result.frames["validation"] == 180
        new = artifact.read(result.path)
        assert new.info.training["adapted_from"] == artifact.read(artifact.REGION_ARTIFACT).info.version
        assert new.info.profile and new.info.adu_per_photon == gain
        reply = request(control, "reload", artifact=str(result.path))
        assert reply["ok"] and request(control, "status")["result"]["version"] == new.served_version

    refused = adapt(dataclasses.replace(cfg, out=tmp_path / "refused.pt", min_specificity=1.01))
    assert refused.path is None and not (tmp_path / "refused.pt").exists()
    assert "NOT written" in refused.lines()[-1]
