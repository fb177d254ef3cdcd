"""Inter-U-Net as a space: intermediate supervision and tied-weight decoders on U-Net and U-Net++
(Yuan, Chen, Xu, Lukasiewicz, Fu, Xu, "Efficient Medical Image Segmentation with Intermediate
Supervision Mechanism"), in 2D and 3D from one implementation.

A segmentation backbone (knob ``backbone``: U-Net, or U-Net++ with nested dense skips) is
trained with one of the paper's supervision variants (knob ``supervision``):

- ``none``: the backbone alone, L = L_image.
- ``inter`` (Inter-U-Net, Fig. 1): the same network also reads the mask m; the intermediate
  outputs y'_j of that pass supervise the image pass's y_j. L = L_h^1 (eq. 4).
- ``ae`` (AE-U-Net, Fig. 2): a separate auto-encoder of m gives y'_j. L = L_h^1.
- ``sae`` (SAE-U-Net, Fig. 3): the auto-encoder's encoder is its own, its decoder is the
  backbone's ("shared-weight decoder"). L = L_h^1.
- ``tw`` (TW-U-Net, a column of Fig. 6): a tied-weight decoder reconstructs x with the
  transposed encoder convolutions. L = alpha L_image + beta L_t.
- ``twi`` (TWI-U-Net, Fig. 4) = ``inter`` + tied decoder; ``twae`` (TWAE-U-Net, Fig. 5) =
  ``sae`` + tied decoder. L = L_h (eq. 6).

L_image = L_BD(y, m) (1), L_mask = L_BD(y', m) (2), L_j = MSE(y_j, y'_j) (3),
L_h^1 = alpha L_image + gamma L_mask + lambda sum_j omega_j L_j (4), L_t = BCE(x~, x) (5),
L_h = L_h^1 + beta L_t (6). The weights are knobs, tuned by ``nasseg tune``; a knob that does not
apply to the chosen variant is inactive (the tuner does not suggest it).

The mask pass, the auto-encoder and the tied decoder are training-only (:meth:`training_only`):
they run only in training mode, so the derived network's parameters, FLOPs, inference and export
are the plain backbone's and its eval-mode output never reads the label.

Searched: each block's convolution (``enc{l}_op``, U-Net ``dec{l}_op``, U-Net++ ``x{i}_{j}_op``,
candidates as in the ``unet`` space) and the skips (U-Net ``skip{l}``; U-Net++ ``x{i}_{j}_in``,
the same-level dense inputs of node X^{i,j}).

Decisions the paper leaves open (it gives equations and variants, no layer sizes, no loss-weight
values, no AE-U-Net loss and no result table):

- Backbone: ``levels`` resolution levels (5 in the paper: j = 0..4), blocks from the ``unet``
  space's candidates (two 3x3(x3) ConvNormAct, one 5x5(x5), two dilated 3x3(x3)), ``features *
  2**l`` channels, ceil-mode 2x max pools (any size runs; an axis shorter than 4 is not
  pooled, so five levels run on small patches), upsampling by the ``upsample`` knob, resized to
  the skip's size where pooling rounded.
  Skips are added, not concatenated, so a gated skip keeps the block's input width.
- U-Net++: node X^{i,j} (i + j <= levels - 1) = block(Up(X^{i+1,j-1}) + gated sum of
  X^{i,0..j-1}). The up input is a fixed edge: the diagonal X^{levels-1-j, j} carries the
  bottleneck to the output and holds the intermediate outputs y_j, so it must exist; what the
  search prunes, as U-Net++'s own pruning does, are the nested nodes nothing keeps, which are not
  built. Keeping only each diagonal node's X^{i,0} input leaves exactly the U-Net backbone (same
  modules, same parameter count).
- Intermediate outputs (p: "the deepest layer and each layer of the expansion path"): y_0 = the
  bottleneck feature X^{levels-1,0}, y_j = the decoder stage X^{levels-1-j,j}, deepest first. They
  are the feature maps themselves: 1x1 heads projecting them to logits would be trained by the
  MSE alone, which they minimise by shrinking to zero.
- y'_j is "regarded as the segmentation mask" of y_j: a fixed target by default (knob
  ``detach_targets``); with ``False`` the MSE also trains the mask branch.
- Mask input m: one-hot label without background (K-1 channels). ``inter``/``twi`` feed it
  through its own first block (knob ``mask_stem=own``: two 3x3(x3) ConvNormAct to level 0) or,
  literally "the same network", through the image's first block (``repeat``: the class index
  scaled to [0, 1], i.e. m itself for binary tasks, tiled over the image channels). Knob
  ``mask_pass_skips``: whether the m-pass uses the skips (default True: the same network; with
  them it can rebuild m through the top skip alone, so its deep y'_j may carry little).
- Auto-encoder (``ae``, ``sae``, ``twae``): the backbone's widths (so the MSE pairs match), no
  skips (a classical AE; skips make reconstructing m trivial), fixed 3x3(x3) blocks (the search
  is about the segmentation network, the AE only makes targets). ``ae`` owns its decoder and
  head; ``sae``/``twae`` run the backbone's decoder and head without the skip terms. The AE-U-Net
  loss, missing in the paper, is L_h^1 with y' = the AE's reconstruction of m.
- ``ae_schedule=pretrain`` (AE variants): a first stage (a quarter of the epochs, no
  architecture search) trains the AE on L_mask alone (for ``sae``/``twae`` that includes the
  shared decoder and head), then the joint stage trains everything but the AE's own modules
  against the fixed AE targets; ``joint`` (default) trains everything together as the paper does.
- Tied-weight decoder, eq. (5): from the deepest encoder feature, level by level back to the
  input, each encoder convolution applied transposed (``conv_transpose(h, enc_conv.weight)``:
  the same tensors, in reverse order), each followed by its own instance norm and ReLU except
  the last, nearest upsampling between levels, no skips (else reconstruction is trivial), a
  bias and a sigmoid at the end: x~ has the image's shape and values in (0, 1). While
  searching, each level is an op choice under the encoder block's own label, so the mixture
  (or the sample) of its candidates is the encoder's.
- L_BD := Dice + cross-entropy (``DiceCELoss``: softmax CE + foreground soft Dice), BCE + Dice
  for the paper's binary tasks. L_t's target is the image min-max rescaled per case to [0, 1]
  (z-scored images are no BCE targets); BCE is taken on the logits.
- Weights (p: "adjusted as required", no values): alpha in [0.1, 2], gamma in [0, 2], lambda in
  [1e-3, 10] (log), omega_j in [0, 1], beta in [0, 2], all 1 by default. MSE scales differ by
  level; omega_j absorbs that.
- The architecture step descends L_image alone (the default ``arch_loss``): the auxiliary terms
  train weights, they do not choose the architecture.
- Training (p): Adam, 3e-4, x0.9 every three epochs, early stopping. nasseg's retrain uses its
  own AdamW with cosine decay and keeps the best validation epoch instead.
- Validation adds ``small_dice``: the mean per-object Dice of the reference objects no larger
  than a ball of radius ``small_radius`` (the paper's claim is about small targets).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from nni.nas.nn.pytorch import LayerChoice
from torch import nn
from torch.nn import functional as F

from nasseg.evaluation.metrics import SmallObjectDice, ball_size
from nasseg.ops import OutputHead, StackedConv, Upsample, check_spatial_dims, norm_type
from nasseg.space import SearchSpace, TrainingStage, register_space
from nasseg.spaces.unet import block_candidates

__all__ = ["InterUNetSpace", "HalvingPool", "TiedBlock", "TiedDecoder", "MaskAutoEncoder",
           "SmallDiceMetric", "VARIANTS", "INTERMEDIATE", "TIED", "MASK_PASS", "AUTOENCODER",
           "minmax"]

#: The supervision variants (knob ``supervision``).
VARIANTS = ("none", "inter", "ae", "sae", "tw", "twi", "twae")
#: Variants with intermediate supervision (L_h^1: gamma, lambda, omega_j apply).
INTERMEDIATE = ("inter", "ae", "sae", "twi", "twae")
#: Variants with the tied-weight decoder (beta applies).
TIED = ("tw", "twi", "twae")
#: Variants whose mask branch is the segmentation network itself.
MASK_PASS = ("inter", "twi")
#: Variants with an auto-encoder of the mask.
AUTOENCODER = ("ae", "sae", "twae")
_CONVS = (nn.Conv2d, nn.Conv3d)
_TRANSPOSED = {2: F.conv_transpose2d, 3: F.conv_transpose3d}


def minmax(image: torch.Tensor) -> torch.Tensor:
    """Each case rescaled to [0, 1] over all its channels and voxels (the BCE target of L_t)."""
    dims = tuple(range(1, image.ndim))
    low, high = image.amin(dims, keepdim=True), image.amax(dims, keepdim=True)
    return (image - low) / (high - low).clamp_min(1e-6)


class HalvingPool(nn.Module):
    """2x max pooling (ceil mode) of every axis at least 4 long; shorter axes are kept, so deep
    levels of small inputs keep more than one voxel (instance norm needs two)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = [2 if s >= 4 else 1 for s in x.shape[2:]]
        pool = F.max_pool2d if x.ndim == 4 else F.max_pool3d
        return pool(x, kernel, kernel, ceil_mode=True)


