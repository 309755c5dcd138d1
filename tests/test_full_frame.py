"""The full-detector model (issue #24): every panel pooled, judged by one shared trunk, so that a hit
whose spots all lie outside the centre region is kept; the daemon serves it on raw frames."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

from hitveto.io import geometry
from hitveto.models import artifact, networks, preprocess
from hitveto.offline.train import RECIPES, fit, predict
from hitveto_client.protocol import Reason

from helpers import RAW, frames, running_daemon, sample, stream

CSPAD = geometry.RAW_SHAPE


def _sum2_max2(stack: np.ndarray) -> np.ndarray:
    """The reference: each 2x2 block summed (no overflow) and capped at 3x its pixels but the
    brightest, then the max of 2x2 of those."""
    p = stack[:, :184, :388].astype(np.float64)
    blocks = p.reshape(32, 92, 2, 194, 2)
    sums, brightest = blocks.sum(axis=(2, 4)), blocks.max(axis=(2, 4))
    capped = np.minimum(sums, 3 * (sums - brightest))
    return capped.reshape(32, 46, 2, 97, 2).max(axis=(2, 4)).reshape(1472, 97)


def test_pool_panels_caps_a_lone_bright_pixel_and_keeps_a_spread_spot():
    """A hot pixel is one pixel; a Bragg spot spreads over its 2x2 block: only the spot survives."""
    stack = np.zeros(CSPAD, dtype=np.int16)
    stack[0, 20, 20] = 3000  # hot pixel, alone in its block
    stack[1, 40:42, 60:62] = [[900, 500], [500, 300]]  # a spot: brightest pixel 41 % of its block
    pooled = preprocess.region(stack, preprocess.full_frame_spec("cspad", CSPAD, 35.0))
    assert pooled[46 * 0 + 5, 5] == 0
    assert pooled[46 * 1 + 10, 15] == 2200


def test_pool_panels_sums_then_maxes_every_panel_and_masks_nan_before_pooling():
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 16000, CSPAD, dtype=np.int16)  # sums of four overflow int16
    spec = preprocess.full_frame_spec("cspad", CSPAD, 35.0)
    assert spec.roi_shape == (1472, 97)
    assert np.array_equal(preprocess.region(stack, spec), _sum2_max2(stack))
    floats = stack.astype(np.float32)
    floats[3, 10, 10] = np.nan  # a bad pixel must not win its block (nor poison it): it counts 0
    pooled, bad = preprocess.masked_region(floats, spec)
    assert bad == 1 and np.isfinite(pooled).all()
    assert np.allclose(pooled, _sum2_max2(np.nan_to_num(floats, nan=0.0)))
    with pytest.raises(ValueError, match="even"):  # the pool sums 2x2 blocks first
        preprocess.full_frame_spec("cspad", CSPAD, 35.0, pool=3)


def _panels_artifact(path, raw_shape=RAW, *, bias: float = 0.0):
    """An untrained full-detector artifact for `raw_shape` frames (radius: distance from the centre)."""
    spec = preprocess.full_frame_spec("cspad", raw_shape, 10.0)
    n, h, w = (int(np.prod(raw_shape[:-2])), raw_shape[-2] // spec.pool, raw_shape[-1] // spec.pool)
    yy, xx = np.mgrid[:h, :w]
    radius = torch.from_numpy(
        np.broadcast_to(np.hypot(yy - h / 2, xx - w / 2) + 1, (n, h, w)).astype(np.float32)
    )
    torch.manual_seed(0)
    net = networks.build("panels", 0, 10.0, radius).eval()
    with torch.no_grad():
        net.net.classify[-1].bias.fill_(bias)
    info = artifact.ModelInfo(version="panels-test", architecture="panels", detector="cspad",
                              raw_shape=raw_shape, roi_shape=spec.roi_shape, adu_per_photon=10.0,
                              threshold=0.5, layout="raw", pool=spec.pool)  # fmt: skip
    return artifact.save(path, torch.jit.freeze(torch.jit.script(net)), info, None)


def test_a_full_frame_artifact_round_trips_and_the_daemon_judges_raw_frames_with_it(tmp_path):
    path = _panels_artifact(tmp_path / "panels.pt", bias=50.0)  # every frame a hit
    art = artifact.read(path)
    assert (art.spec.layout, art.spec.roi_shape, art.spec.roi_index) == ("raw", (20, 7), None)
    # The shadow peakfinder8 cannot judge pooled panels: asked for, it stays off, and all is judged.
    with running_daemon(path, **{"shadow.workers": 1}) as daemon:
        counts, decisions = stream(daemon, frames(40))
        assert sample(daemon, "hitveto_shadow_workers") == 0
    assert counts.sent == 40 and [d.reason for d in decisions] == [Reason.MODEL] * 40
    assert all(d.verdict is not None and d.verdict.hit for d in decisions)
    roi_model = dataclasses.replace(
        art, spec=dataclasses.replace(art.spec, layout="roi", roi_index=np.zeros((20, 7)))
    )
    with pytest.raises(artifact.ArtifactError, match="takes cspad"):
        artifact.check_swappable(art, roi_model)  # a reload cannot swap the layout under the stream


def _spots_outside_the_region(rng: np.random.Generator, n_spots: int) -> np.ndarray:
    """A CSPAD frame, background 0-2 photons (35 ADU), with n_spots 3x3 spots of 8-30 photons on
    the panels the centre region does not touch."""
    frame = (rng.poisson(0.3, CSPAD) * 35).astype(np.int16)
    in_region = np.unique(geometry.roi_index(350)[geometry.roi_index(350) >= 0] // (185 * 388))
    outer = np.setdiff1d(np.arange(32), in_region)
    for _ in range(n_spots):
        p, r, c = rng.choice(outer), rng.integers(2, 183), rng.integers(2, 386)
        frame[p, r - 1 : r + 2, c - 1 : c + 2] += np.int16(rng.integers(8, 30) * 35)
    return frame


@pytest.mark.slow
def test_the_full_frame_model_keeps_hits_whose_spots_all_lie_outside_the_centre_region():
    rng = np.random.default_rng(7)
    labels = rng.random(600) < 0.5  # 520 to train on (fewer overfit: 220 gave 0.71), 80 held out
    spec = preprocess.full_frame_spec("cspad", CSPAD, 35.0)
    region = geometry.roi_index(350)
    pooled, crop_max = [], 0
    for hit in labels:
        frame = _spots_outside_the_region(rng, int(rng.integers(12, 40)) if hit else 0)
        crop_max = max(crop_max, int(frame.reshape(-1)[region[region >= 0]].max()))
        pooled.append(preprocess.region(frame, spec))
    # What a region model sees: no spot at all in any hit's centre crop, only background.
    assert crop_max < 8 * 35
    x, y = np.stack(pooled), labels.astype(np.float32)
    torch.manual_seed(0)
    net = networks.build("panels", 0, 35.0, torch.from_numpy(geometry.panel_radius(spec.pool)))
    recipe = dataclasses.replace(RECIPES["fast"], augment=False, batch_size=16, epochs=18)
    fit(net, x[:520], y[:520], recipe, seed=0)
    scores = predict(net, x[520:])
    hits, misses = scores[labels[520:]], scores[~labels[520:]]
    # A region model, blind to every spot here, can do no better than chance (0.5 / 0.5).
    assert (hits >= 0.5).mean() >= 0.9 and (misses < 0.5).mean() >= 0.95


def test_the_audit_estimate_of_a_full_detector_model_counts_peaks_on_the_whole_detector(tmp_path):
    """Without truth, an audited frame is a hit by peakfinder8 where the model looks: for a
    full-detector model, every panel (the region would show none of these spots)."""
    from hitveto.offline.estimate import estimate
    from hitveto_client.cxi import CxiWriter

    rng = np.random.default_rng(3)
    with CxiWriter(tmp_path / "hits") as w:
        for i in range(6):
            frame = _spots_outside_the_region(rng, 40 if i < 2 else 0)
            w.write(frame, run=1, pulse_id=i, score=0.1, keep_reason=Reason.AUDIT.value)
    spec = preprocess.full_frame_spec("cspad", CSPAD, 35.0)
    loss = estimate(w.files, fraction=0.05, spec=spec)
    assert (loss.audited, loss.audited_hits, loss.labels) == (6, 2, "peakfinder8 >= 10")


@pytest.mark.parametrize("architecture", ["panels", "panels-local", "panels-rings"])
def test_a_detector_smaller_than_the_count_window_is_judged(architecture):
    """The soft counts look at the frame's 128 (512) brightest pixels, or all of a smaller detector's."""
    net = networks.build(architecture, 0, 35.0, torch.rand(2, 4, 6), torch.rand(2, 4, 6)).eval()
    scores = torch.jit.freeze(torch.jit.script(net))(torch.randint(0, 300, (3, 8, 6), dtype=torch.int32))
    assert scores.shape == (3,) and torch.isfinite(scores).all()


def _ring_panels(spots: int) -> torch.Tensor:
    """Two pooled panels (sqrt-photons): a bright smooth ring across the first (up to 9 above
    the panel's mean), and `spots` single pooled pixels 4 above their surroundings on both."""
    rows, cols = torch.meshgrid(torch.arange(40.0), torch.arange(60.0), indexing="ij")
    ring = 9.0 * torch.exp(-(((rows**2 + cols**2).sqrt() - 30.0) ** 2) / 50.0)
    panels = torch.stack([ring, torch.zeros_like(ring)]).unsqueeze(1)
    for i in range(spots):
        panels[i % 2, 0, 5 + 6 * (i // 2), 8 + 9 * (i // 2)] += 4.0
    return panels


def test_local_background_counts_spots_on_a_bright_ring_and_not_the_ring():
    """Counted above their panel's mean, a ring's pixels outnumber a weak hit's spots; above their
    neighbourhood's (panels-local), only the spots count, wherever they lie."""

    def counted(architecture: str, spots: int) -> float:
        net = networks.build(architecture, 0, 10.0, torch.rand(2, 40, 60)).net
        with torch.no_grad():
            panels = _ring_panels(spots)
            panels = panels - panels.mean(dim=(2, 3), keepdim=True)
            return float(torch.expm1(net.spot_counts(net.brightest(panels, 1)[0]))[0, 0])  # level 3

    assert counted("panels", 0) > 40  # the ring alone "is" a hit
    assert counted("panels-local", 0) < 1
    assert 10 <= counted("panels-local", 12) <= 14


def test_the_neighbourhood_mean_is_avg_pools_without_the_padding_counted():
    """panels-local's running-sum mean is the plain one (a quarter of its cost on a CPU)."""
    x = torch.rand(3, 1, 20, 33) ** 8 * 30  # a few bright pixels on a dim background
    plain = torch.nn.functional.avg_pool2d(
        torch.nn.functional.avg_pool2d(x, (5, 1), stride=1, padding=(2, 0), count_include_pad=False),
        (1, 5),
        stride=1,
        padding=(0, 2),
        count_include_pad=False,
    )
    assert torch.allclose(networks._local_mean(x, 5), plain, atol=1e-5)


ICE_RINGS_PX = (317.0, 340.0, 367.0)  # the strongest ice rings at 9.5 keV and 100 mm, raw pixels


@functools.cache
def _pixels_by_radius() -> tuple[np.ndarray, np.ndarray]:
    """The raw pixels' radii, sorted, and their flat indices in that order."""
    radius = geometry.radius_px(geometry.pixel_map("raw", 0.1)).reshape(-1)
    order = np.argsort(radius)
    return radius[order], order


def _spots_on_rings_or_anywhere(rng: np.random.Generator, n_spots: int, on_rings: bool) -> np.ndarray:
    """A CSPAD frame as _spots_outside_the_region's, its n_spots on the three ice rings (ice
    crystallites; the rings' radii scaled by 0.6-1.4, as other energies and distances move them)
    or anywhere on the detector (a lattice's)."""
    frame = (rng.poisson(0.3, CSPAD) * 35).astype(np.int16)
    radii, order = _pixels_by_radius()
    scale = rng.uniform(0.6, 1.4)
    for _ in range(n_spots):
        if on_rings:
            ring = ICE_RINGS_PX[rng.integers(len(ICE_RINGS_PX))] * scale
            low, high = np.searchsorted(radii, [ring - 1.0, ring + 1.0])
            p, r, c = np.unravel_index(order[rng.integers(low, high)], CSPAD)
        else:
            p, r, c = rng.integers(0, 32), rng.integers(0, 185), rng.integers(0, 388)
        r, c = int(np.clip(r, 1, 183)), int(np.clip(c, 1, 386))
        frame[p, r - 1 : r + 2, c - 1 : c + 2] += np.int16(rng.integers(8, 30) * 35)
    return frame


@pytest.mark.slow
def test_panels_rings_tells_spots_on_ice_rings_from_a_lattices_spots_anywhere():
    """The same spots, as many and as bright: on three rings round the beam (ice crystallites, no
    crystal) or anywhere (a lattice). panels-rings, which also reads where its counted pixels
    lie, tells them apart on frames it did not train on."""
    rng = np.random.default_rng(11)
    anywhere = rng.random(400) < 0.5
    spec = preprocess.full_frame_spec("cspad", CSPAD, 35.0)
    x = np.stack(
        [
            preprocess.region(_spots_on_rings_or_anywhere(rng, int(rng.integers(12, 40)), not a), spec)
            for a in anywhere
        ]
    )
    torch.manual_seed(0)
    maps = (
        torch.from_numpy(geometry.panel_radius(spec.pool)),
        torch.from_numpy(geometry.panel_azimuth(spec.pool)),
    )
    net = networks.build("panels-rings", 0, 35.0, *maps)
    recipe = dataclasses.replace(RECIPES["fast"], augment=False, batch_size=16, epochs=12)
    fit(net, x[:320], anywhere[:320].astype(np.float32), recipe, seed=0)
    scores = predict(net, x[320:])
    lattice, ice = scores[anywhere[320:]], scores[~anywhere[320:]]
    assert (lattice >= 0.5).mean() >= 0.9 and (ice < 0.5).mean() >= 0.9
