"""A plain U-Net space: each block picks its convolution, each skip is a connection choice.

The baseline every other space is compared with, and the smallest space that exercises every
part of the language: op choices on every block, gated skips, and a knob (the upsampling kind).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from nasseg.ops import Downsample, OutputHead, Resample, StackedConv, Upsample, check_spatial_dims
from nasseg.space import SearchSpace, register_space

__all__ = ["UNetSpace", "block_candidates"]


def block_candidates(spatial_dims: int, cin: int, cout: int) -> dict[str, Callable[[], nn.Module]]:
    """The convolutions a U-Net block chooses from (built lazily, so frozen nets build one)."""
    return {
        "conv3": lambda: StackedConv(spatial_dims, cin, cout, [3, 3]),
        "conv5": lambda: StackedConv(spatial_dims, cin, cout, [5]),
        "dil3": lambda: StackedConv(spatial_dims, cin, cout, [3, 3], dilation=2),
    }


@register_space("unet")
class UNetSpace(SearchSpace):
    """U-Net whose blocks choose among 3x3(x3) pairs, a 5x5(x5) and dilated 3x3(x3) pairs, and
    whose same-level skips are gated connection choices (a skip may be dropped).

    Args:
        in_channels: image channels.
        num_classes: output classes, background included.
        spatial_dims: 2 or 3.
        features: channels at the first level, doubled at each deeper level.
        levels: resolution levels (the input level included).

    Knobs: ``upsample`` (``transpose`` or ``interp``).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, spatial_dims: int = 3,
                 features: int = 8, levels: int = 3) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        if levels < 2:
            raise ValueError(f"levels must be >= 2, got {levels}")
        self.levels = levels
        chans = [features * 2 ** i for i in range(levels)]
        upsample = self.knob("upsample", ["transpose", "interp"])

        # Topology first: the encoder chain, the decoder chain, and a gated skip per level.
        self.fixed_edge("input", "enc0")
        for lvl in range(1, levels):
            self.fixed_edge(f"enc{lvl - 1}", f"enc{lvl}")
        self.fixed_edge(f"enc{levels - 1}", f"dec{levels - 2}")
        for lvl in range(levels - 2, 0, -1):
            self.fixed_edge(f"dec{lvl}", f"dec{lvl - 1}")
        self.fixed_edge("dec0", "out")
        self.set_outputs("out")
        self.skips = nn.ModuleList(
            self.connection_choice(f"skip{lvl}", f"dec{lvl}", [f"enc{lvl}"],
                                   align=lambda _i, c=chans[lvl]: Resample(spatial_dims, c, c, 0))
            for lvl in range(levels - 1))

        self.down = nn.ModuleList(Downsample(spatial_dims, chans[lvl], chans[lvl], "max")
                                  for lvl in range(levels - 1))
        self.encoder = nn.ModuleList(
            self.op_choice(f"enc{lvl}_op", block_candidates(
                spatial_dims, in_channels if lvl == 0 else chans[lvl - 1], chans[lvl]),
                node=f"enc{lvl}")
            for lvl in range(levels))
        self.up = nn.ModuleList(Upsample(spatial_dims, chans[lvl + 1], chans[lvl], upsample)
                                for lvl in range(levels - 1))
        self.decoder = nn.ModuleList(
            self.op_choice(f"dec{lvl}_op", block_candidates(spatial_dims, chans[lvl], chans[lvl]),
                           node=f"dec{lvl}")
            for lvl in range(levels - 1))
        self.head = OutputHead(spatial_dims, chans[0], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for lvl, block in enumerate(self.encoder):
            if lvl > 0:
                x = self.down[lvl - 1](x)
            x = block(x)
            skips.append(x)
        for lvl in range(self.levels - 2, -1, -1):
            size = skips[lvl].shape[2:]
            x = self.up[lvl](x)
            if tuple(x.shape[2:]) != tuple(size):
                x = nn.functional.interpolate(x, size=tuple(size))
            skip = self.skips[lvl]([skips[lvl]], size)
            x = self.decoder[lvl](x if skip is None else x + skip)
        return self.head(x)
