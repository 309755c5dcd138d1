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


@pytest.mark.parametrize("kwargs, message", [
    ({"overrides": {"batch.max_dely": 1}}, "batch.max_dely: unknown key (cli)"),
    ({"env": {"HITVETO_NOPE__X": "1"}}, "nope: unknown section (env)"),
    ({"overrides": {"batch.max_batch": "many"}}, "batch.max_batch (cli): expected int"),
])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.load(**kwargs)


def test_docs_list_every_key_with_its_default():
    text = DOCS.read_text()
    for dotted, _type, default in config.keys():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{dotted}`")), None)
        assert row is not None, f"{dotted} missing from docs/CONFIG.md"
        assert f"`{default}`" in row or (default == "" and "`\"\"`" in row), row


def test_shipped_example_config_loads():
    cfg = config.load(Path(__file__).parents[1] / "deploy" / "hitveto.toml")
    assert cfg.ingest.endpoint.startswith("tcp://127.0.0.1")
