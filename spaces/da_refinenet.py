"""DA-RefineNet as a space: dual-input whole-slide segmentation with Attn-Refine or LW-Attn
decoders (Li, Tao, Wu, Li; arXiv 1907.06358), 2D.

A fine patch A and a coarse context B of the same pixel size, covering ``context_factor`` times
A's side and centred on A, go through two independent residual encoders (eqs. 1-4). Four
decoder blocks fuse, from the deepest level up, A's features, B's features and the previous
block's output (eqs. 5-8); the segmentation of A is trained with cross-entropy (eq. 9). The
fusion of every block -- concat, add or attention (eqs. 10-12) -- is an op choice the search
relaxes over its three inputs; the derived network builds only the chosen fusion.

Searched: ``fuse_l1`` .. ``fuse_l4`` (``fuse_l1`` is Attn_Refine_1 of eq. 5, the deepest
block), or one shared label ``fuse`` with knob ``fusion_scope=shared`` (the paper's setting: one
fusion for the whole network). :meth:`DARefineNetSpace.paper_sample` is the paper's network
for a given fusion.

Decisions the paper leaves open (or where paper and code disagree):

- B is centred on A (the code cuts A anywhere inside B); its side is ``context_factor`` times
  A's (knob, 2/5/10; 5 is the code's geometry, the paper's "10 times" counts from level 0).
  Inputs come from the data view (:mod:`nasseg.data.views`), so B is cut the same way in
  training, validation and whole-image prediction, zero outside the image.
- Encoders: ResNet bottleneck levels (7x7 stride-2 stem, 3x3 stride-2 max-pool, levels at
  strides 4/8/16/32 with ``4f, 8f, 16f, 32f`` channels, ``f = features``; 64 is ResNet's
  width). ``depth_a``/``depth_b`` pick 50/101/152 block counts, ``max_blocks`` caps blocks per
  level. No ImageNet weights (nasseg downloads nothing), so batch norm trains in every stage
  (the code keeps it frozen because its encoders are pre-trained); dropout 0.5 follows the two
  deepest levels of both encoders, as in the code. Encoder B is a separate module with its own
  parameters (the code runs B's finest path through A's RCU by mistake).
- Decoder widths follow the code: ``C = 8f`` in the deepest block, ``4f`` elsewhere; each
  block reduces its output to ``4f`` and upsamples it to the next level's size (bilinear, so
  odd sizes work). A path: 1x1 conv (no bias) -> RCU x2 -> 1x1 conv (deepest: ReLU);
  B path: its own 1x1 conv -> its own RCU x2 -> ReLU. After fusion: CRP (4 stages of
  5x5 max-pool + 1x1 conv, summed) and RCU x3. Head: dropout 0.5 -> 3x3 conv at stride 4 ->
  bilinear to the input size. RCU = x + conv3x3(ReLU(conv3x3(ReLU(x)))), no batch norm.
- Fusion candidates take the block's inputs in the order (X_A', X_B', X): ``concat`` =
  ReLU(conv1x1(cat)), ``add`` = sum, ``attention`` = X_A' * W + X with
  W = sigmoid(GAP(conv1x1(cat))) (eq. 11's undefined "Residual" is the text's 1x1 conv -> GAP
  -> sigmoid; ``attention_form=se`` is the code's GAP -> 1x1 -> ReLU -> 1x1 -> sigmoid, hidden
  width C). X is added once (the code adds it twice in its finest block). The deepest block
  has no X: attention there is X_A' * W. Single input (``dual=False``) drops X_B' from every
  fusion; its deepest block has nothing to fuse and passes X_A' on.
- ``context=same_fov`` is Table III's "multi-size dual input": B shows A's own field at
  ``context_factor`` times lower resolution (A block-averaged, then bilinearly resized back to
  A's size), so it adds an encoder but no wider context.
- LW-Attn: no CRP; each RCU stack becomes one simple residual block SRB(x) =
  conv1x1(h + conv3x3(conv3x3(h))), h = conv1x1(x), no batch norm and no ReLU (Fig. 7); the
  block's output SRB maps straight to ``4f``.
- Loss: cross-entropy (the paper's NLLLoss2d on log-softmax). Recipe: three stages of equal
  share at learning-rate scales 1, 0.5, 0.2 (the paper's 5e-3, 2.5e-3, 1e-3 steps) with the
  encoders at ``enc_lr`` (default 0.1, the paper's ENC/DEC ratio) of the decoder's rate, by
  module prefix (the code's name regex also caught decoder convs). nasseg's AdamW stands in
  for SGD, as in every space.
- Metrics: IoU of every class (``iou0``.. background included), ``miou``, pixel ``accuracy``
  and the BACH ``score`` (eqs. 13-14, pooled over the validation set); ``select`` picks the
  one that chooses the best epoch and that a tuner maximises (default ``score``).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nasseg.data.views import PATCH_VIEW, DataView
from nasseg.evaluation.metrics import ConfusionAccumulator
from nasseg.space import SearchSpace, TrainingStage, register_space

__all__ = ["DARefineNetSpace", "ResNetEncoder", "Bottleneck", "RCU", "CRP", "SRB",
           "ConcatFusion", "AddFusion", "AttentionFusion", "fusion_candidates", "RefineBlock",
           "SliceMetrics", "FUSIONS", "DEPTHS", "STEP_SCALES"]

#: Bottleneck blocks per level of ResNet-50/101/152.
DEPTHS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                                                152: (3, 8, 36, 3)}
#: Fusion candidates, in the paper's numbering (Fig. 5: (1) concat, (2) add, (3) attention).
FUSIONS = ("concat", "add", "attention")
#: The learning-rate scale of each of the paper's three training steps.
STEP_SCALES = (1.0, 0.5, 0.2)


def _conv1(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, bias=bias)


def _conv3(cin: int, cout: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=bias)


# ----- encoders ------------------------------------------------------------------------------

class Bottleneck(nn.Module):
    """ResNet's bottleneck: 1x1 -> 3x3 (stride) -> 1x1 (x4), batch norm, projection shortcut."""

    def __init__(self, cin: int, mid: int, stride: int = 1) -> None:
        super().__init__()
        cout = 4 * mid
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