def _fit(x: torch.Tensor, size: Sequence[int], mode: str = "nearest") -> torch.Tensor:
    """``x`` resized to ``size`` where ceil-mode pooling made the upsampled map too large."""
    return x if tuple(x.shape[2:]) == tuple(size) else F.interpolate(x, size=tuple(size), mode=mode)


class TiedBlock(nn.Module):
    """One encoder block run backwards with its own weights: each convolution of ``source``, last
    first, applied transposed, then its own instance norm and ReLU (none after the last one of
    the decoder, ``final``). ``source`` is not a submodule: this block owns norms only."""

    def __init__(self, source: nn.Module, spatial_dims: int, final: bool) -> None:
        super().__init__()
        self._source = [source]  # a list keeps the encoder block out of this module's children
        self.spatial_dims = spatial_dims
        convs = self.convs()
        #: (in, out) channels, for the partial-channel search (its norms alone would not say)
        self.partial_channels = (convs[-1].out_channels, convs[0].in_channels)
        channels = [c.in_channels for c in reversed(convs)]
        self.norms = nn.ModuleList(norm_type(spatial_dims)(c, affine=True)
                                   for c in (channels[:-1] if final else channels))

    def convs(self) -> list[nn.Module]:
        """The encoder block's convolutions in forward order (read at every call, so a search
        that swaps their parameters is followed)."""
        return [m for m in self._source[0].modules() if isinstance(m, _CONVS)]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for k, conv in enumerate(reversed(self.convs())):
            h = _TRANSPOSED[self.spatial_dims](h, conv.weight, padding=conv.padding,
                                               dilation=conv.dilation)
            if k < len(self.norms):
                h = F.relu(self.norms[k](h))
        return h


