"""All Prometheus metrics of the daemon, on a registry passed in (tests pass a fresh one).

Names are a contract: deploy/ dashboards and alert rules use them (docs/DAEMON.md, "Metrics").
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client import ProcessCollector

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.frames = Counter("hitveto_frames_received_total", "Frames received on the ingest socket",
                              registry=registry)
        self.verdicts = Counter("hitveto_verdicts_total", "Verdicts published, by outcome and reason",
                                ["outcome", "reason"], registry=registry)
        self.bad_frames = Counter("hitveto_bad_frames_total", "Frames rejected as malformed, by reason",
                                  ["reason"], registry=registry)
        self.auth_failures = Counter("hitveto_auth_failures_total",
                                     "Connections refused by CURVE authentication", registry=registry)
        self.batch_size = Histogram("hitveto_batch_size", "Frames per inference batch",
                                    buckets=BATCH_BUCKETS, registry=registry)
        self.queue_depth = Gauge("hitveto_queue_depth", "Frames waiting for inference",
                                 registry=registry)
        self.inference = Histogram("hitveto_inference_seconds", "Model time per batch",
                                   buckets=LATENCY_BUCKETS_S, registry=registry)
        self.latency = Histogram("hitveto_frame_latency_seconds",
                                 "Frame receipt to verdict publish, per frame",
                                 buckets=LATENCY_BUCKETS_S, registry=registry)
        self.model_info = Gauge("hitveto_model_info", "The model being served (value 1)",
                                ["version", "architecture", "detector", "device", "sha256"],
                                registry=registry)
        self.threshold = Gauge("hitveto_model_threshold", "Decision threshold in use", registry=registry)
        self.ready = Gauge("hitveto_ready", "1 once the model is loaded and warm", registry=registry)
        self.gpu_memory = Gauge("hitveto_gpu_memory_bytes", "CUDA memory allocated by the engine",
                                registry=registry)
        self.shadow_frames = Counter("hitveto_shadow_frames_total",
                                     "Frames judged by the shadow peakfinder8, by both verdicts",
                                     ["model", "peakfinder8"], registry=registry)
        self.shadow_errors = Counter("hitveto_shadow_errors_total",
                                     "Frames the shadow peakfinder8 failed on", registry=registry)
        self.shadow_workers = Gauge("hitveto_shadow_workers", "Shadow peakfinder8 processes",
                                    registry=registry)
        self.shadow_target = Gauge("hitveto_shadow_sensitivity_target",
                                   "Sensitivity the veto must keep (the alert's floor)",
                                   registry=registry)
        self.shadow_window = Gauge("hitveto_shadow_window_frames",
                                   "Shadowed frames the estimates below cover", registry=registry)
        self.shadow_sensitivity = Gauge("hitveto_shadow_sensitivity",
                                        "Model sensitivity against peakfinder8 labels, 95% Wilson bounds",
                                        ["bound"], registry=registry)
        self.shadow_specificity = Gauge("hitveto_shadow_specificity",
                                        "Model specificity against peakfinder8 labels, 95% Wilson bounds",
                                        ["bound"], registry=registry)
        self.shadow_hit_rate = Gauge("hitveto_shadow_hit_rate",
                                     "Hit rate on the shadowed frames by method, 95% Wilson bounds",
                                     ["method", "bound"], registry=registry)
        self.learning = Gauge("hitveto_learn_mode", "1 while every frame is kept for `hitveto adapt`",
                              registry=registry)
        self.drift_score = Gauge("hitveto_drift_score",
                                 "Population stability index of the stream vs the training data",
                                 ["statistic"], registry=registry)
        self.drift_window = Gauge("hitveto_drift_window_frames",
                                  "Measured frames the drift scores cover", registry=registry)
        self.thread_crashes = Counter("hitveto_thread_crashes_total",
                                      "Worker thread crashes (each restarted, or given up: not ready)",
                                      ["thread"], registry=registry)
        self.internal_errors = Counter("hitveto_internal_errors_total",
                                       "Internal errors caught, by stage; the frames concerned are "
                                       "kept (model_error)", ["stage"], registry=registry)
        self.nonfinite_frames = Counter("hitveto_nonfinite_pixel_frames_total",
                                        "Frames with NaN/Inf pixels in the judged region (masked to 0, "
                                        "then judged)", registry=registry)
        self.reloads = Counter("hitveto_reloads_total", "Model reload requests, by result",
                               ["result"], registry=registry)
        self.subscribers = Gauge("hitveto_subscribers", "Verdict subscribers admitted",
                                 registry=registry)
        self.subscribers_refused = Counter("hitveto_subscribers_refused_total",
                                           "Subscriptions refused over publish.max_subscribers",
                                           registry=registry)
        ProcessCollector(registry=registry)
        self._server: Any = None

    def thread_crashed(self, name: str) -> None:
        self.thread_crashes.labels(name).inc()

    def count_verdict(self, keep: bool, reason: str) -> None:
        self.verdicts.labels("keep" if keep else "drop", reason).inc()

    def set_model(self, version: str, architecture: str, detector: str, device: str, sha256: str,
                  threshold: float) -> None:
        self.model_info.clear()
        self.model_info.labels(version, architecture, detector, device, sha256[:12]).set(1)
        self.threshold.set(threshold)

    def set_shadow(self, estimates: dict, frames: int) -> None:
        """Gauges from ShadowWindow.estimates()."""
        gauges = {"sensitivity": self.shadow_sensitivity.labels,
                  "specificity": self.shadow_specificity.labels,
                  "hit_rate_model": lambda b: self.shadow_hit_rate.labels("model", b),
                  "hit_rate_peakfinder8": lambda b: self.shadow_hit_rate.labels("peakfinder8", b)}
        for name, e in estimates.items():
            for bound in ("value", "lower", "upper"):
                gauges[name](bound).set(getattr(e, bound))
        self.shadow_window.set(frames)

    def accounting(self) -> dict:
        """Counts read back from the registry: received, verdicts by outcome/reason, bad frames."""
        def by_labels(metric) -> dict[str, float]:
            return {"/".join(s.labels.values()): s.value for fam in metric.collect()
                    for s in fam.samples if s.name.endswith("_total")}
        return {"frames_received": self.registry.get_sample_value("hitveto_frames_received_total"),
                "verdicts": by_labels(self.verdicts), "bad_frames": by_labels(self.bad_frames)}

    def serve(self, address: str, port: int) -> int:
        """Expose /metrics over HTTP; returns the bound port (port 0 picks a free one)."""
        self._server, _thread = start_http_server(port, addr=address, registry=self.registry)
        return self._server.server_address[1]

    def close(self) -> None:
        """Stop the HTTP server (a stopped daemon must not look alive to Prometheus)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
