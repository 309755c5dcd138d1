"""hitveto wire protocol, version 2: frames in, verdicts out (see docs/PROTOCOL.md).

A frame is a two-part ZMQ message: a msgpack header, then the raw pixel buffer (C order). A verdict is a
one-part msgpack message on the daemon's PUB socket. v2 verdicts add the verdict classes; a v1 frame
is still served, its verdict sent as v1 (no class fields). This module imports only the standard
library, numpy and msgpack, because the DAQ-side clients use it too.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import msgpack
import numpy as np

PROTOCOL_VERSION = 2
VERSIONS = (1, 2)  # frame versions served; a verdict answers in its frame's version
ALLOWED_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name) for name in ("int16", "uint16", "int32", "float32")
}
MAX_HEADER_BYTES = 4096
MAX_FRAME_BYTES = 64 * 1024 * 1024  # a 16 Mpix float32 frame; bigger is refused before any reshape
MAX_NDIM = 4
MAX_DETECTOR_CHARS = 64
INT64 = (-(1 << 63), (1 << 63) - 1)  # run and pulse id: signed 64-bit (CXI event/run, pulse_id)
UINT64 = (0, (1 << 64) - 1)  # timestamp: psana's unsigned 64-bit event time
WELCOME = b"hitveto-welcome"  # sent by the verdict socket to each new subscriber (XPUB welcome)


class ProtocolError(ValueError):
    """A message that does not follow the protocol; `reason` is the counted rejection label."""

    def __init__(
        self, reason: str, detail: str, key: EventKey | None = None, version: int = PROTOCOL_VERSION
    ) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.key = key
        self.version = version  # the frame's, to answer in: a v1 sender reads v1 verdicts only


class Reason(enum.StrEnum):
    """Why a verdict says what it says. MODEL and AUDIT are judged; everything else is a
    fail-open keep."""

    MODEL = "model"  # judged by the model: keep == hit
    AUDIT = "audit"  # judged a miss, kept anyway: the audit sample (service/hitveto/serving/audit.py)
    OVERLOAD = "overload"  # not judged in time: backlog over the latency budget or queue full
    MALFORMED = "malformed"  # header readable, frame not usable (shape, dtype, size, detector)
    MODEL_ERROR = "model_error"  # the model raised on this batch, or an internal error on the frame
    BAD_SCORE = "bad_score"  # the model's score is not a number (NaN/Inf): not a verdict
    SHUTDOWN = "shutdown"  # the daemon stopped before judging it
    OUT_OF_DISTRIBUTION = "out_of_distribution"  # not what the model was trained on (e.g. a raw,
    # uncalibrated frame): kept, not judged (service/hitveto/serving/guard.py)
    NO_VERDICT = "no_verdict"  # client side only: no verdict before the deadline
    DUPLICATE = "duplicate"  # client side only: its key already awaits a verdict; not sent


JUDGED = frozenset({Reason.MODEL, Reason.AUDIT})  # verdicts the model gave (with a score)


@dataclass(frozen=True, slots=True, kw_only=True)
class EventKey:
    """Identifies one detector frame of one pulse; unique within a stream."""

    run: int
    pulse_id: int
    timestamp: int = 0
    detector: str = "cspad"

    def as_tuple(self) -> tuple[str, int, int]:
        """The join key used by clients: (detector, run, pulse_id)."""
        return (self.detector, self.run, self.pulse_id)

    def wire_fields(self) -> dict[str, Any]:
        """The key as frame and verdict messages both carry it."""
        return {
            "run": self.run,
            "pulse_id": self.pulse_id,
            "timestamp": self.timestamp,
            "detector": self.detector,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameHeader:
    key: EventKey
    dtype: str
    shape: tuple[int, ...]
    sent_ns: int = 0  # sender's wall clock (time.time_ns) at send
    meta: dict[str, Any] = field(default_factory=dict)
    version: int = PROTOCOL_VERSION  # one of VERSIONS (the fields are the same in each)

    def to_wire(self) -> bytes:
        return _packed(
            {
                "v": self.version,
                **self.key.wire_fields(),
                "dtype": self.dtype,
                "shape": list(self.shape),
                "sent_ns": self.sent_ns,
                "meta": self.meta,
            }
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    key: EventKey
    keep: bool  # what the writer should do: always True unless the model judged a miss
    hit: bool  # the model's call (False when not judged)
    score: float  # model probability of a hit; NaN when not judged
    threshold: float
    model_version: str
    reason: Reason
    sent_ns: int = 0  # echoed from the frame header
    received_ns: int = 0  # daemon wall clock at receipt
    published_ns: int = 0  # daemon wall clock at publish
    inference_ms: float = 0.0
    classes: tuple[str, ...] = ()  # v2: the verdict classes whose probability reached its threshold
    class_scores: dict[str, float] = field(default_factory=dict)  # v2: each class's probability
    version: int = PROTOCOL_VERSION  # the protocol version it is sent in: its frame's

    def to_wire_at(self, published_ns: int) -> bytes:
        """Wire form, stamped with the publish time; a v1 verdict without the class fields."""
        classes = {"classes": list(self.classes), "class_scores": self.class_scores}
        return _packed(
            {
                "v": self.version,
                **self.key.wire_fields(),
                "keep": self.keep,
                "hit": self.hit,
                "score": self.score,
                "threshold": self.threshold,
                "model_version": self.model_version,
                "reason": self.reason.value,
                "sent_ns": self.sent_ns,
                "received_ns": self.received_ns,
                "published_ns": published_ns,
                "inference_ms": self.inference_ms,
                **(classes if self.version >= 2 else {}),
            }
        )

    @classmethod
    def fail_open(
        cls,
        key: EventKey,
        reason: Reason,
        *,
        model_version: str = "",
        threshold: float = math.nan,
        sent_ns: int = 0,
        received_ns: int = 0,
        version: int = PROTOCOL_VERSION,
    ) -> Verdict:
        """A keep verdict for a frame that was not judged (no score, no classes)."""
        return cls(
            key=key,
            keep=True,
            hit=False,
            score=math.nan,
            threshold=threshold,
            model_version=model_version,
            reason=reason,
            sent_ns=sent_ns,
            received_ns=received_ns,
            version=version,
        )


def encode_frame(
    key: EventKey,
    image: np.ndarray,
    *,
    meta: dict[str, Any] | None = None,
    sent_ns: int | None = None,
    version: int = PROTOCOL_VERSION,
) -> list[Any]:
    """Message parts for one frame; the pixel part is the array itself (sent without copy). A
    `version` of 1 speaks for a v1 sender: its verdicts come as v1."""
    if image.dtype.name not in ALLOWED_DTYPES:
        raise ProtocolError("bad_dtype", f"dtype {image.dtype} not in {sorted(ALLOWED_DTYPES)}", key)
    image = np.ascontiguousarray(image)
    header = FrameHeader(
        key=key,
        dtype=image.dtype.name,
        shape=tuple(image.shape),
        sent_ns=time.time_ns() if sent_ns is None else sent_ns,
        meta=meta or {},
        version=version,
    )
    return [header.to_wire(), image]


def decode_frame(parts: list[Any]) -> tuple[FrameHeader, np.ndarray]:
    """Header and a read-only array view of the pixel part; ProtocolError on anything malformed.

    Checks run cheapest first and before any allocation: part count, header size, version, keys,
    dtype allow-list, shape rank and size against the byte count.
    """
    if len(parts) != 2:
        raise ProtocolError("bad_parts", f"expected 2 message parts, got {len(parts)}")
    header = _decode_header(_as_bytes(parts[0]))
    pixels = _as_buffer(parts[1])
    dtype = ALLOWED_DTYPES[header.dtype]
    expected = math.prod(header.shape) * dtype.itemsize
    if expected != len(pixels):
        raise ProtocolError(
            "bad_size",
            f"shape {header.shape} {header.dtype} needs {expected} bytes, got {len(pixels)}",
            header.key,
            header.version,
        )
    image = np.frombuffer(pixels, dtype=dtype).reshape(header.shape)
    return header, image


def _decode_header(raw: bytes) -> FrameHeader:
    meta = _unpack_header(raw)
    key = _read_key(meta)
    version = meta.get("v")
    if not (_is_int(version) and version in VERSIONS):
        raise ProtocolError(
            "bad_version", f"protocol version {version!r}, this daemon speaks {VERSIONS}", key
        )
    if key is None:
        raise ProtocolError(
            "bad_header",
            "missing, mistyped or out-of-range event key (run, pulse_id: "
            "64-bit signed ints; timestamp: 64-bit unsigned; detector: a short string)",
        )
    dtype, shape = meta.get("dtype"), meta.get("shape")
    if not (isinstance(dtype, str) and dtype in ALLOWED_DTYPES):
        raise ProtocolError("bad_dtype", f"dtype {dtype!r} not in {sorted(ALLOWED_DTYPES)}", key, version)
    if not (
        isinstance(shape, list)
        and 0 < len(shape) <= MAX_NDIM
        and all(_is_int(n) and 0 < n <= MAX_FRAME_BYTES for n in shape)
    ):
        raise ProtocolError("bad_shape", f"shape {shape!r} is not 1-{MAX_NDIM} positive ints", key, version)
    if math.prod(shape) * ALLOWED_DTYPES[dtype].itemsize > MAX_FRAME_BYTES:
        raise ProtocolError("bad_size", f"declared frame exceeds {MAX_FRAME_BYTES} bytes", key, version)
    sent_ns, extra = meta.get("sent_ns", 0), meta.get("meta", {})
    return FrameHeader(
        key=key,
        dtype=dtype,
        shape=tuple(shape),
        sent_ns=sent_ns if _in_range(sent_ns, INT64) and sent_ns >= 0 else 0,
        meta=extra if isinstance(extra, dict) else {},
        version=version,
    )


def _unpack_header(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError("bad_header", f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        meta = msgpack.unpackb(raw, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError("bad_header", f"not msgpack ({type(exc).__name__})") from None
    if not isinstance(meta, dict):
        raise ProtocolError("bad_header", "header is not a map")
    return meta


def _packed(message: dict[str, Any]) -> bytes:
    wire: bytes = msgpack.packb(message)
    return wire


def peek_key(parts: list[Any]) -> EventKey | None:
    """The event key of a message if its header has a valid one, else None; never raises (used to
    answer a frame that failed for an internal reason)."""
    try:
        return _read_key(_unpack_header(_as_bytes(parts[0])))
    except Exception:
        return None


def _is_int(x: Any) -> bool:
    """An int that is not a bool (msgpack's true is Python's True, an int)."""
    return type(x) is int


def _in_range(x: Any, bounds: tuple[int, int]) -> TypeGuard[int]:
    return _is_int(x) and bounds[0] <= x <= bounds[1]


def _read_key(meta: dict[str, Any]) -> EventKey | None:
    """The event key, or None unless run and pulse_id are signed 64-bit ints, the timestamp
    (optional) an unsigned 64-bit int and the detector a short string."""
    run, pulse_id, ts, det = (meta.get(k) for k in ("run", "pulse_id", "timestamp", "detector"))
    ts = 0 if ts is None else ts
    if (
        _in_range(run, INT64)
        and _in_range(pulse_id, INT64)
        and _in_range(ts, UINT64)
        and isinstance(det, str)
        and 0 < len(det) <= MAX_DETECTOR_CHARS
    ):
        return EventKey(run=run, pulse_id=pulse_id, timestamp=ts, detector=det)
    return None


def decode_verdict(raw: bytes) -> Verdict:
    """A verdict from its wire form, v1 or v2 (a v1 verdict has no classes); ProtocolError if it is
    not one of ours."""
    try:
        m = msgpack.unpackb(raw)
        key = _read_key(m)
        if not (_is_int(m["v"]) and m["v"] in VERSIONS) or key is None:
            raise KeyError("v")
        return Verdict(
            key=key,
            keep=bool(m["keep"]),
            hit=bool(m["hit"]),
            score=float(m["score"]),
            threshold=float(m["threshold"]),
            model_version=str(m["model_version"]),
            reason=Reason(m["reason"]),
            sent_ns=int(m["sent_ns"]),
            received_ns=int(m["received_ns"]),
            published_ns=int(m["published_ns"]),
            inference_ms=float(m["inference_ms"]),
            classes=tuple(str(c) for c in m.get("classes", ())),
            class_scores={str(c): float(p) for c, p in m.get("class_scores", {}).items()},
            version=m["v"],
        )
    except Exception as exc:
        raise ProtocolError("bad_verdict", f"unreadable verdict ({type(exc).__name__}: {exc})") from None


def _as_bytes(part: Any) -> bytes:
    return part.bytes if hasattr(part, "bytes") else bytes(part)


def _as_buffer(part: Any) -> memoryview:
    """Zero-copy view of a zmq.Frame (or bytes-like), as unsigned bytes."""
    view = part.buffer if hasattr(part, "buffer") else memoryview(part)
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view
