"""The model artifact: one self-describing file; metadata round trip; clear errors when it does not fit."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from hitveto.models import artifact
from hitveto.models.engine import Engine

from helpers import RAW, ROI, make_artifact, tiny_roi_index


def test_metadata_and_index_round_trip(tmp_path):
    path = make_artifact(tmp_path / "m.pt", threshold=0.37, version="v-9")
    a = artifact.read(path)
    assert a.info.version == "v-9" and a.info.threshold == 0.37
    assert a.info.raw_shape == RAW and a.info.roi_shape == ROI and a.info.created
    assert np.array_equal(a.spec.roi_index, tiny_roi_index())
    assert len(a.sha256) == 64


def test_scores_survive_save_and_load(tmp_path):
    a = artifact.read(make_artifact(tmp_path / "m.pt"))
    e1, e2 = (Engine(a, device="cpu", max_batch=4) for _ in range(2))
    x = [np.random.default_rng(i).poisson(3, ROI).astype(np.int16) for i in range(4)]
    s1, s2 = e1.infer(x), e2.infer(x)
    assert s1.shape == (4,) and np.all((s1 >= 0) & (s1 <= 1)) and np.array_equal(s1, s2)


def test_inspect_reads_metadata_without_torch(tmp_path):
    path = make_artifact(tmp_path / "m.pt", version="v-inspect")
    code = (
        "import sys; from hitveto.models import artifact; a = artifact.read(sys.argv[1]); "
        "print(a.info.version, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["v-inspect", "False"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(b"not a zip"), "unreadable model artifact"),
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "unreadable model artifact"),
    ],
)
def test_bad_artifact_gives_clear_error(tmp_path, damage, message):
    path = make_artifact(tmp_path / "m.pt")
    damage(path)
    with pytest.raises(artifact.ArtifactError, match=message):
        artifact.read(path)


def test_plain_torchscript_file_is_refused(tmp_path):
    import torch

    path = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.ReLU()), str(path))
    with pytest.raises(artifact.ArtifactError, match="not a hitveto model"):
        artifact.read(path)


def test_detector_and_shape_mismatch_say_why(tmp_path):
    a = artifact.read(make_artifact(tmp_path / "m.pt"))
    with pytest.raises(artifact.ArtifactError, match="trained for detector 'cspad'.*'epix10k2M'"):
        artifact.check_fits(a, "epix10k2M", RAW)
    with pytest.raises(artifact.ArtifactError, match=r"not \(16, 352, 384\)"):
        artifact.check_fits(a, "cspad", (16, 352, 384))
    artifact.check_fits(a, "cspad", ROI)


def test_wrong_format_tag_is_refused():
    info = artifact.ModelInfo(
        version="x",
        architecture="compact",
        detector="cspad",
        raw_shape=RAW,
        roi_shape=ROI,
        adu_per_photon=1.0,
        threshold=0.5,
    )
    text = dataclasses.replace(info, format="hitveto-model/99").to_json()
    with pytest.raises(artifact.ArtifactError, match="hitveto-model/99"):
        artifact.ModelInfo.from_json(text)


def test_reduced_precision_scores_agree_with_fp32(tmp_path):
    a = artifact.read(make_artifact(tmp_path / "m.pt"))
    x = [np.random.default_rng(i).poisson(30, ROI).astype(np.int16) for i in range(8)]
    full = Engine(a, device="cpu").infer(x)
    half = Engine(a, device="cpu", precision="bf16").infer(x)
    assert half.dtype == np.float32 and np.abs(full - half).max() < 0.02
    with pytest.raises(ValueError, match="precision 'fp8'"):
        Engine(a, device="cpu", precision="fp8")
