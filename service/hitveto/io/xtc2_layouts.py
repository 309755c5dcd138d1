"""How a run's frames are laid out in xtc2: Configure declares the detector, each L1Accept fills it.

- **A DAQ's detector**, for a raw stack in a detector's own words (the Jungfrau's, the ePix10ka's):
  one segment per module or panel, its `raw` array under the `raw` algorithm at the version psana's
  class for the dettype reads (jungfrau 0.2.0 is `jungfrau_raw_0_2_0`), as the LCLS-II DAQ writes
  them; `run.Detector(name).raw.raw(evt)` gives the stack back, as for a beamline's run. The pulse
  id and the simulator's truth ride beside it in a container named `hitveto`.
- **hitveto's container** for everything else (regions, calibrated frames, the CSPAD, whose raw
  class psana2 keeps in its tests): dettype `generic_container`, algorithm `xtc1dump` 0.1.0, the
  frame as one array `image`, `pulse_id`, and one int64 per truth field.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hitveto_client import detectors

CONTAINER = ("xtc1dump", 0, 1, 0)
TRUTH_DETECTOR = "hitveto"  # the container beside a DAQ detector's segments
RESERVED = frozenset({"config", "image", "pulse_id"})


class Container:
    """hitveto's named arrays: the frame (unless `with_image` is off), its pulse id and truth."""

    def __init__(self, de: Any, config: Any, name: str, first: Any, *, with_image: bool = True) -> None:
        self._names = sorted(first.truth)
        clash = RESERVED.intersection(self._names)
        if clash:
            raise ValueError(f"truth field names {sorted(clash)} are reserved")
        fields = {"pulse_id": (np.int64, 0), **dict.fromkeys(self._names, (np.int64, 0))}
        if with_image:
            fields["image"] = (first.image.dtype.type, first.image.ndim)
        self._with_image = with_image
        kind = de.DetectorDef(name, "generic_container", "hitveto")
        declared = config.Detector(kind, de.AlgDef(*CONTAINER), fields)
        self._data = getattr(declared, CONTAINER[0])

    def fill(self, dgram: Any, ev: Any) -> None:
        if self._with_image:
            self._data.image = np.ascontiguousarray(ev.image)
        self._data.pulse_id = int(ev.pulse_id)
        for name in self._names:
            setattr(self._data, name, int(ev.truth[name]))
        dgram.adddata(self._data)


class Segments:
    """A DAQ's detector: one `raw` segment per panel, and the truth container beside it."""

    def __init__(self, de: Any, config: Any, description: detectors.Detector, first: Any) -> None:
        name, version = description.name, description.psana_raw_version
        assert version is not None  # declare() chose this layout for it
        self._raw = [
            config.Detector(
                de.DetectorDef(name, description.psana_dettype, f"hitveto-sim-{name}-{i}"),
                de.AlgDef("raw", *version),
                {"raw": (first.image.dtype.type, 2)},
                segment=i,
            ).raw
            for i in range(first.image.shape[0])
        ]
        self._truth = Container(de, config, TRUTH_DETECTOR, first, with_image=False)

    def fill(self, dgram: Any, ev: Any) -> None:
        for panel, segment in zip(ev.image, self._raw, strict=True):
            segment.raw = np.ascontiguousarray(panel)
            dgram.adddata(segment)
        self._truth.fill(dgram, ev)


def declare(de: Any, config: Any, detector: str, first: Any) -> Container | Segments:
    """The layout for a run of `detector` whose first event is `first`, declared in `config`."""
    description = detectors.DETECTORS.get(detector)
    if (
        description is not None
        and description.psana_raw_version is not None
        and first.image.shape == description.raw_shape
        and first.image.dtype == np.dtype(description.raw_dtype)
    ):
        return Segments(de, config, description, first)
    return Container(de, config, detector, first)
