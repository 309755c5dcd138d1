"""All Prometheus metrics of the daemon, on a registry passed in (tests pass a fresh one).

Names are a contract: deploy/ dashboards and alert rules use them (docs/DAEMON.md, "Metrics").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

from hitveto_client.protocol import Reason

Make = Callable[..., Any]
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PREFIX = "hitveto_"
# Every (outcome, reason) a daemon publishes, at 0 from the start: rate() over a series that appears
# with its first frame misses that frame, so a first burst of overload keeps would go unseen.
PUBLISHED = (
    ("drop", Reason.MODEL),
    *(("keep", r) for r in Reason if r not in (Reason.NO_VERDICT, Reason.DUPLICATE)),
)


def _maker(kind: Any, registry: CollectorRegistry) -> Make:
    """make(name, documentation, *labels, **options): a `kind` metric named PREFIX + name on
    `registry`."""

    def make(name: str, documentation: str, *labels: str, **options: Any) -> Any:
        return kind(PREFIX + name, documentation, labels, registry=registry, **options)

    return make


class Metrics:
    """The daemon's metrics; one attribute per metric, named after what it counts."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._stream(_maker(Counter, registry), _maker(Gauge, registry), _maker(Histogram, registry))
        self._model_and_health(_maker(Counter, registry), _maker(Gauge, registry))
        self._trust(_maker(Counter, registry), _maker(Gauge, registry))
        ProcessCollector(registry=registry)
        self._server: Any = None

    def _stream(self, counter: Make, gauge: Make, histogram: Make) -> None:
        """Frames in, verdicts out, and the batches between."""
        self.frames = counter("frames_received_total", "Frames received on the ingest socket")
        self.verdicts = counter(
            "verdicts_total", "Verdicts published, by outcome and reason", "outcome", "reason"
        )
        for outcome, reason in PUBLISHED:
            self.verdicts.labels(outcome, reason.value)
        self.bad_frames = counter("bad_frames_total", "Frames rejected as malformed, by reason", "reason")
        self.frame_classes = counter(
            "frame_classes_total",
            "Judged frames by verdict class called (one frame may have several)",
            "class",
        )
        self.auth_failures = counter("auth_failures_total", "Connections refused by CURVE authentication")
        self.batch_size = histogram("batch_size", "Frames per inference batch", buckets=BATCH_BUCKETS)
        self.queue_depth = gauge("queue_depth", "Frames waiting for inference")
        self.inference = histogram("inference_seconds", "Model time per batch", buckets=LATENCY_BUCKETS_S)
        self.latency = histogram(
            "frame_latency_seconds", "Frame receipt to verdict publish, per frame", buckets=LATENCY_BUCKETS_S
        )
        self.subscribers = gauge("subscribers", "Verdict subscribers admitted")
        self.subscribers_refused = counter(
            "subscribers_refused_total", "Subscriptions refused over publish.max_subscribers"
        )

    def _model_and_health(self, counter: Make, gauge: Make) -> None:
        """What is served, whether the daemon is ready, and what went wrong inside it."""
        self.model_info = gauge(
            "model_info",
            "The model being served (value 1)",
            *("version", "architecture", "detector"),
            *("device", "sha256"),
        )
        self.threshold = gauge("model_threshold", "Decision threshold in use")
        self.ready = gauge("ready", "1 once the model is loaded and warm")
        self.gpu_memory = gauge("gpu_memory_bytes", "CUDA memory allocated by the engine")
        self.reloads = counter("reloads_total", "Model reload requests, by result", "result")
        self.thread_crashes = counter(
            "thread_crashes_total", "Worker thread crashes (each restarted, or given up: not ready)", "thread"
        )
        self.internal_errors = counter(
            "internal_errors_total",
            "Internal errors caught, by stage; the frames concerned are kept (model_error)",
            "stage",
        )
        self.out_of_distribution = counter(
            "out_of_distribution_frames_total",
            "Frames kept unjudged: their panels are not at a calibrated level (raw, or a wrong dark)",
        )
        self.nonfinite_frames = counter(
            "nonfinite_pixel_frames_total",
            "Frames with NaN/Inf pixels in the judged region (masked to 0, then judged)",
        )

    def _trust(self, counter: Make, gauge: Make) -> None:
        """The shadow peakfinder8, the drift monitor and learn mode (docs/TRUST.md)."""
        bound = "bound"
        self.shadow_frames = counter(
            "shadow_frames_total",
            "Frames judged by the shadow peakfinder8, by both verdicts",
            "model",
            "peakfinder8",
        )
        self.shadow_errors = counter("shadow_errors_total", "Frames the shadow peakfinder8 failed on")
        self.shadow_workers = gauge("shadow_workers", "Shadow peakfinder8 processes")
        self.shadow_target = gauge(
            "shadow_sensitivity_target", "Sensitivity the veto must keep (the alert's floor)"
        )
        self.shadow_window = gauge("shadow_window_frames", "Shadowed frames the estimates below cover")
        self.shadow_sensitivity = gauge(
            "shadow_sensitivity", "Model sensitivity against peakfinder8 labels, 95% Wilson bounds", bound
        )
        self.shadow_specificity = gauge(
            "shadow_specificity", "Model specificity against peakfinder8 labels, 95% Wilson bounds", bound
        )
        self.shadow_hit_rate = gauge(
            "shadow_hit_rate", "Hit rate on the shadowed frames by method, 95% Wilson bounds", "method", bound
        )
        self.learning = gauge("learn_mode", "1 while every frame is kept for `hitveto adapt`")
        self.drift_score = gauge(
            "drift_score", "Population stability index of the stream vs the training data", "statistic"
        )
        self.drift_window = gauge("drift_window_frames", "Measured frames the drift scores cover")

    def thread_crashed(self, name: str) -> None:
        self.thread_crashes.labels(name).inc()

    def count_verdict(self, keep: bool, reason: str, classes: Sequence[str] = ()) -> None:
        self.verdicts.labels("keep" if keep else "drop", reason).inc()
        for name in classes:
            self.frame_classes.labels(name).inc()

    def set_model(
        self,
        version: str,
        architecture: str,
        detector: str,
        device: str,
        sha256: str,
        threshold: float,
        classes: Sequence[str] = (),
    ) -> None:
        self.model_info.clear()
        self.model_info.labels(version, architecture, detector, device, sha256[:12]).set(1)
        self.threshold.set(threshold)
        for name in classes:  # each served class at 0 from the start: rate() counts its first frames
            self.frame_classes.labels(name)

    def set_shadow(self, estimates: dict[str, Any], frames: int) -> None:
        """Gauges from ShadowWindow.estimates()."""
        gauges = {
            "sensitivity": self.shadow_sensitivity.labels,
            "specificity": self.shadow_specificity.labels,
            "hit_rate_model": lambda b: self.shadow_hit_rate.labels("model", b),
            "hit_rate_peakfinder8": lambda b: self.shadow_hit_rate.labels("peakfinder8", b),
        }
        for name, e in estimates.items():
            for bound in ("value", "lower", "upper"):
                gauges[name](bound).set(getattr(e, bound))
        self.shadow_window.set(frames)

    def accounting(self) -> dict[str, Any]:
        """Counts read back from the registry: received, verdicts by outcome/reason, bad frames."""

        def by_labels(metric: Counter) -> dict[str, float]:
            return {
                "/".join(s.labels.values()): s.value
                for fam in metric.collect()
                for s in fam.samples
                if s.name.endswith("_total")
            }

        return {
            "frames_received": self.registry.get_sample_value("hitveto_frames_received_total"),
            "verdicts": by_labels(self.verdicts),
            "bad_frames": by_labels(self.bad_frames),
        }

    def serve(self, address: str, port: int) -> int:
        """Expose /metrics over HTTP; returns the bound port (port 0 picks a free one)."""
        self._server, _thread = start_http_server(port, addr=address, registry=self.registry)
        bound: int = self._server.server_address[1]
        return bound

    def close(self) -> None:
        """Stop the HTTP server (a stopped daemon must not look alive to Prometheus)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
