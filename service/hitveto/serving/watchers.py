"""The watchers beside the model (docs/TRUST.md): the shadow peakfinder8, on the cores the daemon
leaves free, and the drift monitor, against the artifact's training profile. The inference loop
offers them judged frames; neither ever holds a verdict back."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hitveto.config import ServeConfig
from hitveto.models.artifact import Artifact
from hitveto.models.stream_profile import Profile
from hitveto.serving.drift import DriftMonitor
from hitveto.serving.inference import Watcher
from hitveto.serving.metrics import Metrics
from hitveto.serving.shadow import ShadowPeakfinder, spare_cores
from hitveto.serving.supervise import Supervised

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Watchers:
    shadow: ShadowPeakfinder | None
    drift: DriftMonitor | None

    @classmethod
    def start(cls, cfg: ServeConfig, artifact: Artifact, metrics: Metrics, *, cpu_engines: int) -> Watchers:
        """Those the config and the artifact allow, started."""
        workers = cfg.shadow.workers
        if artifact.spec.layout != "roi" and workers:
            # peakfinder8 needs the frame's pixels; a full-detector model is offered pooled panels
            log.warning("shadow peakfinder8 judges region models only: off for %s", artifact.info.version)
            workers = 0
        elif workers < 0:
            workers = spare_cores(
                ingest_workers=cfg.ingest.workers, cpu_threads=cfg.model.threads, cpu_engines=cpu_engines
            )
        shadow = None
        if workers:
            shadow = ShadowPeakfinder(cfg.shadow, workers=workers, spec=artifact.spec, metrics=metrics)
        drift = None
        if cfg.drift.enabled and artifact.info.profile:
            prof, info = Profile.from_dict(artifact.info.profile), artifact.info
            drift = DriftMonitor(
                cfg.drift, prof=prof, spec=artifact.spec, threshold=info.threshold, metrics=metrics
            )
            drift.thread.start()
        elif cfg.drift.enabled:
            log.warning("model %s carries no training profile: no drift scores", artifact.info.version)
        shown = f"{workers} processes" if workers else "off"
        log.info("shadow peakfinder8: %s; drift monitor: %s", shown, "on" if drift else "off")
        return cls(shadow=shadow, drift=drift)

    @property
    def active(self) -> list[Watcher]:
        return [w for w in (self.shadow, self.drift) if w is not None]

    @property
    def threads(self) -> list[Supervised]:
        return [self.drift.thread] if self.drift is not None else []

    def use(self, new: Artifact, old: Artifact) -> None:
        """Watch for `new` from now on (a reload replaced `old`)."""
        if self.drift is not None and new.info.profile:
            self.drift.use(Profile.from_dict(new.info.profile), new.spec, new.info.threshold)
        elif self.drift is not None:
            log.warning(
                "model %s carries no training profile: drift is still scored against %s's "
                "(hitveto profile adds one)",
                new.info.version,
                old.info.version,
            )
        if self.shadow is not None:
            self.shadow.use(new.spec)

    def stop(self) -> None:
        if self.drift is not None:
            self.drift.stop.set()
        if self.shadow is not None:
            self.shadow.close()
