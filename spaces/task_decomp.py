"""TDSNet as a space: task decomposition and synchronization (Ren, Zhang, Ahmad, Nie, Yang,
Xiang, Wang, Shen; arXiv 1905.08720), in 2D and 3D from one implementation.

One shared encoder without skips (PSPNet-like) feeds a task-task context ensemble (CE): cascaded
dilated convolutions whose taps are summed into a latent space. Three task-pair features
(segmentation-class ``f_sc``, segmentation-scene ``f_ss``, class-scene ``f_cs``) feed three
heads: the segmentation, the foreground classes present, and the scene. The losses are the
paper's eqs. 1-4, trained in its three steps (:meth:`TaskDecompSpace.training_stages`).
Sizes come from the authors' code (xuhuaren/TDSNet).

Searched: which CE taps form the latent (``ce_latent``), each cascade conv's dilation
(``ce_d1_op`` .. ``ce_d5_op``), which pair features each head reads (``seg_in``, ``cls_in``,
``scene_in``), encoder -> decoder skips (``skip0`` ..; all pruned is the paper's design) and the
segmentation decoder (``seg_dec``). :meth:`TaskDecompSpace.paper_sample` is the paper's network.

Decisions the paper leaves open (or where paper and code disagree):

- Encoder: VGG-like blocks of two 3x3(x3) ConvNormAct per level (no ImageNet weights exist
  for 3D or one-channel data), ``features * 2**l`` channels, max pools with ``ceil_mode`` after
  every block, so any size works. Kernels are isotropic: Wang et al.'s (3, 3, 1) kernels suit
  anisotropic 144x144x19 BRATS crops, not the isotropic demo volumes.
- CE and pair features as in the code: a stride-2 transposed conv halves the channels, then
  conv + ReLU with bias and no norm (instance norm is undefined on the 1-voxel maps odd inputs
  give). The paper's "rates 63, 31, 15, 3, 1" are the taps' receptive fields (7 omitted); the
  convs use dilations 1, 2, 4, 8, 16, so the taps see 1, 3, 7, 15, 31, 63.
- Heads read a gated *sum* of pair features instead of the code's concatenation, so a head's
  input width does not depend on how many pairs it keeps. Class and scene heads are GAP -> FC
  -> FC (hidden width = latent width); knob ``head_relu`` puts a ReLU between the FCs (the
  code has none, which makes the two FCs one linear map).
- Segmentation decoders: ``upconv`` is the code's (upsample by the latent's stride, then
  ConvReLU to 2f and f); ``aspp`` is DeepLabV3's ASPP (1x1, three 3x3 at rates 1, 2, 4 -- the
  latent map is a few pixels wide, larger rates see padding -- and image pooling, concatenated,
  1x1), then the same upsampling. Both end in the code's ConvReLU f -> f and a 1x1 classifier;
  kept skips are added (aligned by interpolation and a 1x1 conv) just before that ConvReLU.
- The class head predicts the *foreground* classes (K-1 flags), matching the data's
  ``presence``: background is present in almost every patch, so its flag carries nothing.
  Presence is the patch's own (computed after cropping), fixing the code's ``targets[0]``.
- L_seg = CE + ``iou_weight`` * (1 - soft IoU), the IoU averaged over all K classes on the
  softmax of the whole batch (eq. 1 with ``iou_weight`` 1; the code sums per class and halves
  both terms). L_cla and L_sync use the logits form of BCE (the code's sigmoid + BCE is
  unstable). L_scene is softmax CE (eq. 2 says BCE; scenes are exclusive, as in the code).
- L_sync: the prediction is the class head, the target the segmentation's presence P (the code's
  order; eq. 3 reads the other way). ``presence=hard`` is the paper's "segmented volume > 0"
  (argmax; the code thresholds p_c > 0.5), a constant, so with ``sync=to_class`` the gradient
  reaches only the class branch (and the shared CE and encoder), as the paper says. The soft
  estimators (``soft_max``: max_x p_c(x); ``noisy_or``: 1 - prod_x(1 - p_c(x))) make P
  differentiable, so ``sync=to_seg`` (class head as a detached target) or ``both`` (the sum of
  the two one-way terms) also train the segmentation. ``to_seg``/``both`` need a soft estimator;
  their BCE is computed from log P and log(1 - P), since noisy-or rounds to 1 on large patches.
- Weights: w1 (class) 0.2, w2 (scene) 0.2, w3 (sync) 0.4 are the code's defaults; a weight of 0
  drops its term. A data set without scenes skips the scene term (logged once).
- Stages (knob ``schedule``): ``paper3`` is the paper's three steps (seg + class; + sync;
  + scene) at lr scales 1, 0.5, 0.2 (the paper's 1e-4, 5e-5, 2e-5), equal shares; ``code4``
  adds the code's seg-only first run (shares 1:2:2:2, scales 1, 1, 0.5, 0.5); ``joint`` is one
  stage with every term. Stages continue training the same weights (the paper initialises each
  step from the previous one).
- The architecture step descends the segmentation loss (knob ``arch_loss=seg``); then only the
  gate regulariser moves ``cls_in``/``scene_in``, which stay near 0.5 and are kept at the
  default tau 0.5. ``arch_loss=stage`` descends the stage's whole loss, so the auxiliary tasks
  choose their own inputs too.
- The class and scene heads are outputs of the method (validation reports them), so they count
  in parameters and FLOPs; exports return the segmentation alone.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nasseg.evaluation.metrics import FlagAccumulator, image_mean_iou
from nasseg.ops import (OutputHead, Resample, StackedConv, check_spatial_dims,
                        conv_transpose_type, conv_type, interp_mode, max_pool_type)
from nasseg.space import SearchSpace, TrainingStage, register_space

__all__ = ["TaskDecompSpace", "ConvAct", "ASPP", "GapHead", "TaskMetrics", "TERMS", "SCHEDULES",
           "DILATIONS", "PAIRS", "seg_presence", "soft_iou", "sync_loss"]

logger = logging.getLogger(__name__)

#: The loss terms in the order the paper's steps add them; a stage named after a term trains
#: it and every term before it; ``joint`` trains all.
TERMS = ("seg", "class", "sync", "scene")
#: ``schedule`` knob -> stages as (name, share of the epochs, lr scale).
SCHEDULES: dict[str, tuple[tuple[str, float, float], ...]] = {
    "paper3": (("class", 1.0, 1.0), ("sync", 1.0, 0.5), ("scene", 1.0, 0.2)),
    "code4": (("seg", 1.0, 1.0), ("class", 2.0, 1.0), ("sync", 2.0, 0.5), ("scene", 2.0, 0.5)),
    "joint": (("joint", 1.0, 1.0),),
}
#: The code's cascade dilations (receptive fields of the taps: 1, 3, 7, 15, 31, 63).
DILATIONS = (1, 2, 4, 8, 16)
#: Task-pair features: segmentation-class, segmentation-scene, class-scene.
PAIRS = ("f_sc", "f_ss", "f_cs")
#: Which pairs each head reads in the code (indices into PAIRS).
PAPER_HEAD_INPUTS = {"seg_in": [0, 1], "cls_in": [0, 2], "scene_in": [1, 2]}
#: The node each head's pair connection feeds.
HEAD_NODES = {"seg_in": "seg_dec", "cls_in": "cls", "scene_in": "scene"}
ASPP_RATES = (1, 2, 4)
_EPS = 1e-6


class ConvAct(nn.Sequential):
    """Conv (with bias, "same" padding) + ReLU: the code's layer in the CE, pairs and decoder."""

    def __init__(self, spatial_dims: int, cin: int, cout: int, kernel: int = 3,
                 dilation: int = 1) -> None:
        super().__init__(conv_type(spatial_dims)(cin, cout, kernel, padding=dilation * (kernel - 1) // 2,
                                                 dilation=dilation),
                         nn.ReLU(inplace=True))


