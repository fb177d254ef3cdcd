"""MSN as a space: Meta Segmentation Network for ultra-resolution images (Wu, Dai, Chen, Qu, Xie;
IJCAI 2020), 2D only.

Three crops of one size centred on one point at three magnifications (``downsamples``, default
1, 4, 16): X1 (finest), X2, X3 (coarsest, widest field), with their label crops Y1, Y2, Y3. They
come through the data view (``DataView(context=(d2, d3), context_labels=True)``), so training
patches, validation and whole-image prediction (every window gets its own X2, X3 cut from the
whole image) read them the same way from arrays, big images and slide pyramids.

One backbone (the *Mainbody*) serves all three branches. The meta-branch runs it on X3 -> S3 and
keeps the feature map of every candidate gap layer (Mem-FP). Branches 1 and 2 run the same
backbone on X1 and X2; at a kept gap layer l the layer output B is replaced by eq. (1)'s
Mem-RM, ``B' = f(cat(B, up(crop(A_l))))``, with A_l the meta-feature. The two branch outputs are
fused by Meta-FM (eqs. 2-3): an FC-ReLU-FC learner maps the negative gradients of the branches'
output layers to the weights of two 3x3 fusion convolutions. Training is the paper's three steps
(:meth:`MSNSpace.training_stages`).

Searched: where the gap layers are (the paper reads them off activation statistics, Fig. 1).
Every conv-block output of the backbone is a candidate gap layer l = 1..L; the connection
``gap_x{i}_l{l}`` (or ``gap_l{l}`` for both branches, knob ``share_gap_gates``) chooses among
``[plain B, Mem-RM B']``: keep {1} is eq. (1), {0} is no Mem-RM (its module is not built), {0, 1}
the residual ``B + B'``; the op choice ``memrm_x{i}_l{l}`` picks Mem-RM's f (``conv3x2``,
``conv3``, ``conv1``). The architecture moves only in the ``memrm`` stage, on the branches'
loss L(S1, Y1) + L(S2, Y2). The paper's rule is kept as a baseline: :func:`gap_statistics` (per layer |mean(X_i) - mean(X3)| and |var(X_i) - var(X3)|
through the trained meta-branch) and :func:`stats_sample` (the top k layers as gaps).

Decisions the paper leaves open:

- Backbone: a small U-Net (two 3x3 ConvNormAct per block, ``features * 2**l`` channels, max
  pools with ``ceil_mode``, bilinear up + 1x1 ConvNormAct, concatenated skips) ending in a 1x1
  output layer W_o (needed for the closed-form gradients). Gap candidates in forward order:
  the encoder blocks, then the decoder blocks (L = 2 * levels - 1). A replaced encoder feature
  also feeds its skip.
- Mem-RM: crop and upsample are one bilinear ``grid_sample`` with the affine
  ``[[r, 0, 0], [0, r, 0]]`` (``align_corners=False``), r = d_i / d_3, exact for fractional
  crops; f defaults to ConvNormAct 3x3 (2C -> C) -> ConvNormAct 3x3 (C -> C); one Mem-RM per
  branch and layer. The crop is centred on the map's centre, so patch sizes should be even
  (the views centre X2, X3 on pixel ``p // 2``; odd sizes are off by half a pixel).
- Meta-FM sizes (spec, from Table 5): the fusion reads ``cat(S1, S2')`` (2Nc channels), conv
  3x3 (2Nc -> Nc), ReLU, conv 3x3 (Nc -> Nc), no biases: |W| = 27 Nc^2. The learner's input is
  sigma (2 |W_o|, weights only), hidden width knob ``meta_hidden`` (default 8). ``fusion=plain``
  is the same two convs (with biases) trained by backprop (Table 5 "w/o Meta").
- sigma is per sample (each sample's own loss), in closed form: for a 1x1 output conv
  dL/dW_o[c, k] = mean_p (softmax(S) - Y)[c, p] h[k, p], h the input of W_o. For S2' =
  up(crop(S2)) the same holds with h2 cropped and upsampled alike (crop/up is linear per
  channel, so S2' = W_o up(crop(h2)) + b). No autograd is involved: it works with the weights'
  ``requires_grad`` off, under ``no_grad``, and traces for export. sigma is an input of the
  learner (no gradient flows back through it); ``sigma_norm=l2`` scales each branch's part to
  unit length.
- Test time (the paper does not say; sigma needs Y1): ``meta_eval=stored`` (default) keeps
  W* = an exponential moving average (momentum 0.9) of the batch mean of the generated weights
  over the training steps of the ``fusion`` stage, and eval mode fuses with W*; the learner is
  then training-only (left out of exports and counts), and an export holds two fixed fusion
  convs. ``meta_eval=pseudo_label`` computes sigma with argmax(S1) in place of Y1 (exported
  with the learner: sigma's closed form traces). Eval mode never reads the label; before any fusion step
  (W* unset) it uses the pseudo-label path.
- Stages (Adam in the paper; nasseg's AdamW here): ``meta`` (share 3, the paper's 30 epochs)
  trains the backbone on L(S3, Y3); ``memrm`` (share 1) trains the Mem-RMs on
  L(S1, Y1) + L(S2, Y2) with the backbone frozen (and in eval mode), searching the gates;
  ``fusion`` (share 1) trains Meta-FM on L(S, Y1), all else frozen. Cross-entropy, mean
  reduction. ``meta`` uses the first ``1 - sub_share`` of the training cases, the later stages
  the rest (the sub-training set); ``steps23_data=all`` trains every stage on all (MSN+*). A
  derived net without Mem-RMs and with shared weights has no ``memrm`` stage; its share goes to
  ``fusion``, so the meta-branch trains exactly as long as in the other variants.
- ``share_weights=False`` is Table 3's multi-branch: three backbones (``backbones.x1`` ..
  ``x3``); ``meta`` trains x3's, ``memrm`` trains x1's and x2's with their Mem-RMs.
- Metrics: mIoU over all classes (background included, accumulated over the set) of each
  branch against its own field's labels (``miou_x1``, ``miou_x2``, ``miou_x3``) and of the fusion
  against Y1 (``miou_fusion``, the selection metric).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import pairwise
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from nasseg.data.views import DataView
from nasseg.evaluation.metrics import DiceAccumulator
from nasseg.ops import ConvNormAct, StackedConv, Upsample
from nasseg.space import SearchSpace, TrainingStage, register_space

__all__ = ["BRANCHES", "Backbone", "MSNMetrics", "MSNSpace", "MemRM", "MetaFusion",
           "PlainFusion", "crop_up", "gap_statistics", "memrm_candidates", "output_layer_sigma",
           "stats_sample"]

#: The non-meta branches (X1, X2) and the meta-branch (X3).
BRANCHES = ("x1", "x2", "x3")
#: Momentum of the stored fusion weights W* (exponential moving average over fusion steps).
STORED_MOMENTUM = 0.9
_EPS = 1e-12


def crop_up(x: torch.Tensor, ratio: float, size: Sequence[int] | None = None) -> torch.Tensor:
    """The central ``ratio`` of each side of ``x`` (B, C, H, W), bilinearly resampled to ``size``
    (default: ``x``'s own size): eq. (1)'s ``up(crop(.))`` as one ``grid_sample`` (the affine
    grid ``[[r, 0, 0], [0, r, 0]]``, ``align_corners=False``, built by hand so it exports)."""
    h, w = tuple(x.shape[2:]) if size is None else (int(size[0]), int(size[1]))

    def axis(n: int) -> torch.Tensor:
        return ratio * ((2 * torch.arange(n, device=x.device, dtype=x.dtype) + 1) / n - 1)

    gy, gx = torch.meshgrid(axis(h), axis(w), indexing="ij")
    grid = torch.stack([gx, gy], -1).unsqueeze(0).expand(x.shape[0], h, w, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def output_layer_sigma(logits: torch.Tensor, features: torch.Tensor, target: torch.Tensor
                       ) -> torch.Tensor:
    """Per sample, ``-dL/dW_o`` flattened ``(B, K * C)`` for a 1x1 output conv W_o (K x C) that
    maps ``features`` (B, C, H, W) to ``logits`` (B, K, H, W), L the pixel-mean cross-entropy
    against ``target`` (B, H, W): ``-mean_p (softmax - onehot)[c, p] * features[k, p]``."""
    err = logits.float().softmax(1) - F.one_hot(target.long(), logits.shape[1]).movedim(-1, 1)
    grad = torch.einsum("bkp,bcp->bkc", err.flatten(2), features.float().flatten(2))
    return -(grad / err[0, 0].numel()).flatten(1)


class Backbone(nn.Module):
    """The Mainbody: a small U-Net whose conv-block outputs are the candidate gap layers.

    ``forward(x, recall)`` returns ``(logits, h, features)``: h is the input of the output layer
    W_o (``head``), ``features`` the output of every gap layer (after ``recall``). ``recall(l, B)``
    may replace layer l's output (1-based, forward order).
    """

    def __init__(self, in_channels: int, num_classes: int, features: int, levels: int) -> None:
        super().__init__()
        chans = [features * 2 ** lvl for lvl in range(levels)]
        self.levels = levels
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.encoder = nn.ModuleList(StackedConv(2, in_channels if lvl == 0 else chans[lvl - 1],
                                                 chans[lvl], [3, 3]) for lvl in range(levels))
        self.up = nn.ModuleList(Upsample(2, chans[lvl + 1], chans[lvl], "interp")
                                for lvl in range(levels - 1))
        self.decoder = nn.ModuleList(StackedConv(2, 2 * chans[lvl], chans[lvl], [3, 3])
                                     for lvl in range(levels - 1))
        self.head = nn.Conv2d(chans[0], num_classes, 1)
        #: channels of gap layers 1..L
        self.layer_channels = chans + chans[-2::-1]

    @property
    def num_layers(self) -> int:
        """L, the number of candidate gap layers."""
        return len(self.layer_channels)

    def forward(self, x: torch.Tensor, recall: Any = None
                ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        feats: list[torch.Tensor] = []

        def layer(out: torch.Tensor) -> torch.Tensor:
            out = out if recall is None else recall(len(feats) + 1, out)
            feats.append(out)
            return out

        skips = []
        for lvl, block in enumerate(self.encoder):
            x = layer(block(self.pool(x) if lvl else x))
            skips.append(x)
        for lvl in range(self.levels - 2, -1, -1):
            up = self.up[lvl](x)
            if up.shape[2:] != skips[lvl].shape[2:]:
                up = F.interpolate(up, size=skips[lvl].shape[2:], mode="bilinear",
                                   align_corners=False)
            x = layer(self.decoder[lvl](torch.cat([up, skips[lvl]], 1)))
        return self.head(x), x, feats


def memrm_candidates(channels: int) -> dict[str, Callable[[], nn.Module]]:
    """Mem-RM's f on ``cat(B, up(crop(A)))`` (2C -> C): two 3x3 ConvNormAct (the default),
    one 3x3, one 1x1."""
    return {"conv3x2": lambda: StackedConv(2, 2 * channels, channels, [3, 3]),
            "conv3": lambda: ConvNormAct(2, 2 * channels, channels, 3),
            "conv1": lambda: ConvNormAct(2, 2 * channels, channels, 1)}


class MemRM(nn.Module):
    """Eq. (1): ``B' = f(cat(B, up(crop(A))))``, A cropped to its central ``ratio``."""

    def __init__(self, f: nn.Module, ratio: float) -> None:
        super().__init__()
        self.ratio = ratio
        self.f = f

    def forward(self, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.f(torch.cat([b, crop_up(a, self.ratio, b.shape[2:])], 1))


class PlainFusion(nn.Module):
    """Table 5's "w/o Meta": conv 3x3 (2Nc -> Nc) -> ReLU -> conv 3x3 (Nc -> Nc), trained by
    backprop (440 parameters for Nc = 4)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(2 * num_classes, num_classes, 3, padding=1),
                                   nn.ReLU(), nn.Conv2d(num_classes, num_classes, 3, padding=1))

    def forward(self, s1: torch.Tensor, s2p: torch.Tensor, **_: Any) -> torch.Tensor:
        return self.convs(torch.cat([s1, s2p], 1))


def _fusion_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """3x3 conv (padding 1, no bias) of ``x`` (B, Cin, H, W) with one ``weight`` (Cout, Cin, 3,
    3) for all samples, or one per sample (B, Cout, Cin, 3, 3) as an unfolded product."""
    if weight.ndim == 4:
        return F.conv2d(x, weight, padding=1)
    cols = F.unfold(x, 3, padding=1)  # (B, Cin * 9, H * W)
    out = torch.einsum("bok,bkp->bop", weight.flatten(2), cols)
    return out.view(x.shape[0], weight.shape[1], x.shape[2], x.shape[3])


class MetaFusion(nn.Module):
    """Meta-FM, eqs. (2)-(3): ``W = learner(sigma)`` are the weights of the two fusion convs.

    Args:
        num_classes: Nc.
        head_channels: input channels of the output layer W_o (|W_o| = Nc * head_channels).
        hidden: the learner's hidden width.
        sigma_norm: ``none`` or ``l2`` (each branch's part of sigma at unit length).
        meta_eval: ``stored`` (eval fuses with W*) or ``pseudo_label`` (sigma from argmax S1).
    """

    def __init__(self, num_classes: int, head_channels: int, hidden: int, sigma_norm: str,
                 meta_eval: str) -> None:
        super().__init__()
        self.num_classes, self.sigma_norm, self.meta_eval = num_classes, sigma_norm, meta_eval
        self.sigma_size = 2 * num_classes * head_channels
        self.weight_size = 27 * num_classes ** 2
        self.learner = nn.Sequential(nn.Linear(self.sigma_size, hidden), nn.ReLU(),
                                     nn.Linear(hidden, self.weight_size))
        self.register_buffer("stored", torch.zeros(self.weight_size))
        self.register_buffer("stored_steps", torch.zeros((), dtype=torch.long))

    def sigma(self, s1: torch.Tensor, h1: torch.Tensor, s2p: torch.Tensor, h2p: torch.Tensor,
              target: torch.Tensor) -> torch.Tensor:
        """Eq. (3): ``cat(-dL(S1, Y1)/dW_o1, -dL(S2', Y1)/dW_o2)`` per sample, ``(B, 2|W_o|)``."""
        parts = [output_layer_sigma(s1, h1, target), output_layer_sigma(s2p, h2p, target)]
        if self.sigma_norm == "l2":
            parts = [p / (p.norm(dim=1, keepdim=True) + _EPS) for p in parts]
        return torch.cat(parts, 1)

    def split(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(..., 27 Nc^2)`` -> W1 ``(..., Nc, 2Nc, 3, 3)`` and W2 ``(..., Nc, Nc, 3, 3)``
        (``...``: the batch for per-sample weights, nothing for W*)."""
        k, lead = self.num_classes, weights.shape[:-1]
        first = 18 * k * k
        return (weights[..., :first].reshape(*lead, k, 2 * k, 3, 3),
                weights[..., first:].reshape(*lead, k, k, 3, 3))

    def generate(self, s1: torch.Tensor, h1: torch.Tensor, s2p: torch.Tensor,
                 h2p: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """The fusion weights of this batch: ``(B, 27 Nc^2)`` generated per sample, or W*
        ``(27 Nc^2,)`` in eval mode under ``meta_eval=stored`` (see the module docstring)."""
        if not self.training and self.meta_eval == "stored" and int(self.stored_steps) > 0:
            return self.stored
        if target is None or not self.training:
            target = s1.argmax(1)
        weights = self.learner(self.sigma(s1, h1, s2p, h2p, target).detach().to(s1.dtype))
        if self.training and torch.is_grad_enabled() and self.learner[0].weight.requires_grad:
            with torch.no_grad():
                mean = weights.detach().float().mean(0)
                first = int(self.stored_steps) == 0
                self.stored.mul_(0.0 if first else STORED_MOMENTUM).add_(
                    mean, alpha=1.0 if first else 1.0 - STORED_MOMENTUM)
                self.stored_steps += 1
        return weights

    def forward(self, s1: torch.Tensor, s2p: torch.Tensor, h1: torch.Tensor,
                h2p: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        w1, w2 = self.split(self.generate(s1, h1, s2p, h2p, target).to(s1.dtype))
        return _fusion_conv(F.relu(_fusion_conv(torch.cat([s1, s2p], 1), w1)), w2)


class MSNMetrics:
    """mIoU (all classes, over the whole set) of each branch against its own field's labels and
    of the fusion against Y1."""

    def __init__(self, num_classes: int) -> None:
        self.acc = {name: DiceAccumulator(num_classes) for name in ("x1", "x2", "x3", "fusion")}

    def update(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> None:
        label = batch["label"].cpu()
        refs = {"x1": label, "fusion": label}
        if "context_label" in batch:
            refs.update(x2=batch["context_label"][:, 0].cpu(), x3=batch["context_label"][:, 1].cpu())
        keys = {"x1": "s1", "x2": "s2", "x3": "s3", "fusion": "seg"}
        for name, ref in refs.items():
            self.acc[name].update(outputs[keys[name]].argmax(1).cpu(), ref)

    def compute(self) -> dict[str, float]:
        return {f"miou_{name}": acc.mean_iou() for name, acc in self.acc.items()}


@register_space("msn")
class MSNSpace(SearchSpace):
    """MSN: shared Mainbody on X1, X2, X3, Mem-RMs at searched gap layers, Meta-FM fusion.

    Args:
        in_channels: image channels.
        num_classes: classes Nc, background included.
        spatial_dims: must be 2.
        features: channels of the backbone's first level, doubled per level.
        levels: backbone levels (>= 2); L = 2 * levels - 1 candidate gap layers.
        downsamples: the magnifications of X1, X2, X3 relative to the image (first 1; whole
            numbers, each a multiple of the previous: (1, 4, 16) BACH, (1, 2, 4) ISIC).

    Knobs: ``share_weights``, ``share_gap_gates``, ``fusion`` (``meta``/``plain``),
    ``meta_hidden``, ``sigma_norm``, ``meta_eval``, ``steps23_data``, ``sub_share``,
    ``gate_reg``. See the module docstring for every decision.
    """

    supported_dims = (2,)
    selection_metric = "miou_fusion"

    def __init__(self, in_channels: int = 1, num_classes: int = 2, spatial_dims: int = 2,
                 features: int = 8, levels: int = 3,
                 downsamples: Sequence[int] = (1, 4, 16)) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"msn runs on 2D images only (multi-magnification crops of slides "
                             f"and large images), got spatial_dims={spatial_dims}")
        if levels < 2:
            raise ValueError(f"levels must be >= 2, got {levels}")
        ds = [int(d) for d in downsamples]
        if (len(ds) != 3 or ds[0] != 1 or list(downsamples) != ds
                or any(b <= a or b % a for a, b in pairwise(ds))):
            raise ValueError(f"downsamples must be three whole numbers 1 < d2 < d3, each a "
                             f"multiple of the previous, got {list(downsamples)}")
        self.num_classes, self.downsamples = num_classes, tuple(ds)
        self.share_weights = self.knob("share_weights", [True, False])
        self.share_gates = self.knob("share_gap_gates", [False, True])
        self.fusion_kind = self.knob("fusion", ["meta", "plain"])
        hidden = self.knob("meta_hidden", [8, 4, 16, 32], active_if={"fusion": ["meta"]})
        sigma_norm = self.knob("sigma_norm", ["none", "l2"], active_if={"fusion": ["meta"]})
        self.meta_eval = self.knob("meta_eval", ["stored", "pseudo_label"],
                                   active_if={"fusion": ["meta"]})
        self.steps23 = self.knob("steps23_data", ["sub", "all"])
        self.sub_share = self.knob("sub_share", low=0.05, high=0.95, default=0.25,
                                   active_if={"steps23_data": ["sub"]})

        if self.share_weights:
            self.backbone = Backbone(in_channels, num_classes, features, levels)
            layers = self.backbone.layer_channels
        else:
            self.backbones = nn.ModuleDict({b: Backbone(in_channels, num_classes, features, levels)
                                            for b in BRANCHES})
            layers = self.backbones["x1"].layer_channels
        self.num_layers = len(layers)
        self._declare_topology()
        ratios = {"x1": ds[0] / ds[2], "x2": ds[1] / ds[2]}
        self.gaps = nn.ModuleDict()
        self.memrm = nn.ModuleDict()
        for branch in ("x1", "x2"):
            for lvl, channels in enumerate(layers, 1):
                label, node = self.gap_label(branch, lvl)
                key = f"{branch}_l{lvl}"
                self.gaps[key] = self.connection_choice(label, node,
                                                        [f"{node}_plain", f"{node}_memrm"])
                if 1 in self.gaps[key].kept:
                    f = self.op_choice(f"memrm_{key}", memrm_candidates(channels),
                                       node=f"{node}_memrm")
                    self.memrm[key] = MemRM(f, ratios[branch])
        self.fusion: nn.Module = (
            MetaFusion(num_classes, features, hidden, sigma_norm, self.meta_eval)
            if self.fusion_kind == "meta" else PlainFusion(num_classes))

    def gap_label(self, branch: str, layer: int) -> tuple[str, str]:
        """The connection label and node of ``branch``'s gap gate at ``layer``."""
        if self.share_gates:
            return f"gap_l{layer}", f"l{layer}"
        return f"gap_{branch}_l{layer}", f"{branch}_l{layer}"

    def _declare_topology(self) -> None:
        self.fixed_edge("x3", "meta")
        self.fixed_edge("meta", "s3")
        for branch in ("x1", "x2"):
            prev = branch
            for lvl in range(1, self.num_layers + 1):
                label, node = self.gap_label(branch, lvl)
                self.fixed_edge(prev, f"{node}_plain")
                self.fixed_edge(prev, f"{node}_memrm")
                self.fixed_edge("meta", f"{node}_memrm")
                self.declare_connection(label, node, [f"{node}_plain", f"{node}_memrm"])
                prev = node
            self.fixed_edge(prev, f"s{branch[1]}")
            self.fixed_edge(f"s{branch[1]}", "seg")
        self.set_outputs("seg", "s3")

    # ----- samples ----------------------------------------------------------------------------
    def gap_sample(self, layers: Mapping[str, Iterable[int]] | Iterable[int],
                   op: str = "conv3x2") -> dict[str, Any]:
        """A complete sample whose gaps (Mem-RM with f = ``op``, keep {1}) are ``layers``
        (1-based; one list for both branches or ``{"x1": [...], "x2": [...]}``), every other
        layer plain ({0})."""
        per = dict(layers) if isinstance(layers, Mapping) else {"x1": layers, "x2": layers}
        per = {b: {int(v) for v in ls} for b, ls in per.items()}
        sample: dict[str, Any] = dict(self.knob_values)
        for branch in ("x1", "x2"):
            for lvl in range(1, self.num_layers + 1):
                sample[self.gap_label(branch, lvl)[0]] = [1] if lvl in per[branch] else [0]
                sample[f"memrm_{branch}_l{lvl}"] = op
        return sample

    # ----- the network ------------------------------------------------------------------------
    def branch_net(self, branch: str) -> Backbone:
        """The backbone ``branch`` runs (one shared module under ``share_weights``)."""
        return self.backbone if self.share_weights else self.backbones[branch]

    def data_view(self) -> DataView:
        return DataView(context=self.downsamples[1:], context_labels=True)

    def _recall(self, branch: str, memory: Sequence[torch.Tensor]) -> Any:
        def recall(layer: int, b: torch.Tensor) -> torch.Tensor:
            key = f"{branch}_l{layer}"
            module = self.memrm[key] if key in self.memrm else None  # noqa: SIM401
            out = self.gaps[key]([b, module(b, memory[layer - 1]) if module is not None else None])
            return b if out is None else out
        return recall

    def forward(self, image: torch.Tensor, context: torch.Tensor,
                label: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        s3, _, memory = self.branch_net("x3")(context[:, 1])  # meta-branch; Mem-FP
        s1, h1, _ = self.branch_net("x1")(image, self._recall("x1", memory))
        s2, h2, _ = self.branch_net("x2")(context[:, 0], self._recall("x2", memory))
        ratio = self.downsamples[0] / self.downsamples[1]
        s2p = crop_up(s2, ratio, s1.shape[2:])
        if self.fusion_kind == "meta":
            seg = self.fusion(s1, s2p, h1, crop_up(h2, ratio, h1.shape[2:]), label)
        else:
            seg = self.fusion(s1, s2p)
        return {"seg": seg, "s1": s1, "s2": s2, "s3": s3}

    def forward_batch(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """X1 = ``image``, X2, X3 = ``context``; Y1 reaches Meta-FM in training mode only."""
        return self(batch["image"], batch["context"], batch.get("label") if self.training else None)

    # ----- losses, stages, metrics ------------------------------------------------------------
    def compute_loss(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
                     stage: TrainingStage) -> torch.Tensor:
        """L(S3, Y3) in ``meta``; L(S1, Y1) + L(S2, Y2) in ``memrm``; L(S, Y1) in ``fusion``."""
        if stage.name == "meta":
            return F.cross_entropy(outputs["s3"], batch["context_label"][:, 1])
        if stage.name == "memrm":
            return (F.cross_entropy(outputs["s1"], batch["label"])
                    + F.cross_entropy(outputs["s2"], batch["context_label"][:, 0]))
        if stage.name == "fusion":
            return F.cross_entropy(outputs["seg"], batch["label"])
        raise ValueError(f"msn has no stage {stage.name!r}")

    def arch_loss(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
                  stage: TrainingStage) -> torch.Tensor:
        """The branches' loss L(S1, Y1) + L(S2, Y2), whatever the stage: the gates and Mem-RM
        ops are searched on it (the recipe searches in ``memrm`` only)."""
        return self.compute_loss(outputs, batch, TrainingStage("memrm"))

    def training_stages(self) -> list[TrainingStage]:
        """The paper's three steps (shares 3:1:1); see the module docstring."""
        split = 1.0 - self.sub_share if self.steps23 == "sub" else None
        first, rest = ((0.0, split), (split, 1.0)) if split else ((0.0, 1.0), (0.0, 1.0))
        if self.share_weights:
            meta_part, branch_parts, frozen = ("backbone",), (), ("backbone",)
        else:
            meta_part = ("backbones.x3",)
            branch_parts, frozen = ("backbones.x1", "backbones.x2"), ("backbones.x3",)
        stages = [TrainingStage("meta", 3.0, trainable=meta_part, cases=first, search=False)]
        recall = bool(len(self.memrm) or branch_parts)
        if recall:
            stages.append(TrainingStage("memrm", 1.0, trainable=("memrm",) + branch_parts,
                                        eval_modules=frozen, cases=rest, search=True))
        stages.append(TrainingStage("fusion", 1.0 if recall else 2.0, trainable=("fusion",),
                                    eval_modules=("backbone", "memrm"), cases=rest, search=False))
        return stages

    def metrics(self) -> list[MSNMetrics]:
        return [MSNMetrics(self.num_classes)]

    def training_only(self) -> tuple[str, ...]:
        """Under ``meta_eval=stored`` the learner only trains W*: eval fuses with W*."""
        return ("fusion.learner",) if self.fusion_kind == "meta" and self.meta_eval == "stored" \
            else ()


# ----- the paper's gap-layer rule, as a baseline ---------------------------------------------
@torch.no_grad()
def gap_statistics(space: MSNSpace, batches: Iterable[Mapping[str, torch.Tensor]]
                   ) -> dict[str, list[dict[str, float]]]:
    """Fig. 1's statistics: per branch x1, x2 and gap layer, |mean(X_i) - mean(X3)| and
    |var(X_i) - var(X3)| of the activations of the meta-branch's backbone (no Mem-RM), averaged
    over ``batches`` (of the space's view)."""
    was_training = space.training
    space.eval()
    net = space.branch_net("x3")
    sums: dict[str, list[list[float]]] = {b: [[0.0, 0.0] for _ in range(space.num_layers)]
                                          for b in ("x1", "x2")}
    count = 0
    for batch in batches:
        inputs = {"x1": batch["image"], "x2": batch["context"][:, 0], "x3": batch["context"][:, 1]}
        stats = {b: [(f.mean().item(), f.var().item()) for f in net(x)[2]]
                 for b, x in inputs.items()}
        for b in ("x1", "x2"):
            for lvl, ((m, v), (m3, v3)) in enumerate(zip(stats[b], stats["x3"])):
                sums[b][lvl][0] += abs(m - m3)
                sums[b][lvl][1] += abs(v - v3)
        count += 1
    space.train(was_training)
    if not count:
        raise ValueError("gap_statistics needs at least one batch")
    return {b: [{"layer": lvl + 1, "mean_gap": m / count, "var_gap": v / count}
                for lvl, (m, v) in enumerate(rows)] for b, rows in sums.items()}


def stats_sample(space: MSNSpace, stats: Mapping[str, Sequence[Mapping[str, float]]], k: int
                 ) -> dict[str, Any]:
    """The paper's rule: the ``k`` layers with the largest gap (mean gap / its maximum + variance
    gap / its maximum) become gap layers of each branch (x1's ranking for shared gates)."""
    if not 0 <= k <= space.num_layers:
        raise ValueError(f"k must lie in 0..{space.num_layers}, got {k}")

    def top(rows: Sequence[Mapping[str, float]]) -> list[int]:
        mmax = max(r["mean_gap"] for r in rows) or 1.0
        vmax = max(r["var_gap"] for r in rows) or 1.0
        score = {int(r["layer"]): r["mean_gap"] / mmax + r["var_gap"] / vmax for r in rows}
        return sorted(score, key=lambda lvl: -score[lvl])[:k]

    if space.share_gates:
        return space.gap_sample(top(stats["x1"]))
    return space.gap_sample({b: top(stats[b]) for b in ("x1", "x2")})