class ResNetEncoder(nn.Module):
    """Stem and four bottleneck levels; returns the features of every level (strides 4-32)."""

    def __init__(self, in_channels: int, features: int, blocks: Sequence[int]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, features, 7, 2, 3, bias=False),
                                  nn.BatchNorm2d(features), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        levels, cin = [], features
        for lvl, n in enumerate(blocks):
            mid = features * 2 ** lvl
            layers = [Bottleneck(cin if i == 0 else 4 * mid, mid, 2 if lvl and i == 0 else 1)
                      for i in range(n)]
            if lvl >= 2:  # the code's dropout after the two deepest levels
                layers.append(nn.Dropout(0.5))
            levels.append(nn.Sequential(*layers))
            cin = 4 * mid
        self.levels = nn.ModuleList(levels)
        self.channels = [4 * features * 2 ** lvl for lvl in range(len(blocks))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, x = [], self.stem(x)
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats


# ----- decoder parts --------------------------------------------------------------------------

class RCU(nn.Module):
    """Residual convolution unit: x + conv3x3(ReLU(conv3x3(ReLU(x)))), no batch norm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = _conv3(channels, channels), _conv3(channels, channels, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))


class CRP(nn.Module):
    """Chained residual pooling: x + sum_t top_t, top_t = conv1x1(maxpool5x5(top_{t-1}))."""

    def __init__(self, channels: int, stages: int = 4) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_conv1(channels, channels, False) for _ in range(stages))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, out = x, x
        for conv in self.convs:
            top = conv(F.max_pool2d(top, 5, 1, 2))
            out = out + top
        return out


class SRB(nn.Module):
    """LW-Attn's simple residual block: conv1x1(h + conv3x3(conv3x3(h))), h = conv1x1(x)."""

    def __init__(self, cin: int, channels: int, cout: int) -> None:
        super().__init__()
        self.inp, self.out = _conv1(cin, channels), _conv1(channels, cout)
        self.body = nn.Sequential(_conv3(channels, channels), _conv3(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(h + self.body(h))


class ConcatFusion(nn.Module):
    """Fig. 5 (1): ReLU(conv1x1(cat(inputs))), ``n*C -> C``."""

    def __init__(self, channels: int, inputs: int) -> None:
        super().__init__()
        self.conv = _conv1(inputs * channels, channels, False)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(torch.cat(xs, 1)))


class AddFusion(nn.Module):
    """Fig. 5 (2): the sum of the inputs (no parameters)."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.stack(xs).sum(0)


class AttentionFusion(nn.Module):
    """Eqs. 10-12: Y = X_A * W (+ X), W = sigmoid of a channel vector from cat(inputs).

    ``form="paper"``: W = sigmoid(GAP(conv1x1(cat))); ``"se"``: sigmoid(conv1x1(ReLU(
    conv1x1(GAP(cat))))). The first input is X_A; with ``main`` the last is X, added once.
    """

    def __init__(self, channels: int, inputs: int, main: bool, form: str = "paper") -> None:
        super().__init__()
        self.main, self.form = main, form
        if form == "paper":
            self.weigh = _conv1(inputs * channels, channels, False)
        elif form == "se":
            self.weigh = nn.Sequential(_conv1(inputs * channels, channels), nn.ReLU(inplace=True),
                                       _conv1(channels, channels))
        else:
            raise ValueError(f"unknown attention form {form!r}; use paper or se")

    def weights(self, *xs: torch.Tensor) -> torch.Tensor:
        """X_W, ``(N, C, 1, 1)`` in (0, 1)."""
        cat = torch.cat(xs, 1)
        if self.form == "paper":
            return torch.sigmoid(self.weigh(cat).mean((2, 3), keepdim=True))
        return torch.sigmoid(self.weigh(cat.mean((2, 3), keepdim=True)))

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        y = xs[0] * self.weights(*xs)
        return y + xs[-1] if self.main else y


def fusion_candidates(channels: int, inputs: int, main: bool, form: str
                      ) -> dict[str, Callable[[], nn.Module]]:
    """The three fusions of ``inputs`` tensors of ``channels`` (factories, built when chosen)."""
    return {"concat": lambda: ConcatFusion(channels, inputs), "add": AddFusion,
            "attention": lambda: AttentionFusion(channels, inputs, main, form)}


class RefineBlock(nn.Module):
    """One Attn-Refine (``lw=False``) or LW-Attn block: A path, B path, fusion, (CRP), output.

    ``fuse`` is the fusion module (an op choice) or None where there is one input only.
    ``out_channels`` 0 marks the last block (no reduction, no upsampling).
    """

    def __init__(self, cin: int, channels: int, out_channels: int, dual: bool, deepest: bool,
                 lw: bool, fuse: nn.Module | None) -> None:
        super().__init__()
        if lw:
            self.path_a = SRB(cin, channels, channels)
            self.path_b = SRB(cin, channels, channels) if dual else None
            self.crp = None
            self.out = SRB(channels, channels, out_channels or channels)
        else:
            self.path_a = nn.Sequential(_conv1(cin, channels, False), RCU(channels), RCU(channels),
                                        nn.ReLU() if deepest else _conv1(channels, channels, False))
            self.path_b = nn.Sequential(_conv1(cin, channels, False), RCU(channels),
                                        RCU(channels), nn.ReLU()) if dual else None
            self.crp = CRP(channels)
            tail: list[nn.Module] = [RCU(channels) for _ in range(3)]
            if out_channels:
                tail.append(_conv1(channels, out_channels, False))
            self.out = nn.Sequential(*tail)
        self.fuse = fuse
        self.upsample = bool(out_channels)

    def forward(self, xa: torch.Tensor, xb: torch.Tensor | None, x: torch.Tensor | None,
                size: Sequence[int] | None) -> torch.Tensor:
        inputs = [self.path_a(xa)]
        if self.path_b is not None:
            inputs.append(self.path_b(xb))
        if x is not None:
            inputs.append(x)
        y = inputs[0] if self.fuse is None else self.fuse(*inputs)
        if self.crp is not None:
            y = self.crp(y)
        y = self.out(y)
        if self.upsample:
            y = F.interpolate(y, size=tuple(size), mode="bilinear", align_corners=False)
        return y


# ----- metrics --------------------------------------------------------------------------------

class SliceMetrics:
    """Validation beyond Dice: IoU of every class, mIoU, pixel accuracy and the BACH score,
    pooled over the validation set (:class:`~nasseg.evaluation.metrics.ConfusionAccumulator`)."""

    def __init__(self, num_classes: int) -> None:
        self.acc = ConfusionAccumulator(num_classes)

    def update(self, outputs: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> None:
        self.acc.update(outputs.argmax(1).cpu(), batch["label"].cpu())

    def compute(self) -> dict[str, float]:
        return self.acc.values()


# ----- the space ------------------------------------------------------------------------------

@register_space("da_refinenet")
class DARefineNetSpace(SearchSpace):
    """DA-RefineNet: two residual encoders (fine patch A, coarse context B), four fusing
    Attn-Refine or LW-Attn blocks.

    Args:
        in_channels: image channels.
        num_classes: classes (BACH's four: normal, benign, in situ, invasive).
        spatial_dims: 2 (the method is 2D).
        features: encoder stem width ``f`` (64 is ResNet's); levels have ``4f..32f`` channels,
            decoder blocks ``8f`` (deepest) and ``4f``.
        max_blocks: at most this many bottleneck blocks per level (None: the depth's count).

    Knobs: ``dual``, ``context`` (wide / same_fov), ``context_factor``, ``block`` (refine /
    lw), ``depth_a``, ``depth_b``, ``fusion_scope`` (per_block / shared), ``attention_form``,
    ``enc_lr``, ``select`` (score / miou). See the module docstring.
    """

    supported_dims = (2,)

    def __init__(self, in_channels: int = 3, num_classes: int = 4, spatial_dims: int = 2,
                 features: int = 64, max_blocks: int | None = None) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"da_refinenet is 2D only, got spatial_dims={spatial_dims}")
        if max_blocks is not None and max_blocks < 1:
            raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
        self.num_classes = num_classes
        self.dual = self.knob("dual", [True, False])
        on = {"dual": [True]}
        self.context = self.knob("context", ["wide", "same_fov"], active_if=on)
        self.context_factor = self.knob("context_factor", [5, 2, 10], active_if=on)
        self.block = self.knob("block", ["refine", "lw"])
        self.depth_a = self.knob("depth_a", [50, 101, 152])
        self.depth_b = self.knob("depth_b", [50, 101, 152], active_if=on)
        self.fusion_scope = self.knob("fusion_scope", ["per_block", "shared"])
        form = self.knob("attention_form", ["paper", "se"])
        self.enc_lr = self.knob("enc_lr", low=0.0, high=1.0, default=0.1)
        self.selection_metric = self.knob("select", ["score", "miou"])

        self._declare_topology()

        def blocks(depth: int) -> list[int]:
            return [min(n, max_blocks or n) for n in DEPTHS[depth]]

        self.enc_a = ResNetEncoder(in_channels, features, blocks(self.depth_a))
        self.enc_b = ResNetEncoder(in_channels, features, blocks(self.depth_b)) if self.dual \
            else None
        chans = self.enc_a.channels
        width = 4 * features
        decoder = []
        for k in range(1, 5):  # k = 1: Attn_Refine_1 of eq. 5, on the deepest level
            deepest, level = k == 1, 4 - k
            channels = 2 * width if deepest else width
            inputs = 1 + int(self.dual) + int(not deepest)
            fuse = None
            if inputs > 1:
                label = "fuse" if self.fusion_scope == "shared" else f"fuse_l{k}"
                fuse = self.op_choice(label, fusion_candidates(channels, inputs, not deepest, form),
                                      node=f"block{k}", inputs=inputs)
            decoder.append(RefineBlock(chans[level], channels, 0 if k == 4 else width, self.dual,
                                       deepest, self.block == "lw", fuse))
        self.decoder = nn.ModuleList(decoder)
        self.head = nn.Sequential(nn.Dropout(0.5), _conv3(width, num_classes))

    def _declare_topology(self) -> None:
        """Encoder levels A (and B) feed the blocks; block k feeds block k + 1, then the head."""
        sources = [("input", "enc_a")] + ([("context", "enc_b")] if self.dual else [])
        for src, enc in sources:
            for lvl in range(1, 5):
                self.fixed_edge(src if lvl == 1 else f"{enc}{lvl - 1}", f"{enc}{lvl}")
        for k in range(1, 5):
            for _, enc in sources:
                self.fixed_edge(f"{enc}{5 - k}", f"block{k}")
            self.fixed_edge(f"block{k}", f"block{k + 1}" if k < 4 else "seg")
        self.set_outputs("seg")

    # ----- the paper's configuration -----------------------------------------------------------
    def fusion_labels(self) -> list[str]:
        """The labels of this instance's fusion choices."""
        return [label for label, info in self.choice_infos.items() if info.kind == "op"]

    def paper_sample(self, fusion: str = "add") -> dict[str, Any]:
        """One fusion in every block (Table I uses add, Table II compares all three)."""
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        return {**self.knob_values, **{label: fusion for label in self.fusion_labels()}}

    # ----- inputs and network -------------------------------------------------------------------
    def data_view(self) -> DataView:
        """Patch A plus, for ``dual`` with ``context=wide``, context B at ``context_factor``."""
        if self.dual and self.context == "wide":
            return DataView(context=(self.context_factor,))
        return PATCH_VIEW

    def context_input(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """B for this batch: the view's context crop, or (same_fov) A at lower resolution."""
        if not self.dual:
            return None
        if self.context == "wide":
            return batch["context"][:, 0]
        image, k = batch["image"], self.context_factor
        coarse = F.avg_pool2d(image, k, k, ceil_mode=True, count_include_pad=False)
        return F.interpolate(coarse, size=image.shape[2:], mode="bilinear", align_corners=False)

    def forward_batch(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self(batch["image"], self.context_input(batch))

    def forward(self, image: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.dual and context is None:
            raise ValueError("da_refinenet with dual=True needs the context input B")
        xa = self.enc_a(image)
        xb = self.enc_b(context) if self.enc_b is not None else [None] * 4
        x = None
        for k, block in enumerate(self.decoder, start=1):
            level = 4 - k
            size = xa[level - 1].shape[2:] if level else None
            x = block(xa[level], xb[level], x, size)
        logits = self.head(x)
        return F.interpolate(logits, size=image.shape[2:], mode="bilinear", align_corners=False)

    # ----- loss, recipe, metrics ------------------------------------------------------------------
    def segmentation_loss(self, outputs: torch.Tensor, batch: Mapping[str, torch.Tensor]
                          ) -> torch.Tensor:
        """Eq. 9: NLL of the log-softmax (cross-entropy)."""
        return F.cross_entropy(outputs, batch["label"])

    def training_stages(self) -> list[TrainingStage]:
        """The paper's three steps: equal shares, falling rates, encoders at ``enc_lr``."""
        slower = {"enc_a.": self.enc_lr, "enc_b.": self.enc_lr}
        return [TrainingStage(f"step{i + 1}", 1.0, lr_scale=scale, lr_multipliers=slower)
                for i, scale in enumerate(STEP_SCALES)]

    def metrics(self) -> list[SliceMetrics]:
        return [SliceMetrics(self.num_classes)]