class _Upsample(nn.Module):
    """Bi/trilinear upsampling by a fixed factor (back from the latent's stride)."""

    def __init__(self, spatial_dims: int, factor: int) -> None:
        super().__init__()
        self.factor, self.mode = factor, interp_mode(spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.factor, mode=self.mode, align_corners=False)


class ASPP(nn.Module):
    """DeepLabV3's atrous spatial pyramid pooling: 1x1, 3x3 at ``rates`` and image pooling,
    concatenated and fused by a 1x1 conv (the paper's Base decoder; it gives no layers)."""

    def __init__(self, spatial_dims: int, cin: int, cout: int,
                 rates: Sequence[int] = ASPP_RATES) -> None:
        super().__init__()
        self.branches = nn.ModuleList([ConvAct(spatial_dims, cin, cout, 1)] + [
            ConvAct(spatial_dims, cin, cout, 3, r) for r in rates])
        self.pool = ConvAct(spatial_dims, cin, cout, 1)
        self.fuse = ConvAct(spatial_dims, cout * (len(rates) + 2), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.ndim))
        pooled = self.pool(x.mean(dims, keepdim=True)).expand(-1, -1, *x.shape[2:])
        return self.fuse(torch.cat([b(x) for b in self.branches] + [pooled], 1))


class GapHead(nn.Module):
    """Global average pooling -> FC -> (ReLU) -> FC: the class and scene heads."""

    def __init__(self, cin: int, hidden: int, cout: int, relu: bool) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(cin, hidden), nn.ReLU() if relu else nn.Identity(),
                                nn.Linear(hidden, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(2).mean(-1))


