"""The trainer end to end on small simulated runs: labels, fit, calibration, artifact metadata."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hitveto.io import geometry
from hitveto.models import artifact
from hitveto.offline.train import RECIPES, TrainConfig, train
from hitveto.sim.run import simulate_runs


def train_small(tmp_path, fmt: str, seed: int, protocol: str, min_peaks: int):
    """Two 48-frame simulated runs (train, validate), two epochs, threshold calibrated for 0.99."""
    train_run, val_run = simulate_runs(
        tmp_path / "runs", runs=[1, 2], n_frames=48, layout="roi", fmt=fmt, seed=seed
    )
    cfg = TrainConfig(
        train_runs=(train_run,),
        val_runs=(val_run,),
        out=tmp_path / "m.pt",
        architecture="compact",
        recipe=dataclasses.replace(RECIPES["fast"], epochs=2),
        protocol=protocol,
        min_peaks=min_peaks,
        target_sensitivity=0.99,
    )
    return (*train(cfg), val_run)


def test_train_writes_a_calibrated_self_describing_artifact(tmp_path):
    path, report, _ = train_small(tmp_path, "cxi", seed=3, protocol="min-peaks", min_peaks=3)
    a = artifact.read(path)
    info = a.info
    assert info.detector == "cspad" and info.roi_shape == (350, 350) and info.adu_per_photon == 35.0
    assert 0.0 <= info.threshold <= 1.0
    assert info.training["threshold_calibration"]["target_sensitivity"] == 0.99
    assert info.training["frames"] == 48 and info.training["labelled_frames"] == 48
    v = info.validation["min_peaks"]
    assert v["tp"] + v["fn"] > 0 and v["sensitivity"] >= 0.99  # calibrated on these very frames
    assert "Validation runs (min-peaks protocol)" in report
    assert np.array_equal(a.spec.roi_index, geometry.roi_index(350))  # the crop travels with it


def test_truth_protocol_labels_by_strong_spots_and_calibrates_on_them(tmp_path):
    from hitveto.io import sources

    path, report, val_run = train_small(tmp_path, "xtc2", seed=5, protocol="truth", min_peaks=10)
    info = artifact.read(path).info
    assert info.training["labels"] == "simulator truth: >= 10 strong spots, every frame"
    spots = np.array([ev.truth["n_strong_spots"] for ev in sources.events(val_run)])
    v = info.validation["visible"]
    assert v["tp"] + v["fn"] == (spots >= 10).sum() > 0 and v["sensitivity"] >= 0.99
    assert "all frames vs truth (>= 10 strong spots)" in report


def test_evaluate_reports_model_beside_peakfinder8_with_plots(tmp_path):
    from hitveto.offline.evaluate import evaluate_runs

    (run,) = simulate_runs(tmp_path / "runs", runs=[4], n_frames=40, layout="roi", fmt="xtc2", seed=3)
    text = evaluate_runs(artifact.REGION_ARTIFACT, (run,), out_dir=tmp_path / "eval")
    assert "Quartile protocol" in text and "vs simulator truth" in text and "strong hit" in text
    import json

    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert result["frames"] == 40 and 0 < result["kept_fraction"] < 1
    assert sum(v["frames"] for v in result["by_kind"].values()) == 40
    assert "strong spots = hit" in text and result["visible"]["tp"] + result["visible"]["fn"] > 0
    assert (tmp_path / "eval" / "evaluation.png").stat().st_size > 10_000


@pytest.mark.slow  # ~64 s
def test_torchrun_two_processes_train_as_well_as_one(tmp_path):
    """`torchrun --nproc-per-node 2 hitveto train`: gloo on CPU, the gradients averaged each step,
    so the two processes take the steps one process takes."""
    import subprocess
    import sys
    from pathlib import Path

    runs = simulate_runs(tmp_path / "runs", runs=[1, 2], n_frames=200, layout="roi", fmt="cxi", seed=4)
    args = [
        "-m",
        "hitveto.cli",
        "train",
        "--train",
        str(runs[0]),
        "--val",
        str(runs[1]),
        "--arch",
        "compact",
        "--recipe",
        "fast",
        "--epochs",
        "30",
        "--labels",
        "min-peaks",
        "--target-sensitivity",
        "0.99",
        "--seed",
        "1",
    ]
    one = subprocess.run(
        [sys.executable, *args, "--out", str(tmp_path / "one.pt")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = Path(sys.executable).with_name("torchrun")
    two = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", *args, "--out", str(tmp_path / "two.pt")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    single, parallel = (artifact.read(tmp_path / f"{n}.pt").info for n in ("one", "two"))
    assert parallel.training["processes"] == 2 and single.training["processes"] == 1
    a, b = (i.validation["min_peaks"] for i in (single, parallel))
    balanced = [(v["sensitivity"] + v["specificity"]) / 2 for v in (a, b)]
    assert b["sensitivity"] >= 0.99 and balanced[0] > 0.9  # a model, not a coin
    assert abs(balanced[1] - balanced[0]) <= 0.02


def test_regions_spill_to_a_memory_mapped_file(tmp_path):
    """Runs larger than memory: the regions live in a file and are read in batch by batch."""
    from hitveto.io.peaks import PeakFinderParams
    from hitveto.offline.datasets import input_spec, load_runs

    (run,) = simulate_runs(tmp_path / "runs", runs=[1], n_frames=12, layout="raw", fmt="xtc2", seed=2)
    spec = input_spec(350, 35.0)
    in_memory = load_runs((run,), spec, PeakFinderParams())
    spilled = load_runs((run,), spec, PeakFinderParams(), spill=tmp_path)
    assert isinstance(spilled.regions, np.memmap) and not isinstance(in_memory.regions, np.memmap)
    assert np.array_equal(spilled.regions, in_memory.regions) and spilled.regions.shape == (12, 350, 350)
    assert np.array_equal(spilled.peaks, in_memory.peaks)


def test_a_run_at_another_gain_is_rescaled_to_the_model_photon_scale(tmp_path):
    """Runs of several gain modes train one model: a run's ADU are brought to the model's gain."""
    import json

    from hitveto.io.peaks import PeakFinderParams
    from hitveto.offline.datasets import input_spec, load_runs

    (run,) = simulate_runs(tmp_path / "runs", runs=[1], n_frames=4, layout="raw", fmt="cxi", seed=2)
    spec = input_spec(350, 35.0, layout="raw")
    as_simulated = load_runs((run,), spec, PeakFinderParams(), count_peaks=False).regions
    sidecar = run.with_suffix(run.suffix + ".json")
    described = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**described, "adu_per_photon": 17.5}))  # half the model's gain
    rescaled = load_runs((run,), spec, PeakFinderParams(), count_peaks=False).regions
    assert np.array_equal(rescaled, as_simulated * 2)


def test_augmentation_adds_hot_pixels_and_scales_gain_only_when_asked():
    from hitveto.offline.augment import augment

    flat = np.full((200, 30, 30), 800, np.int16)
    same_gain = augment(flat, np.random.default_rng(0))
    assert np.median(same_gain, axis=(1, 2)).tolist() == [800.0] * 200
    assert (same_gain > 800).any() and (same_gain == 0).any()  # hot and dead pixels
    medians = np.median(augment(flat, np.random.default_rng(0), gain_range=8.0), axis=(1, 2))
    assert medians.min() >= 100 and medians.max() <= 800  # factors in [1/8, 1]
    assert medians.min() < 200 and medians.max() > 600  # spread over the range
    assert not flat.any() or flat.max() == 800  # the input is untouched
    assert augment(flat, np.random.default_rng(0), hot_pixels=False).max() == 800  # the raw layout's


@pytest.mark.parametrize(
    "change, message",
    [
        ({"optimiser": "adam"}, "optimiser 'adam': one of \\['adamw', 'sgd'\\]"),  # once silently AdamW
        ({"epochs": 0}, "recipe out of range"),
        ({"lr": 0.0}, "recipe out of range"),
    ],
)
def test_a_recipe_refuses_what_it_cannot_train_with(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(RECIPES["fast"], **change)


def test_the_cli_offers_every_recipe(capsys):
    from hitveto.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    offered = capsys.readouterr().out.split("--recipe {")[1].split("}")[0].split(",")
    assert set(offered) == set(RECIPES)


def test_the_label_protocols_are_the_same_in_the_cli_the_config_and_the_labeller():
    import typing

    from hitveto.cli.model import LABEL_PROTOCOLS  # the CLI names them without importing offline/
    from hitveto.offline import labels

    in_config = typing.get_args(typing.get_type_hints(TrainConfig)["protocol"])
    assert set(LABEL_PROTOCOLS) == set(labels.PROTOCOLS) == set(in_config)
