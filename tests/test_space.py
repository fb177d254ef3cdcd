"""The space language: choices, knobs, freeze, liveness, registry — on every registered space."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nasseg.derive import count_parameters
from nasseg.ops import Resample
from nasseg.space import (KnobError, SampleError, SearchSpace, UnknownSpaceError, create_space,
                          get_space_class, list_spaces, register_space, space_name)

SMALL_ARGS = {"in_channels": 2, "num_classes": 3, "features": 4}


@pytest.mark.parametrize("name", list_spaces())
@pytest.mark.parametrize("spatial_dims,shape", [(2, (19, 21)), (3, (11, 13, 9))])
def test_every_space_samples_freezes_and_runs_on_odd_shapes(name, spatial_dims, shape):
    if spatial_dims not in get_space_class(name).supported_dims:
        pytest.skip(f"{name} runs in {get_space_class(name).supported_dims}D only")
    space = create_space(name, spatial_dims=spatial_dims, **SMALL_ARGS)
    sample = space.default_sample()
    frozen = space.freeze(sample)
    batch = {k: torch.randn_like(v).expand(2, *v.shape[1:]).contiguous()
             for k, v in frozen.example_batch(shape, 2).items()}
    out = frozen.segmentation(frozen.forward_batch(batch))
    assert out.shape == (2, 3, *shape)
    out.sum().backward()
    frozen_params, supernet_params = count_parameters(frozen), count_parameters(space)
    assert frozen_params <= supernet_params  # every input is kept in the default sample
    if any(info.kind == "op" for info in space.choice_infos.values()):
        assert frozen_params < supernet_params  # one candidate of every op choice is built


def test_choices_are_listed_with_kinds():
    space = create_space("unet", spatial_dims=2, **SMALL_ARGS)
    kinds = {label: info.kind for label, info in space.choice_infos.items()}
    assert kinds["enc0_op"] == "op" and kinds["skip0"] == "connection"
    assert kinds["upsample"] == "knob"
    assert space.choice_infos["enc0_op"].candidates == ("conv3", "conv5", "dil3")


def test_frozen_net_builds_only_chosen_candidates():
    space = create_space("unet", spatial_dims=3, **SMALL_ARGS)
    a = space.freeze({**space.default_sample(), "enc0_op": "conv3"})
    b = space.freeze({**space.default_sample(), "enc0_op": "conv5"})
    enc0 = lambda m: count_parameters(m.encoder[0])  # noqa: E731
    # conv3: 2 * (2 * 4 * 27 + 4 * 27 ... ) differs from one 5x5x5 conv
    assert enc0(a) == 2 * 4 * 27 + 4 * 4 * 27 + 2 * 2 * 4  # two convs + two affine norms
    assert enc0(b) == 2 * 4 * 125 + 2 * 4


def test_dropped_skip_builds_no_alignment():
    space = create_space("unet", spatial_dims=2, **{**SMALL_ARGS, "features": 4})
    sample = space.default_sample()
    with_skip = space.freeze(sample)
    without = space.freeze({**sample, "skip0": []})
    assert without.skips[0].kept == [] and with_skip.skips[0].kept == [0]
    assert without(torch.randn(1, 2, 16, 16)).shape == (1, 3, 16, 16)


def test_knobs_resolve_from_fixed_values_and_reject_bad_ones():
    space = create_space("unet", knobs={"upsample": "interp"}, spatial_dims=2, **SMALL_ARGS)
    assert space.knob_values["upsample"] == "interp"
    with pytest.raises(KnobError, match="takes one of"):
        create_space("unet", knobs={"upsample": "bogus"}, spatial_dims=2, **SMALL_ARGS)
    with pytest.raises(KnobError, match="has no knob 'depth'.*upsample"):
        create_space("unet", knobs={"depth": 3}, spatial_dims=2, **SMALL_ARGS)


def test_freeze_rejects_bad_samples():
    space = create_space("unet", spatial_dims=2, **SMALL_ARGS)
    with pytest.raises(SampleError, match="no candidate 'conv9'"):
        space.freeze({**space.default_sample(), "enc0_op": "conv9"})
    with pytest.raises(SampleError, match="does not have"):
        space.freeze({**space.default_sample(), "nonsense": 1})
    sample = space.default_sample()
    del sample["dec0_op"]
    with pytest.raises(SampleError, match="dec0_op"):
        space.freeze(sample)


def test_unknown_space_lists_the_known_ones():
    with pytest.raises(UnknownSpaceError, match="unknown space 'nope'.*unet"):
        create_space("nope")
    with pytest.raises(UnknownSpaceError, match="cannot import"):
        create_space("no_such_module:Space")


class _Chain(SearchSpace):
    """Three nodes a -> b -> c; the output sums any of them: pruning must drop dead nodes."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.fixed_edge("input", "a")
        self.b_in = self.connection_choice("b_in", "b", ["a"])
        self.fixed_edge("b", "c")
        self.set_outputs("out")
        self.out_in = self.connection_choice(
            "out_in", "out", ["a", "b", "c"],
            align=lambda i: Resample(2, channels, channels, 0))
        self.a = nn.Conv2d(channels, channels, 3, padding=1)
        self.b = nn.Conv2d(channels, channels, 3, padding=1) if self.is_live("b") else None
        self.c = nn.Conv2d(channels, channels, 3, padding=1) if self.is_live("c") else None

    def forward(self, x):
        a = self.a(x)
        b = self.b(self.b_in([a])) if self.b is not None else None
        c = self.c(b) if self.c is not None else None
        return self.out_in([a, b, c], x.shape[2:])


def test_dead_nodes_are_not_built():
    space = _Chain()
    full = space.freeze({"b_in": [0], "out_in": [0, 1, 2]})
    only_a = space.freeze({"b_in": [0], "out_in": [0]})
    assert full.b is not None and full.c is not None
    assert only_a.b is None and only_a.c is None
    assert count_parameters(only_a) < count_parameters(full)
    assert only_a(torch.randn(1, 3, 8, 8)).shape == (1, 3, 8, 8)


def test_graph_prune_keeps_an_input_and_removes_dead_nodes():
    graph = _Chain().graph
    # all gates low: the output keeps its best input only; b and c die with it
    kept = graph.prune({"b_in": [0.9], "out_in": [0.1, 0.2, 0.3]}, tau=0.5)
    assert kept == {"b_in": [0], "out_in": [2]}
    kept = graph.prune({"b_in": [0.9], "out_in": [0.8, 0.2, 0.1]}, tau=0.5)
    assert kept == {"b_in": [], "out_in": [0]}  # b no longer feeds anything live


def test_user_space_registers_and_round_trips_its_name():
    @register_space("test_chain")
    class Registered(_Chain):
        pass

    assert "test_chain" in list_spaces()
    assert isinstance(create_space("test_chain"), Registered)
    # another process would not know "test_chain": the import path is what gets written
    assert space_name(create_space("test_chain")) == f"{__name__}:{Registered.__qualname__}"
    assert space_name(create_space("unet")) == "unet"
