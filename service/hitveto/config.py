"""Daemon configuration: frozen dataclasses per section, layered defaults < TOML < HITVETO_* env < CLI.

Every value is checked where it is read: its type, its range (`Range` in the field's annotation) and,
for a choice, the choices (`Literal`). An unknown key, a bad value, or a HITVETO_ variable that is not
SECTION__KEY is a ConfigError that names the key and the layer it came from. docs/CONFIG.md lists
every key; a test keeps that list in step with these dataclasses.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

ENV_PREFIX = "HITVETO_"
# HITVETO_ variables that are not config keys (read by geometry.py and deploy/launcher)
OTHER_ENV = frozenset({"HITVETO_CACHE", "HITVETO_BIN", "HITVETO_CONFIG"})
DEFAULT_CONTROL = "ipc:///tmp/hitveto-control.sock"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Range:
    """Inclusive bounds of a number setting; None: unbounded on that side."""

    low: float | None = None
    high: float | None = None

    def check(self, value: float, where: str) -> None:
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ConfigError(f"{where}: {value!r} is out of range ({self.describe()})")

    def describe(self) -> str:
        """As docs/CONFIG.md writes it: "1 to 4096", ">= 1", "<= 5"."""
        if self.low is not None and self.high is not None:
            return f"{self.low:g} to {self.high:g}"
        return f">= {self.low:g}" if self.low is not None else f"<= {self.high:g}"


Positive = Annotated[int, Range(1)]
Share = Annotated[float, Range(0.0, 1.0)]


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestConfig:
    endpoint: str = "tcp://127.0.0.1:5550"  # PULL socket the DAQ pushes frames to (bound)
    workers: Annotated[int, Range(1, 64)] = 2  # decode/preprocess threads
    rcvhwm: Positive = 1000  # frames ZMQ queues per peer before senders block


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchConfig:
    max_batch: Annotated[int, Range(1, 4096)] = 32
    max_delay_ms: Annotated[float, Range(0.0, 10_000.0)] = (
        2.0  # longest wait for a batch to fill after its first frame
    )
    max_queue: Positive = 512  # frames waiting for inference; beyond: keep (overload)
    latency_budget_ms: Annotated[float, Range(0.1)] = (
        100.0  # a frame older than this when batched is kept (overload)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditConfig:
    fraction: Share = 0.02  # share of the model's misses kept anyway (reason audit)
    seed: int = 0  # picks hash (seed, run, pulse id): reproducible


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowConfig:
    workers: Annotated[int, Range(-1, 256)] = -1  # peakfinder8 processes beside the model; -1 = the cores
    # the daemon leaves free, 0 = off
    min_peaks: Positive = 10  # a peakfinder8 hit has at least this many peaks
    window: Positive = 2000  # shadowed frames the live estimates cover
    target_sensitivity: Share = 0.99  # the alert fires when the upper bound falls below it


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftConfig:
    enabled: bool = True  # needs the artifact's training profile
    sample_hz: Annotated[float, Range(0.001)] = 50.0  # frames per second measured at most
    window: Positive = 1000  # measured frames the drift scores cover
    min_frames: Positive = 200  # no score before this many


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    artifact: str = ""  # model file; empty = the shipped default model
    device: str = "auto"  # auto, cpu, cuda, cuda:N, or a list: one engine each
    # ("cuda:0,cuda:1", "cuda:all", "cpu,cpu")
    threads: Annotated[int, Range(0, 1024)] = 1  # torch intra-op threads on CPU (0 = torch's default);
    # 1 measured fastest on 2 cores beside the ingest threads
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"  # fp16/bf16: autocast (for GPUs)
    engine: Literal["torchscript", "onnxruntime"] = "torchscript"  # onnxruntime: CPU, fp32
    reload_dirs: str = ""  # folders `reload` may take a model file from (comma-
    # separated); empty = the configured model's folder


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibConfig:
    constants: str = ""  # calibration constants (hitveto dark): raw frames are calibrated on
    # arrival; empty = frames arrive calibrated
    guard: bool = True  # frames whose panels are not at a calibrated level are kept
    # (out_of_distribution), not judged


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishConfig:
    endpoint: str = "tcp://127.0.0.1:5551"  # PUB socket for verdicts (bound)
    sndhwm: Positive = 100000  # verdicts queued per subscriber before PUB drops for it
    max_subscribers: Annotated[int, Range(1, 10_000)] = (
        16  # beyond: refused (bounds what subscribers can pin)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    enabled: bool = True
    address: str = "127.0.0.1"
    port: Annotated[int, Range(0, 65535)] = 9750  # Prometheus /metrics; 0 = any free port


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlConfig:
    endpoint: str = DEFAULT_CONTROL  # REP socket for status/stats/reload/learn (bound); "" =
    # off; ipc:// (file permissions) or, with CURVE, tcp://
    socket_mode: str = "0600"  # permissions of the ipc:// socket file, octal ("0660":
    # the daemon's group too)


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityConfig:
    curve: bool = False  # CURVE on frame, verdict and control sockets
    server_secret_file: str = ""  # the daemon's *.key_secret (hitveto keys DIR)
    clients_dir: str = ""  # folder of allowed client public *.key files


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeConfig:
    ingest: IngestConfig = field(default_factory=IngestConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    calib: CalibConfig = field(default_factory=CalibConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)


def load(
    path: Path | None = None, env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> ServeConfig:
    """Build the config from a TOML file, environment (HITVETO_SECTION__KEY) and dotted overrides."""
    values: dict[str, dict[str, Any]] = {}
    if path is not None:
        with open(path, "rb") as fh:
            _merge(values, tomllib.load(fh), f"file {path}")
    _merge(values, _from_env(env or {}), "env")
    _merge(values, _nest(overrides or {}), "cli")
    return _build(values)


def _section_defaults(section: dataclasses.Field[Any]) -> Any:
    make: Any = section.default_factory  # every section field has one
    return make()


def settings() -> list[tuple[str, str, Any]]:
    """(section.key, type, default) for every setting, in declaration order."""
    out = []
    for section in dataclasses.fields(ServeConfig):
        for f in dataclasses.fields(_section_defaults(section)):
            out.append(
                (
                    f"{section.name}.{f.name}",
                    _type_name(_type_of(section.type, f.name)),
                    getattr(_section_defaults(section), f.name),
                )
            )
    return out


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    flat = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in OTHER_ENV:
            continue
        section, sep, key = name[len(ENV_PREFIX) :].partition("__")
        if not sep:
            raise ConfigError(
                f"{name}: not a config variable (env); a key is HITVETO_<SECTION>__<KEY>, with two "
                f"underscores, e.g. HITVETO_BATCH__MAX_BATCH (docs/CONFIG.md)"
            )
        flat[f"{section}.{key}".lower()] = value
    return _nest(flat)


def _nest(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in flat.items():
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"{dotted}: expected section.key")
        nested.setdefault(section, {})[key] = value
    return nested


def _merge(into: dict[str, dict[str, Any]], layer: Mapping[str, Any], source: str) -> None:
    sections = {f.name: f for f in dataclasses.fields(ServeConfig)}
    for section, table in layer.items():
        if section not in sections or not isinstance(table, Mapping):
            raise ConfigError(f"{section}: unknown section ({source})")
        names = {f.name for f in dataclasses.fields(_section_defaults(sections[section]))}
        for key, value in table.items():
            if key not in names:
                raise ConfigError(f"{section}.{key}: unknown key ({source})")
            into.setdefault(section, {})[key] = _check(
                _type_of(sections[section].type, key), value, f"{section}.{key} ({source})"
            )


def _build(values: dict[str, dict[str, Any]]) -> ServeConfig:
    parts = {
        f.name: dataclasses.replace(_section_defaults(f), **values.get(f.name, {}))
        for f in dataclasses.fields(ServeConfig)
    }
    cfg = ServeConfig(**parts)
    _check_control(cfg)
    return cfg


def _check_control(cfg: ServeConfig) -> None:
    """The control socket can swap the model: it must never be open to anyone on the host."""
    endpoint, mode = cfg.control.endpoint, cfg.control.socket_mode
    if not (mode.isdigit() and set(mode) <= set("01234567") and int(mode, 8) & ~0o770 == 0):
        raise ConfigError(
            f"control.socket_mode {mode!r}: an octal file mode for owner and group "
            'only, e.g. "0600" or "0660"'
        )
    if not endpoint or endpoint.startswith("ipc://") or endpoint.startswith("inproc://"):
        return
    if not cfg.security.curve:
        raise ConfigError(
            f"control.endpoint {endpoint!r}: a TCP control socket needs "
            "security.curve = true; without CURVE use ipc://PATH (file permissions "
            'guard it) or "" (off)'
        )


def _type_of(section_type: Any, key: str) -> Any:
    """The field's annotation (Annotated and Literal kept). `from __future__ import annotations`
    leaves field types as strings; resolve them here."""
    cls = globals()[section_type] if isinstance(section_type, str) else section_type
    return typing.get_type_hints(cls, include_extras=True)[key]


def _type_name(hint: Any) -> str:
    """The type and its range, or the choices, as docs/CONFIG.md shows them: "int 1 to 4096"."""
    if get_origin(hint) is Annotated:
        base, *rules = get_args(hint)
        return " ".join([_type_name(base), *(rule.describe() for rule in rules)])
    if get_origin(hint) is Literal:
        return " \\| ".join(str(c) for c in get_args(hint))  # escaped: it stands in a Markdown table
    return str(hint.__name__)


def _check(hint: Any, value: Any, where: str) -> Any:
    """The value, coerced to the field's type and checked against its range or choices."""
    if get_origin(hint) is Annotated:
        base, *rules = get_args(hint)
        value = _check(base, value, where)
        for rule in rules:
            rule.check(value, where)
        return value
    if get_origin(hint) is Literal:
        if value not in get_args(hint):
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, get_args(hint)))}")
        return value
    return _coerce(hint, value, where)


def _coerce(kind: type, value: Any, where: str) -> Any:
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if isinstance(value, str):
        try:
            if kind is bool:
                return {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}[
                    value.lower()
                ]
            return kind(value)
        except (KeyError, ValueError):
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")


__all__ = [
    "ServeConfig",
    "IngestConfig",
    "BatchConfig",
    "AuditConfig",
    "ShadowConfig",
    "DriftConfig",
    "ModelConfig",
    "PublishConfig",
    "MetricsConfig",
    "ControlConfig",
    "SecurityConfig",
    "ConfigError",
    "Range",
    "load",
    "settings",
]