def _log_presence(logits: torch.Tensor, estimator: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log P, log(1 - P))`` of a soft estimator, ``(B, K-1)`` each, computed in log space so
    noisy-or, which saturates at 1 on large patches, keeps the gradient of its "absent" side."""
    log_p = logits.log_softmax(1)[:, 1:].flatten(2)
    log_not = torch.log1p(-log_p.exp().clamp(max=1 - _EPS))
    if estimator == "soft_max":
        return log_p.amax(-1), log_not.amin(-1)
    if estimator == "noisy_or":
        log_absent = log_not.sum(-1).clamp(max=-_EPS)
        return torch.log(-torch.expm1(log_absent)), log_absent
    raise ValueError(f"unknown presence estimator {estimator!r}")


def seg_presence(logits: torch.Tensor, estimator: str) -> torch.Tensor:
    """The foreground classes a segmentation shows, ``(B, K-1)`` in [0, 1].

    ``hard``: argmax volume > 0 (the paper; no gradient); ``soft_max``: max_x p_c(x);
    ``noisy_or``: 1 - prod_x (1 - p_c(x)).
    """
    if estimator == "hard":
        found = F.one_hot(logits.argmax(1).flatten(1), logits.shape[1]).amax(1)
        return found[:, 1:].to(logits.dtype)
    return _log_presence(logits, estimator)[0].exp()


def soft_iou(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Soft IoU of the softmax and the one-hot label, per class over the batch, averaged over
    all K classes."""
    probs = logits.softmax(1)
    target = F.one_hot(label, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    dims = (0, *range(2, logits.ndim))
    inter = (probs * target).sum(dims)
    union = probs.sum(dims) + target.sum(dims) - inter
    return ((inter + _EPS) / (union + _EPS)).mean()


def sync_loss(seg_logits: torch.Tensor, cls_logits: torch.Tensor, estimator: str,
              direction: str) -> torch.Tensor:
    """Eq. 3: the class head against the segmentation's presence P.

    ``to_class``: BCE(class logits, P detached), the paper's; ``to_seg``: BCE(P, sigmoid(class)
    detached); ``both``: the sum, so each side gets exactly its one-way gradient.
    """
    loss = seg_logits.new_zeros(())
    if direction in ("to_class", "both"):
        p = seg_presence(seg_logits, estimator).detach()
        loss = loss + F.binary_cross_entropy_with_logits(cls_logits, p)
    if direction in ("to_seg", "both"):
        if estimator == "hard":
            raise ValueError(f"sync={direction} needs a differentiable presence estimator")
        log_p, log_not = _log_presence(seg_logits, estimator)
        target = torch.sigmoid(cls_logits).detach()
        loss = loss - (target * log_p + (1 - target) * log_not).mean()
    return loss


class TaskMetrics:
    """Validation beyond Dice: mean IoU per image (ROBOT18 convention), class-presence accuracy
    and F1 (class logit > 0), scene accuracy (when the data has scenes)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.ious: list[float] = []
        self.flags = FlagAccumulator()
        self.scene_right = self.scene_total = 0

    def update(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> None:
        for pred, ref in zip(outputs["seg"].argmax(1).cpu(), batch["label"].cpu()):
            self.ious.append(image_mean_iou(pred, ref, self.num_classes))
        if "presence" in batch:
            self.flags.update((outputs["cls"] > 0).float(), batch["presence"])
        if "scene" in batch:
            self.scene_right += int((outputs["scene"].argmax(1) == batch["scene"]).sum())
            self.scene_total += int(batch["scene"].numel())

    def compute(self) -> dict[str, float]:
        values = {"miou": sum(self.ious) / len(self.ious) if self.ious else math.nan,
                  "cls_acc": self.flags.accuracy(), "cls_f1": self.flags.f1()}
        if self.scene_total:
            values["scene_acc"] = self.scene_right / self.scene_total
        return values


@register_space("task_decomp")
class TaskDecompSpace(SearchSpace):
    """TDSNet: shared encoder, context ensemble, three task-pair features, three heads.

    Args:
        in_channels: image channels.
        num_classes: segmentation classes K, background included (the class head has K-1).
        spatial_dims: 2 or 3.
        features: channels of the first encoder level, doubled per level.
        levels: encoder levels (>= 2), each followed by a 2x pool; the latent has stride
            ``2**(levels-1)`` and ``features * 2**(levels-2)`` channels (the code: 5 VGG levels).
        num_scenes: scene classes S of the scene head.

    Knobs: ``w1`` (class), ``w2`` (scene), ``w3`` (sync) loss weights; ``sync`` direction;
    ``presence`` estimator; ``schedule``; ``iou_weight``; ``head_relu``; ``arch_loss``;
    ``gate_reg``. See the module docstring for every decision.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, spatial_dims: int = 3,
                 features: int = 8, levels: int = 4, num_scenes: int = 2) -> None:
        super().__init__()
        d = check_spatial_dims(spatial_dims)
        if levels < 2:
            raise ValueError(f"levels must be >= 2, got {levels}")
        self.num_classes, self.num_scenes, self.levels = num_classes, num_scenes, levels
        self.w1 = self.knob("w1", low=0.0, high=1.0, default=0.2)
        self.w2 = self.knob("w2", low=0.0, high=1.0, default=0.2)
        self.w3 = self.knob("w3", low=0.0, high=1.0, default=0.4)
        self.sync = self.knob("sync", ["to_class", "to_seg", "both"])
        self.presence = self.knob("presence", ["hard", "soft_max", "noisy_or"])
        if self.sync != "to_class" and self.presence == "hard":
            raise ValueError(f"sync={self.sync} needs presence=soft_max or noisy_or "
                             "(hard presence has no gradient)")
        self.schedule = self.knob("schedule", list(SCHEDULES))
        self.iou_weight = self.knob("iou_weight", low=0.0, high=1.0, default=1.0)
        head_relu = self.knob("head_relu", [True, False])
        self.arch_target = self.knob("arch_loss", ["seg", "stage"])
        self._told_no_scene = False

        chans = [features * 2 ** lvl for lvl in range(levels)]
        latent, stride = chans[-1] // 2, 2 ** (levels - 1)
        self._declare_topology()

        self.pool = max_pool_type(d)(2, 2, ceil_mode=True)
        self.encoder = nn.ModuleList(StackedConv(d, in_channels if lvl == 0 else chans[lvl - 1],
                                                 chans[lvl], [3, 3]) for lvl in range(levels))
        # Context ensemble: lift (stride 2^L -> 2^(L-1), half the channels), cascade, latent.
        self.lift = nn.Sequential(conv_transpose_type(d)(chans[-1], latent, 4, 2, 1),
                                  nn.ReLU(inplace=True))
        self.cascade = nn.ModuleList(
            self.op_choice(f"ce_d{k + 1}_op", _dilation_candidates(d, latent, DILATIONS[k]),
                           node=f"ce_d{k + 1}")
            for k in range(len(DILATIONS)) if self.is_live(f"ce_d{k + 1}"))
        self.ce_latent = self.connection_choice(
            "ce_latent", "latent", ["ce_x"] + [f"ce_d{k + 1}" for k in range(len(DILATIONS))])
        self.pairs = nn.ModuleDict({p: ConvAct(d, latent, latent) for p in PAIRS
                                    if self.is_live(p)})
        self.seg_in, self.cls_in, self.scene_in = (
            self.connection_choice(label, node, PAIRS) for label, node in HEAD_NODES.items())
        up = lambda: _Upsample(d, stride)  # noqa: E731
        self.decoder = self.op_choice("seg_dec", {
            "upconv": lambda: nn.Sequential(up(), ConvAct(d, latent, 2 * features),
                                            ConvAct(d, 2 * features, features)),
            "aspp": lambda: nn.Sequential(ASPP(d, latent, features), up()),
        }, node="seg_dec")
        self.skips = nn.ModuleList(
            self.connection_choice(f"skip{lvl}", "seg_refine", [f"enc{lvl}"],
                                   align=lambda _i, c=chans[lvl], lvl=lvl: Resample(
                                       d, c, features, 0 if lvl == 0 else -1))
            for lvl in range(levels))
        self.refine = ConvAct(d, features, features)
        self.seg_head = OutputHead(d, features, num_classes)
        self.cls_head = GapHead(latent, latent, num_classes - 1, head_relu)
        self.scene_head = GapHead(latent, latent, num_scenes, head_relu)

    def _declare_topology(self) -> None:
        nodes = [f"enc{lvl}" for lvl in range(self.levels)] + ["ce_x"] + [
            f"ce_d{k + 1}" for k in range(len(DILATIONS))]
        for src, node in zip(["input"] + nodes, nodes):
            self.fixed_edge(src, node)
        for pair in PAIRS:
            self.fixed_edge("latent", pair)
        self.fixed_edge("seg_dec", "seg_refine")
        self.fixed_edge("seg_refine", "seg")
        self.set_outputs("seg", "cls", "scene")
        # Every connection before any module, so is_live sees the whole graph.
        self.declare_connection("ce_latent", "latent", ["ce_x"] + nodes[self.levels + 1:])
        for label, node in HEAD_NODES.items():
            self.declare_connection(label, node, PAIRS)
        for lvl in range(self.levels):
            self.declare_connection(f"skip{lvl}", "seg_refine", [f"enc{lvl}"])

    # ----- the paper's configuration -----------------------------------------------------------
    def paper_sample(self, decoder: str = "upconv") -> dict[str, Any]:
        """The paper's network: all six taps, dilations 1-16, the code's head inputs, no skips,
        the code's decoder (``decoder="aspp"`` gives the paper's text's Base), current knobs."""
        sample: dict[str, Any] = {**self.knob_values, **PAPER_HEAD_INPUTS, "seg_dec": decoder,
                                  "ce_latent": list(range(len(DILATIONS) + 1))}
        sample.update({f"ce_d{k + 1}_op": f"dil{r}" for k, r in enumerate(DILATIONS)})
        sample.update({f"skip{lvl}": [] for lvl in range(self.levels)})
        return sample

    # ----- the network ------------------------------------------------------------------------
    def encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features of every level (level l at stride 2^l)."""
        feats = []
        x = image
        for lvl, block in enumerate(self.encoder):
            x = block(self.pool(x) if lvl else x)
            feats.append(x)
        return feats

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """The context ensemble on the lifted features ``x``: the latent, a gated sum of taps."""
        taps: list[torch.Tensor | None] = [x]
        for conv in self.cascade:
            taps.append(conv(taps[-1]))
        taps += [None] * (len(DILATIONS) + 1 - len(taps))
        return self.ce_latent(taps)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.encode(image)
        latent = self.context(self.lift(self.pool(feats[-1])))
        pairs = [self.pairs[p](latent) if p in self.pairs else None for p in PAIRS]
        size = image.shape[2:]
        dec = self.decoder(self.seg_in(pairs))[(..., *(slice(0, s) for s in size))]
        for skip, feat in zip(self.skips, feats):
            aligned = skip([feat], size)
            dec = dec if aligned is None else dec + aligned
        return {"seg": self.seg_head(self.refine(dec)),
                "cls": self.cls_head(self.cls_in(pairs)),
                "scene": self.scene_head(self.scene_in(pairs))}

    # ----- losses and stages ------------------------------------------------------------------
    def segmentation_loss(self, outputs: Mapping[str, torch.Tensor],
                          batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Eq. 1: CE + ``iou_weight`` * (1 - soft IoU)."""
        seg, label = outputs["seg"], batch["label"]
        loss = F.cross_entropy(seg, label)
        if self.iou_weight:
            loss = loss + self.iou_weight * (1 - soft_iou(seg, label))
        return loss

    def stage_terms(self, stage: TrainingStage) -> tuple[str, ...]:
        """The loss terms ``stage`` trains (by its name: a term of :data:`TERMS`, or joint)."""
        if stage.name == "joint":
            return TERMS
        if stage.name not in TERMS:
            raise ValueError(f"task_decomp has no stage {stage.name!r}")
        return TERMS[:TERMS.index(stage.name) + 1]

    def loss_terms(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
                   stage: TrainingStage) -> dict[str, torch.Tensor]:
        """The weighted terms of eq. 4 that ``stage`` trains; zero weights are left out."""
        active = self.stage_terms(stage)
        terms = {"seg": self.segmentation_loss(outputs, batch)}
        if "class" in active and self.w1:
            terms["class"] = self.w1 * F.binary_cross_entropy_with_logits(
                outputs["cls"], batch["presence"])
        if "sync" in active and self.w3:
            terms["sync"] = self.w3 * sync_loss(outputs["seg"], outputs["cls"], self.presence,
                                                self.sync)
        if "scene" in active and self.w2:
            if "scene" in batch:
                terms["scene"] = self.w2 * self._scene_loss(outputs["scene"], batch["scene"])
            elif not self._told_no_scene:
                logger.info("task_decomp: the data has no scene labels; the scene loss (w2) "
                            "is off")
                self._told_no_scene = True
        return terms

    def _scene_loss(self, logits: torch.Tensor, scene: torch.Tensor) -> torch.Tensor:
        if int(scene.max()) >= self.num_scenes:
            raise ValueError(f"task_decomp: the data has scene {int(scene.max())}, but the space "
                             f"has num_scenes={self.num_scenes}; pass --space-arg num_scenes=N")
        return F.cross_entropy(logits, scene)

    def compute_loss(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
                     stage: TrainingStage) -> torch.Tensor:
        """Eq. 4 restricted to the stage's terms."""
        return sum(self.loss_terms(outputs, batch, stage).values())

    def arch_loss(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
                  stage: TrainingStage) -> torch.Tensor:
        """The segmentation loss (``arch_loss=seg``) or the stage's whole loss (``stage``)."""
        if self.arch_target == "stage":
            return self.compute_loss(outputs, batch, stage)
        return self.segmentation_loss(outputs, batch)

    def training_stages(self) -> list[TrainingStage]:
        """The ``schedule`` knob's steps, each at its learning-rate scale."""
        return [TrainingStage(name, share, lr_scale=scale)
                for name, share, scale in SCHEDULES[self.schedule]]

    def metrics(self) -> list[TaskMetrics]:
        return [TaskMetrics(self.num_classes)]


def _dilation_candidates(spatial_dims: int, channels: int, default: int
                         ) -> dict[str, Callable[[], nn.Module]]:
    """3x3(x3) conv + ReLU at each dilation of :data:`DILATIONS`, the code's ``default`` first
    (so ``default_sample`` is the code's cascade)."""
    order = [default] + [r for r in DILATIONS if r != default]
    return {f"dil{r}": (lambda r=r: ConvAct(spatial_dims, channels, channels, 3, r))
            for r in order}
