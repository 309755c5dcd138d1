"""Layered config: defaults < TOML < env < CLI; unknown keys name themselves and their source."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hitveto import config

DOCS = Path(__file__).parents[1] / "docs" / "CONFIG.md"


def test_layers_override_in_order(tmp_path):
    toml = tmp_path / "veto.toml"
    toml.write_text('[batch]\nmax_batch = 8\nmax_delay_ms = 5\n[model]\ndevice = "cpu"\n')
    cfg = config.load(toml, {"HITVETO_BATCH__MAX_BATCH": "16"}, {"model.device": "cuda:1"})
    assert cfg.batch.max_batch == 16 and cfg.batch.max_delay_ms == 5.0
    assert cfg.model.device == "cuda:1"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"overrides": {"batch.max_dely": 1}}, "batch.max_dely: unknown key (cli)"),
        ({"env": {"HITVETO_NOPE__X": "1"}}, "nope: unknown section (env)"),
        ({"overrides": {"batch.max_batch": "many"}}, "batch.max_batch (cli): expected int"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.load(**kwargs)


def test_docs_list_every_key_with_its_default():
    text = DOCS.read_text()
    for dotted, _type, default in config.settings():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{dotted}`")), None)
        assert row is not None, f"{dotted} missing from docs/CONFIG.md"
        assert f"`{default}`" in row or (default == "" and '`""`' in row), row


def test_shipped_example_config_loads():
    cfg = config.load(Path(__file__).parents[1] / "deploy" / "hitveto.toml")
    assert cfg.ingest.endpoint.startswith("tcp://127.0.0.1")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"batch.max_batch": "0"}, "batch.max_batch (cli): 0 is out of range (1 to 4096)"),
        ({"audit.fraction": 7}, "audit.fraction (cli): 7.0 is out of range (0 to 1)"),
        ({"model.precision": "fp64"}, "model.precision (cli): 'fp64' is not one of 'fp32', 'fp16', 'bf16'"),
        ({"metrics.port": 65536}, "metrics.port (cli): 65536 is out of range (0 to 65535)"),
        ({"shadow.workers": -2}, "shadow.workers (cli): -2 is out of range (-1 to 256)"),
        ({"drift.sample_hz": 0}, "drift.sample_hz (cli): 0.0 is out of range (>= 0.001)"),
    ],
)
def test_values_out_of_range_or_choice_are_named_with_their_layer(overrides, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.load(overrides=overrides)


def test_a_bad_value_in_a_file_names_the_file(tmp_path):
    toml = tmp_path / "veto.toml"
    toml.write_text("[batch]\nmax_queue = 0\n")
    with pytest.raises(
        config.ConfigError, match=re.escape(f"batch.max_queue (file {toml}): 0 is out of range")
    ):
        config.load(toml)


def test_a_single_underscore_variable_is_refused_with_the_hint():
    with pytest.raises(
        config.ConfigError, match="HITVETO_BATCH_MAX_BATCH: not a config variable.*HITVETO_BATCH__MAX_BATCH"
    ):
        config.load(env={"HITVETO_BATCH_MAX_BATCH": "64"})


def test_other_hitveto_variables_and_the_bounds_themselves_are_accepted():
    env = {"HITVETO_CACHE": "/tmp/x", "HITVETO_BIN": "hitveto", "HITVETO_CONFIG": "/etc/hitveto/hitveto.toml"}
    cfg = config.load(
        env=env, overrides={"batch.max_batch": 4096, "audit.fraction": 0, "model.precision": "bf16"}
    )
    assert (cfg.batch.max_batch, cfg.audit.fraction, cfg.model.precision) == (4096, 0.0, "bf16")


def test_the_defaults_pass_their_own_checks():
    assert config.load() == config.ServeConfig()


def test_docs_give_every_key_its_type_and_range():
    rows = {
        line.split(" | ")[0].strip("| `"): line.split(" | ")[1]
        for line in DOCS.read_text().splitlines()
        if line.startswith("| `")
    }
    assert {dotted: rows.get(dotted) for dotted, _, _ in config.settings()} == {
        dotted: kind for dotted, kind, _ in config.settings()
    }