class TiedDecoder(nn.Module):
    """Eq. (5)'s decoder: the encoder's levels backwards with tied weights, nearest upsampling in
    between, no skips; returns the reconstruction logits (sigma of them is x~)."""

    def __init__(self, levels: Sequence[nn.Module], in_channels: int) -> None:
        super().__init__()
        self.levels = nn.ModuleList(levels)
        self.bias = nn.Parameter(torch.zeros(in_channels))

    def forward(self, deepest: torch.Tensor, sizes: Sequence[Sequence[int]]) -> torch.Tensor:
        h = deepest
        for lvl in range(len(self.levels) - 1, -1, -1):
            h = self.levels[lvl](h)
            if lvl:
                h = F.interpolate(h, size=tuple(sizes[lvl - 1]), mode="nearest")
        return h + self.bias.view(1, -1, *([1] * (h.ndim - 2)))


class MaskAutoEncoder(nn.Module):
    """The auto-encoder of the mask: an encoder with the backbone's widths and, for ``ae``, its
    own skip-less decoder and head (``sae``/``twae`` use the backbone's)."""

    def __init__(self, spatial_dims: int, in_channels: int, chans: Sequence[int],
                 num_classes: int, upsample: str, own_decoder: bool) -> None:
        super().__init__()
        d, levels = spatial_dims, len(chans)
        self.pool = HalvingPool()
        self.encoder = nn.ModuleList(StackedConv(d, in_channels if lvl == 0 else chans[lvl - 1],
                                                 chans[lvl], [3, 3]) for lvl in range(levels))
        if own_decoder:
            self.ups = nn.ModuleList(Upsample(d, chans[lvl + 1], chans[lvl], upsample)
                                     for lvl in range(levels - 1))
            self.blocks = nn.ModuleList(StackedConv(d, chans[lvl], chans[lvl], [3, 3])
                                        for lvl in range(levels - 1))
            self.head = OutputHead(d, chans[0], num_classes)

    def encode(self, mask: torch.Tensor) -> list[torch.Tensor]:
        """Features of every level, shallowest first."""
        feats, x = [], mask
        for lvl, block in enumerate(self.encoder):
            x = block(self.pool(x) if lvl else x)
            feats.append(x)
        return feats

    def decode(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The own decoder: logits and the decoder stages, deepest first."""
        h, stages = feats[-1], []
        for lvl in range(len(feats) - 2, -1, -1):
            h = self.blocks[lvl](_fit(self.ups[lvl](h), feats[lvl].shape[2:]))
            stages.append(h)
        return self.head(h), stages


class SmallDiceMetric:
    """Validation ``small_dice``: mean per-object Dice of the small reference objects."""

    def __init__(self, num_classes: int, max_size: float) -> None:
        self.acc = SmallObjectDice(num_classes, max_size)

    def update(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> None:
        self.acc.update(outputs["seg"].argmax(1), batch["label"])

    def compute(self) -> dict[str, float]:
        return {"small_dice": self.acc.mean()}


@register_space("inter_unet")
class InterUNetSpace(SearchSpace):
    """U-Net or U-Net++ trained with the paper's intermediate supervision and tied-weight
    decoders (see the module docstring for every decision).

    Args:
        in_channels: image channels.
        num_classes: output classes K, background included.
        spatial_dims: 2 or 3.
        features: channels at the first level, doubled at each deeper level.
        levels: resolution levels (5 in the paper; there are ``levels`` intermediate outputs).
        small_radius: objects up to the size of a ball (disc) of this radius in voxels count as
            small in the ``small_dice`` validation metric.

    Knobs: ``backbone``, ``supervision``, ``upsample``, the loss weights ``alpha``, ``gamma``,
    ``lambda``, ``omega0``.. ``omega{levels-1}``, ``beta``, and ``detach_targets``,
    ``mask_stem``, ``mask_pass_skips``, ``ae_schedule``, ``gate_reg``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, spatial_dims: int = 3,
                 features: int = 8, levels: int = 5, small_radius: float = 5.0) -> None:
        super().__init__()
        d = check_spatial_dims(spatial_dims)
        if levels < 2:
            raise ValueError(f"levels must be >= 2, got {levels}")
        self.levels, self.num_classes, self.spatial_dims = levels, num_classes, d
        self.in_channels = in_channels
        self.small_size = ball_size(small_radius, d)
        chans = [features * 2 ** lvl for lvl in range(levels)]
        self.backbone = self.knob("backbone", ["unet", "unetpp"])
        self.supervision = self.knob("supervision", list(VARIANTS), default="twi")
        upsample = self.knob("upsample", ["transpose", "interp"])
        inter = {"supervision": list(INTERMEDIATE)}
        self.alpha = self.knob("alpha", low=0.1, high=2.0, default=1.0)
        self.gamma = self.knob("gamma", low=0.0, high=2.0, default=1.0, active_if=inter)
        self.lam = self.knob("lambda", low=1e-3, high=10.0, log=True, default=1.0, active_if=inter)
        self.omega = [self.knob(f"omega{j}", low=0.0, high=1.0, default=1.0, active_if=inter)
                      for j in range(levels)]
        self.beta = self.knob("beta", low=0.0, high=2.0, default=1.0,
                              active_if={"supervision": list(TIED)})
        self.detach_targets = self.knob("detach_targets", [True, False], active_if=inter)
        mask_pass = {"supervision": list(MASK_PASS)}
        self.mask_stem_kind = self.knob("mask_stem", ["own", "repeat"], active_if=mask_pass)
        self.mask_pass_skips = self.knob("mask_pass_skips", [True, False], active_if=mask_pass)
        self.ae_schedule = self.knob("ae_schedule", ["joint", "pretrain"],
                                     active_if={"supervision": list(AUTOENCODER)})

        self._declare_topology()
        self.pool = HalvingPool()
        self.encoder = nn.ModuleList(
            self.op_choice(f"enc{lvl}_op", block_candidates(
                d, in_channels if lvl == 0 else chans[lvl - 1], chans[lvl]), node=f"enc{lvl}")
            for lvl in range(levels))
        live = [(i, j) for i, j in self.decoder_nodes() if self.is_live(self.node(i, j))]
        self.ups = nn.ModuleDict({f"{i}_{j}": Upsample(d, chans[i + 1], chans[i], upsample)
                                  for i, j in live})
        self.blocks = nn.ModuleDict({f"{i}_{j}": self.op_choice(
            self._label(i, j, "op"), block_candidates(d, chans[i], chans[i]), node=self.node(i, j))
            for i, j in live})
        self.skips = nn.ModuleDict({f"{i}_{j}": self.connection_choice(
            self._label(i, j, "in"), self.node(i, j), self._sources(i, j)) for i, j in live})
        self.head = OutputHead(d, chans[0], num_classes)

        # Training-only parts.
        if self.supervision in MASK_PASS and self.mask_stem_kind == "own":
            self.mask_stem = StackedConv(d, num_classes - 1, chans[0], [3, 3])
        if self.supervision in AUTOENCODER:
            self.ae = MaskAutoEncoder(d, num_classes - 1, chans, num_classes, upsample,
                                      own_decoder=self.supervision == "ae")
        if self.supervision in TIED:
            self.tied = TiedDecoder([self._tied_level(lvl) for lvl in range(levels)],
                                    in_channels)

    # ----- topology ---------------------------------------------------------------------------
    def decoder_nodes(self) -> list[tuple[int, int]]:
        """The decoder nodes (i, j), j >= 1, in computation order: U-Net's diagonal
        i + j = levels - 1, or every U-Net++ node i + j <= levels - 1."""
        top = self.levels - 1
        return [(i, j) for j in range(1, self.levels) for i in range(top - j + 1)
                if self.backbone == "unetpp" or i + j == top]

    def node(self, i: int, j: int) -> str:
        """The graph name of node X^{i,j}: ``enc{i}`` (j = 0), U-Net ``dec{i}``, U-Net++
        ``x{i}_{j}``."""
        if j == 0:
            return f"enc{i}"
        return f"dec{i}" if self.backbone == "unet" else f"x{i}_{j}"

    def _label(self, i: int, j: int, kind: str) -> str:
        if self.backbone == "unet":
            return f"dec{i}_op" if kind == "op" else f"skip{i}"
        return f"x{i}_{j}_{kind}"

    def _sources(self, i: int, j: int) -> list[str]:
        return [self.node(i, 0)] if self.backbone == "unet" else [self.node(i, k) for k in range(j)]

    def _declare_topology(self) -> None:
        self.fixed_edge("input", "enc0")
        for lvl in range(1, self.levels):
            self.fixed_edge(f"enc{lvl - 1}", f"enc{lvl}")
        for i, j in self.decoder_nodes():
            self.fixed_edge(self.node(i + 1, j - 1), self.node(i, j))
            self.declare_connection(self._label(i, j, "in"), self.node(i, j), self._sources(i, j))
        self.fixed_edge(self.node(0, self.levels - 1), "out")
        self.set_outputs("out")

    def node_positions(self) -> dict[str, tuple[float, float]]:
        """Encoder down the first column, X^{i,j} in column j at row i (the U-Net++ grid)."""
        pos = {"input": (0.0, -1.0), "out": (float(self.levels - 1), -1.0)}
        pos.update({self.node(i, 0): (0.0, float(i)) for i in range(self.levels)})
        pos.update({self.node(i, j): (float(j), float(i)) for i, j in self.decoder_nodes()})
        return pos

    def _tied_level(self, lvl: int) -> nn.Module:
        """The tied decoder's level ``lvl``: an op choice under the encoder block's label whose
        candidates run that block's candidates backwards."""
        block = self.encoder[lvl]
        final = lvl == 0

        def tied(name: str) -> Callable[[], nn.Module]:
            source = block[name] if isinstance(block, LayerChoice) else block
            return lambda: TiedBlock(source, self.spatial_dims, final)

        names = self.choice_infos[f"enc{lvl}_op"].candidates
        return self.op_choice(f"enc{lvl}_op", {n: tied(n) for n in names}, node=f"enc{lvl}")

    # ----- the network ------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, stem: nn.Module | None = None) -> list[torch.Tensor]:
        """Encoder features X^{i,0} of every level; ``stem`` replaces the first block."""
        feats = []
        for lvl, block in enumerate(self.encoder):
            if lvl == 0 and stem is not None:
                block = stem
            x = block(self.pool(x) if lvl else x)
            feats.append(x)
        return feats

    def decode(self, feats: Sequence[torch.Tensor], skips: bool = True
               ) -> dict[tuple[int, int], torch.Tensor]:
        """Every built node X^{i,j} from the encoder features. Without ``skips`` only the
        diagonal runs, each node on its up input alone (the skip-less pass of ``sae``)."""
        x: dict[tuple[int, int], torch.Tensor] = {(i, 0): f for i, f in enumerate(feats)}
        top = self.levels - 1
        for i, j in self.decoder_nodes():
            key = f"{i}_{j}"
            if key not in self.blocks or (not skips and i + j != top):
                continue
            size = feats[i].shape[2:]
            h = _fit(self.ups[key](x[(i + 1, j - 1)]), size)
            if skips:
                sources = range(len(self._sources(i, j)))
                kept = self.skips[key]([x.get((i, k)) for k in sources], size)
                h = h if kept is None else h + kept
            x[(i, j)] = self.blocks[key](h)
        return x

    def intermediate(self, x: Mapping[tuple[int, int], torch.Tensor]) -> list[torch.Tensor]:
        """y_0 (the bottleneck) .. y_{levels-1} (the last decoder stage): the diagonal."""
        top = self.levels - 1
        return [x[(top - j, j)] for j in range(self.levels)]

    def mask_input(self, label: torch.Tensor) -> torch.Tensor:
        """m: the one-hot label without background (``repeat``: the class index scaled to
        [0, 1], tiled over the image channels, for the image's own first block)."""
        if self.supervision in MASK_PASS and self.mask_stem_kind == "repeat":
            scaled = label.unsqueeze(1).float() / (self.num_classes - 1)
            return scaled.expand(-1, self.in_channels, *label.shape[1:])
        return F.one_hot(label.long(), self.num_classes).movedim(-1, 1)[:, 1:].float()

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        """``seg``; in training also, by variant, ``recon`` (the tied decoder's logits) and,
        given the label, ``y{j}``, ``mask_seg`` and ``ym{j}`` (the mask branch: y' and y'_j)."""
        feats = self.encode(image)
        x = self.decode(feats)
        top = self.levels - 1
        out = {"seg": self.head(x[(0, top)])}
        if not self.training or self.supervision == "none":
            return out
        if self.supervision in TIED:
            out["recon"] = self.tied(feats[-1], [f.shape[2:] for f in feats])
        if self.supervision not in INTERMEDIATE or label is None:
            return out
        out.update({f"y{j}": y for j, y in enumerate(self.intermediate(x))})
        m = self.mask_input(label)
        if self.supervision in MASK_PASS:
            mx = self.decode(self.encode(m, getattr(self, "mask_stem", None)),
                             self.mask_pass_skips)
            out["mask_seg"], targets = self.head(mx[(0, top)]), self.intermediate(mx)
        elif self.supervision == "ae":
            mfeats = self.ae.encode(m)
            out["mask_seg"], stages = self.ae.decode(mfeats)
            targets = [mfeats[-1], *stages]
        else:  # sae, twae: the AE's encoder, the backbone's decoder without skips
            mx = self.decode(self.ae.encode(m), skips=False)
            out["mask_seg"], targets = self.head(mx[(0, top)]), self.intermediate(mx)
        out.update({f"ym{j}": t for j, t in enumerate(targets)})
        return out

    def forward_batch(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The image, and in training the label (the mask branch's input)."""
        return self(batch["image"], batch.get("label") if self.training else None)

    # ----- losses and stages ------------------------------------------------------------------
    def loss_terms(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]
                   ) -> dict[str, torch.Tensor]:
        """The unweighted terms the variant has: ``image`` (1), ``mask`` (2), ``inter{j}`` (3),
        ``recon`` (5)."""
        label = batch["label"]
        terms = {"image": self.loss_fn(outputs["seg"], label)}
        if "mask_seg" in outputs:
            terms["mask"] = self.loss_fn(outputs["mask_seg"], label)
            for j in range(self.levels):
                target = outputs[f"ym{j}"]
                terms[f"inter{j}"] = F.mse_loss(
                    outputs[f"y{j}"], target.detach() if self.detach_targets else target)
        if "recon" in outputs:
            terms["recon"] = F.binary_cross_entropy_with_logits(outputs["recon"],
                                                                minmax(batch["image"]))
        return terms

    def loss_weights(self) -> dict[str, float]:
        """The weight of every term (eqs. 4 and 6): alpha, gamma, lambda * omega_j, beta."""
        weights = {"image": self.alpha, "mask": self.gamma, "recon": self.beta}
        weights.update({f"inter{j}": self.lam * w for j, w in enumerate(self.omega)})
        return weights

    def compute_loss(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
                     stage: TrainingStage) -> torch.Tensor:
        """Eq. (6) restricted to the variant's terms (zero weights left out); the AE
        pre-training stage trains L_mask alone."""
        terms = self.loss_terms(outputs, batch)
        if stage.name == "ae_pretrain":
            return terms["mask"]
        weights = self.loss_weights()
        return sum(weights[name] * term for name, term in terms.items() if weights[name])

    def training_stages(self) -> list[TrainingStage]:
        """One stage, or (``ae_schedule=pretrain``) the AE first, then the rest with it fixed."""
        if self.supervision not in AUTOENCODER or self.ae_schedule == "joint":
            return [TrainingStage("all")]
        ae_parts = ("ae",) if self.supervision == "ae" else ("ae", "ups", "blocks", "head")
        rest = tuple(name for name, module in self.named_children()
                     if name != "ae" and any(True for _ in module.parameters()))
        return [TrainingStage("ae_pretrain", 0.25, trainable=ae_parts, search=False),
                TrainingStage("joint", 0.75, trainable=rest)]

    def training_only(self) -> tuple[str, ...]:
        """The mask stem, the auto-encoder and the tied decoder, where built."""
        return tuple(name for name in ("mask_stem", "ae", "tied") if hasattr(self, name))

    def metrics(self) -> list[SmallDiceMetric]:
        return [SmallDiceMetric(self.num_classes, self.small_size)]
