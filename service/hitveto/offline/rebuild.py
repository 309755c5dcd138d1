"""A served artifact's network as a trainable module again: what `hitveto adapt` fine-tunes and
what `hitveto train-classes` reads its features from.

A frozen TorchScript module holds its weights as constants of its graph: each convolution's and
linear layer's (batch norm folded into the convolution before it), and for the full-detector
network its count levels and sharpness (`sub`, `mul`) and the radius input times its per-channel
weight (`add`). They are read in the order the graph uses them, which is the order the network
defines its layers in; batch norm is set to the identity (it is in the folded weights), the
radius weight is fitted to the folded product. The rebuilt network must give the frozen one's
scores before it is trusted.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hitveto.io import geometry
from hitveto.models import artifact, networks
from hitveto.models.artifact import Artifact, ArtifactError


def trainable(art: Artifact, adu_per_photon: float) -> networks.HitClassifier:
    """The artifact's network as a trainable module, normalising for `adu_per_photon`."""
    frozen = artifact.load_module(art, "cpu")
    radius = azimuth = None
    if art.spec.layout == "raw":
        radius = torch.from_numpy(geometry.panel_radius(art.spec.pool, art.spec.detector))
        azimuth = torch.from_numpy(geometry.panel_azimuth(art.spec.pool, art.spec.detector))
    net = networks.build(
        art.info.architecture, art.spec.roi_shape[0], art.info.adu_per_photon, radius, azimuth
    )
    try:
        with torch.no_grad():
            _load_constants(net, _graph_constants(frozen), with_classes=bool(art.info.classes))
    except (ValueError, RuntimeError) as exc:
        raise ArtifactError(
            f"{art.path}: cannot match its weights to a {art.info.architecture} network: {exc}"
        ) from None
    probe = torch.rand(4, *art.spec.roi_shape, generator=torch.Generator().manual_seed(0)) * 400
    with torch.no_grad():
        rebuilt, served = net.eval()(probe), frozen(probe)
    if served.ndim > 1:  # a model with verdict classes: its hit score first
        served = served[:, 0]
    if not torch.allclose(rebuilt, served, atol=1e-5):
        raise ArtifactError(f"{art.path}: the rebuilt network does not give the artifact's scores")
    return net if adu_per_photon == art.info.adu_per_photon else networks.at_gain(net, adu_per_photon)


def _graph_constants(frozen: Any) -> list[tuple[str, list[torch.Tensor]]]:
    """(op, its tensor constants) for each op of the graph that takes any, in graph order."""
    found = []
    for node in frozen.graph.nodes():
        consts = [
            i.toIValue()
            for i in node.inputs()
            if i.node().kind() == "prim::Constant" and i.type().kind() == "TensorType"
        ]
        if consts:
            found.append((node.kind(), consts))
    return found


def _load_constants(
    net: networks.HitClassifier, ops: list[tuple[str, list[torch.Tensor]]], *, with_classes: bool
) -> None:
    """The network's weights from the graph's ops; with classes (heads.ClassifiedHits), the hit
    network's ops come first, the heads' after them."""
    layers = [m for m in net.net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    weighted = [consts for kind, consts in ops if kind in ("aten::conv2d", "aten::linear")]
    if with_classes:
        weighted = weighted[: len(layers)]
    if len(weighted) != len(layers):
        raise ValueError(f"{len(weighted)} weighted ops in the graph, {len(layers)} layers in the network")
    for layer, (weight, *bias) in zip(layers, weighted):
        layer.weight.copy_(weight)
        if layer.bias is not None:
            layer.bias.copy_(bias[0])
    for bn in (m for m in net.net.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.reset_parameters()  # weight 1, bias 0, running mean 0, variance 1
        assert bn.running_var is not None
        bn.running_var.fill_(1.0 - bn.eps)  # (x - 0) / sqrt(var + eps) = x
    if isinstance(net.net, networks.PanelCNN):
        panels, r = net.net, net.net.radius  # radius_weight (1, c, 1, 1) x radius (P, 1, h, w)
        product = (panels.radius.shape[0], panels.radius_weight.shape[1], *panels.radius.shape[2:])
        panels.levels.copy_(_the(ops, "aten::sub", panels.levels.shape))
        panels.sharpness.copy_(_the(ops, "aten::mul", panels.sharpness.shape))
        folded = _the(ops, "aten::add", torch.Size(product))
        panels.radius_weight.copy_(((folded * r).sum(dim=(0, 2, 3)) / (r * r).sum()).reshape(1, -1, 1, 1))


def _the(ops: list[tuple[str, list[torch.Tensor]]], kind: str, shape: torch.Size) -> torch.Tensor:
    """The one constant of this shape the graph's `kind` ops take (the heads' ops take others)."""
    found = [c for k, consts in ops if k == kind for c in consts if c.shape == shape]
    if len(found) != 1:
        raise ValueError(f"{len(found)} {kind} constants of shape {tuple(shape)}, not one")
    return found[0]
