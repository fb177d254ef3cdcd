"""UXNet: searched block operators and multi-scale aggregation (Ji et al., MICCAI 2020).

Nodes N(i, j) sit on a grid of stages i and resolution levels j (level j has 2^-j of the input
size and ``features * 2^j`` channels). Stage 0 is the encoder: N(0, j) sums gated inputs from
every shallower level. At each later stage, N(i, j) sums gated candidates from every level of
stage i-1, each aligned by T() (a reduction op to go down, an expansion op to go up, a 1x1 conv
to match channels) — the paper's eq. 1. Each later stage drops the lowest-resolution node, so
the last stage is the single output node N(S-1, 0).

Every node is a Searchable Building Block: two layers, each choosing among the seven normal ops;
the reduction and expansion ops of a node's T() are choices too (one per node and direction).
Gates are pruned at tau after the search, and nodes that feed nothing are deleted.

Ablations are knobs: ``sbb=False`` fixes every op (3x3x3 convs, max pooling, transposed convs
one level up, trilinear upsampling for longer jumps); ``mssa=False`` replaces the gated
aggregation by fixed U-Net-style paths (same level and the level below of the previous stage);
both off is a plain U-Net-like lattice. ``sbb`` defaults to False: on the demo the searched
ops made a worse supernet at 3.5 times the cost per epoch, and their derived nets retrained
worse than 3x3x3 convs on the searched topology (README, "Search quality"); ``sbb=True``
searches them as the paper does. ``search_resampling=True`` with ``sbb=False`` searches only the
reduction and expansion ops, the blocks staying 3x3x3; it is off by default, as its net led the
U-Net by only +0.002 held-out Dice in two tests fixed in advance (8 and 16 retrain seeds, p = 0.26
and 0.43; README, "Search quality").

The output head is not in the paper's search: there it reads N(S-1, 0). ``search_head`` (on by
default, with MSSA) lets the search gate which level-0 nodes it sums, one per stage, so the
decision can take edge detail from the encoder's first node. On demo3d its net beat the U-Net in
a test fixed in advance (+0.003 held-out Dice, 13 of 16 retrain seeds, p = 0.046; README).

A fixed jump of more than one level up interpolates, then fits channels with a 1x1 conv (as UNet
3+'s full-scale skips do), where one level up is the U-Net's transposed conv. A transposed conv
of stride 4 paints each coarse voxel as a separate 4x4x4 patch and weighs 16 k parameters for
32 -> 8 channels. Measured on demo3d (60-epoch retrains, held-out Dice, six seeds): the U-Net
plus the bottleneck -> level-0 input that most searches keep scored 0.930 with the stride-4
transposed conv and 0.951 with interpolation (+0.021 ± 0.013, better at 6 of 6; the U-Net 0.952).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nasseg.ops import (EXPANSION_OPS, NORMAL_OPS, REDUCTION_OPS, ConvNormAct, OutputHead,
                        check_spatial_dims, expansion_op, interp_mode, normal_op, reduction_op)
from nasseg.space import Connection, SearchSpace, register_space

__all__ = ["UXNetSpace", "node_name"]

_FIXED_NORMAL, _FIXED_REDUCTION, _FIXED_EXPANSION = "conv3", "max_pool", "transpose"
_FIXED_LONG_EXPANSION = "trilinear"  # more than one level up (module docstring)


def node_name(stage: int, level: int) -> str:
    """The graph name of N(stage, level)."""
    return f"N{stage}_{level}"


class _Align(nn.Module):
    """T(): move a feature map from one level to another and fit it to the target size."""

    def __init__(self, resample: nn.Module, spatial_dims: int) -> None:
        super().__init__()
        self.resample = resample
        self.mode = interp_mode(spatial_dims)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        x = self.resample(x)
        if tuple(x.shape[2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode=self.mode, align_corners=False)
        return x


@register_space("uxnet")
class UXNetSpace(SearchSpace):
    """UXNet: Searchable Building Blocks and Multi-Scale Searchable Aggregation.

    Args:
        in_channels: image channels.
        num_classes: output classes, background included.
        spatial_dims: 2 or 3.
        features: channels at level 0, doubled at each deeper level (default 8; at 4 the demo
            supernet's validation Dice stalled near 0.4 and its derived net retrained to 0.42).
        levels: resolution levels (the paper uses 5).
        stages: stages, the encoder included (default: ``levels``, ending in one node).

    Knobs: ``sbb`` (default False: fixed 3x3x3 blocks) and ``mssa`` (ablation switches),
    ``image_skip`` (default True: the 1x1 head reads the image beside the output node; an
    ``arch.json`` written before the knob existed holds the net without it),
    ``search_resampling`` (without SBB: choose each node's reduction and expansion op among the
    paper's sets while the blocks stay 3x3x3; off by default and in older files),
    ``search_head`` (with MSSA: the head reads a gated sum of the level-0 node of every stage,
    not only the last one's; on by default, off in older files),
    ``gate_reg`` (weight of the sparsity regularizer J on the gates).
    """

    default_tau = 0.6

    def __init__(self, in_channels: int = 1, num_classes: int = 2, spatial_dims: int = 3,
                 features: int = 8, levels: int = 3, stages: int | None = None) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        stages = levels if stages is None else stages
        if levels < 2 or not 1 <= stages <= levels:
            raise ValueError(f"need levels >= 2 and 1 <= stages <= levels, got levels={levels}, "
                             f"stages={stages}")
        self.dims, self.levels, self.stages = spatial_dims, levels, stages
        self.channels = [features * 2 ** j for j in range(levels)]
        self.sbb = self.knob("sbb", [True, False], default=False)
        self.mssa = self.knob("mssa", [True, False])
        self.image_skip = self.knob("image_skip", [True, False], absent=False)
        resampling = self.knob("search_resampling", [False, True], active_if={"sbb": [False]},
                               absent=False)
        self.search_resampling = self.sbb or resampling  # SBB searches every op
        # Without MSSA the knob is inactive and takes its default: the head reads the last node.
        self.search_head = self.knob("search_head", [True, False], default=self.mssa,
                                     active_if={"mssa": [True]}, absent=False)

        # Topology: every node with its candidate sources.
        self.grid = [[node_name(i, j) for j in range(levels - i)] for i in range(stages)]
        self.output = self.grid[-1][0]
        self.fixed_edge("input", self.grid[0][0])
        self.head_sources = [row[0] for row in self.grid] if self.search_head else [self.output]
        if self.search_head:
            self.declare_connection("out_in", "out", self.head_sources)
        else:
            self.fixed_edge(self.output, "out")
        self.set_outputs("out")
        sources = {name: self._sources(i, j) for i, row in enumerate(self.grid)
                   for j, name in enumerate(row)}
        for name, srcs in sources.items():
            if srcs and self.mssa:
                self.declare_connection(f"{name}_in", name, srcs)
            for src in srcs if not self.mssa else ():
                self.fixed_edge(src, name)

        # Modules: aggregation and block of every live node.
        self.stem = ConvNormAct(spatial_dims, in_channels, self.channels[0], 3)
        self.aggregate = nn.ModuleDict()
        self.blocks = nn.ModuleDict()
        for i, row in enumerate(self.grid):
            for j, name in enumerate(row):
                if not self.is_live(name):
                    continue
                if sources[name]:
                    self.aggregate[name] = self._aggregation(name, j, sources[name])
                self.blocks[name] = self._block(name, j)
        self.head_input = (self.connection_choice("out_in", "out", self.head_sources)
                           if self.search_head else None)
        # With ``image_skip`` the head also reads the image: each voxel's own intensity reaches
        # the decision without passing through the blocks' 3x3x3 smoothing.
        self.head = OutputHead(spatial_dims, self.channels[0] + in_channels * self.image_skip,
                               num_classes)

    # ----- topology ---------------------------------------------------------------------------
    def _sources(self, stage: int, level: int) -> list[str]:
        """Candidate inputs of N(stage, level): all of them with MSSA, U-Net paths without."""
        if stage == 0:
            shallower = range(level) if self.mssa else range(level - 1, level) if level else ()
            return [node_name(0, lvl) for lvl in shallower]
        prev = range(len(self.grid[stage - 1]))
        if not self.mssa:
            prev = [lvl for lvl in (level, level + 1) if lvl < len(self.grid[stage - 1])]
        return [node_name(stage - 1, lvl) for lvl in prev]

    @staticmethod
    def _level(name: str) -> int:
        return int(name.split("_")[1])

    # ----- modules ----------------------------------------------------------------------------
    def _op(self, label: str, names: Sequence[str], fixed: str,
            make: Callable[[str], Callable[[], nn.Module]], node: str,
            searched: bool) -> nn.Module:
        """An op choice among ``names`` if ``searched``, else the fixed op."""
        if not searched:
            return make(fixed)()
        return self.op_choice(label, {n: make(n) for n in names}, node=node)

    def _align(self, name: str, src: str, level: int) -> nn.Module:
        src_level = self._level(src)
        cin, cout, d = self.channels[src_level], self.channels[level], self.dims
        if src_level == level:
            resample: nn.Module = nn.Identity()
        elif src_level < level:
            k = level - src_level
            resample = self._op(f"{name}_down", REDUCTION_OPS, _FIXED_REDUCTION,
                                lambda n: reduction_op(n, d, cin, cout, k), name,
                                self.search_resampling)
        else:
            k = src_level - level
            fixed = _FIXED_EXPANSION if k == 1 else _FIXED_LONG_EXPANSION
            resample = self._op(f"{name}_up", EXPANSION_OPS, fixed,
                                lambda n: expansion_op(n, d, cin, cout, k), name,
                                self.search_resampling)
        return _Align(resample, d)

    def _aggregation(self, name: str, level: int, srcs: list[str]) -> Connection:
        align = lambda i: self._align(name, srcs[i], level)  # noqa: E731
        if self.mssa:
            return self.connection_choice(f"{name}_in", name, srcs, align)
        return Connection(f"{name}_in", len(srcs), align, kept=list(range(len(srcs))))

    def _block(self, name: str, level: int) -> nn.Module:
        """Two normal ops; the output node's second one ends at its norm, before the head."""
        c = self.channels[level]

        def ops(k: int) -> nn.Module:
            final_activation = not (k == 2 and name == self.output)
            make = lambda n: normal_op(n, self.dims, c, final_activation)  # noqa: E731
            return self._op(f"{name}_op{k}", NORMAL_OPS, _FIXED_NORMAL, make, name, self.sbb)
        return nn.Sequential(ops(1), ops(2))

    # ----- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = [tuple(x.shape[2:])]
        for _ in range(1, self.levels):
            sizes.append(tuple(math.ceil(s / 2) for s in sizes[-1]))
        feats: dict[str, torch.Tensor | None] = {}
        for row in self.grid:
            for j, name in enumerate(row):
                if name not in self.blocks:
                    feats[name] = None
                    continue
                if name == self.grid[0][0]:
                    agg = self.stem(x)
                else:
                    srcs = self._sources_of(name)
                    agg = self.aggregate[name]([feats[s] for s in srcs], sizes[j])
                feats[name] = self.blocks[name](agg)
        last = (self.head_input([feats[n] for n in self.head_sources])
                if self.head_input is not None else feats[self.output])
        return self.head(torch.cat([last, x], dim=1) if self.image_skip else last)

    def _sources_of(self, name: str) -> list[str]:
        stage, level = (int(p) for p in name[1:].split("_"))
        return self._sources(stage, level)

    def node_positions(self) -> dict[str, tuple[float, float]]:
        """(stage, level) of every node, for drawing the derived architecture like Fig. 4."""
        return {name: (i, j) for i, row in enumerate(self.grid) for j, name in enumerate(row)}
