"""UXNet: the paper's op sets, eq. 1's aggregation topology, tau pruning, ablations, the picture."""
from __future__ import annotations

import random

import pytest
import torch

from nasseg.artifacts.arch_file import build_derived
from nasseg.derive import count_parameters, derive_architecture, draw_architecture
from nasseg.ops import EXPANSION_OPS, NORMAL_OPS, REDUCTION_OPS, expansion_op, normal_op, reduction_op
from nasseg.space import create_space
from nasseg.space.graph import SpaceGraph


def _space(**kw):
    args = {"in_channels": 1, "num_classes": 3, "spatial_dims": 3, "features": 2, "levels": 3}
    knobs = {"sbb": True, **kw.pop("knobs", {})}  # the paper's space: block ops searched too
    return create_space("uxnet", knobs=knobs, **{**args, **kw})


def test_op_sets_are_the_papers():
    assert NORMAL_OPS == ("conv3", "conv3x3x1", "conv5", "p3d", "conv3x2", "dil3", "dil5")
    assert REDUCTION_OPS == ("max_pool", "avg_pool", "conv_stride2")
    assert EXPANSION_OPS == ("transpose", "trilinear")
    infos = _space().choice_infos
    assert infos["N1_0_op1"].candidates == NORMAL_OPS
    assert infos["N1_1_down"].candidates == REDUCTION_OPS
    assert infos["N1_1_up"].candidates == EXPANSION_OPS


@pytest.mark.parametrize("dims,shape", [(2, (9, 11)), (3, (9, 10, 11))])
def test_ops_keep_or_rescale_the_size(dims, shape):
    x = torch.randn(1, 4, *shape)
    for name in NORMAL_OPS:
        assert normal_op(name, dims, 4)()(x).shape == x.shape, name
    for name in REDUCTION_OPS:
        y = reduction_op(name, dims, 4, 8, 2)()(x)
        assert y.shape[:2] == (1, 8) and all(a == -(-b // 4) for a, b in zip(y.shape[2:], shape))
    for name in EXPANSION_OPS:
        y = expansion_op(name, dims, 4, 2, 1)()(x)
        assert y.shape[:2] == (1, 2) and tuple(y.shape[2:]) == tuple(2 * s for s in shape)


@pytest.mark.parametrize("dims,levels", [(2, 1), (3, 2)])
def test_interpolating_expansion_projects_before_it_upsamples(dims, levels):
    """The 1x1 conv runs at the coarse size, yet the op equals upsample -> conv -> norm -> act."""
    op = expansion_op("trilinear", dims, 8, 2, levels)().eval()
    x = torch.randn(2, 8, *[5] * dims)
    mode = "bilinear" if dims == 2 else "trilinear"
    upsampled_first = op.proj(torch.nn.functional.interpolate(
        x, scale_factor=2 ** levels, mode=mode, align_corners=False))
    convolved = []
    op.proj[0].register_forward_hook(lambda m, i, o: convolved.append(o.shape))
    assert torch.allclose(op(x), upsampled_first, atol=1e-5)
    assert convolved[-1][2:] == x.shape[2:]  # the conv saw the coarse map


@pytest.mark.parametrize("knobs", [{"sbb": True}, {"sbb": False, "mssa": False}])
def test_head_reads_the_output_nodes_features_before_their_activation(knobs):
    """Below zero the head sees the norm's full value, not LeakyReLU's 1/100 of it."""
    torch.manual_seed(0)
    space = _space(knobs=knobs).eval()
    seen = {}
    space.head.register_forward_hook(lambda m, i, o: seen.update(head=i[0]))
    inner = space.blocks["N1_0"]
    inner.register_forward_hook(lambda m, i, o: seen.update(inner=o))
    space(torch.randn(1, 1, 16, 16, 16))
    assert seen["head"].min() < -0.5  # a norm's output: about -3 at 4096 voxels
    assert seen["inner"].min() > -0.1  # every other node ends with its LeakyReLU


@pytest.mark.parametrize("knobs", [{"sbb": False, "mssa": False}, {"sbb": False}])
def test_image_skip_feeds_each_voxels_intensity_to_the_head(knobs):
    """With ``image_skip`` the 1x1 head reads the image too: one voxel's intensity moves that
    voxel's logits through the head's own weights, which the blocks alone could not carry."""
    torch.manual_seed(0)
    plain = _space(knobs={**knobs, "image_skip": False})
    skip = _space(knobs=knobs).eval()  # the default
    assert skip.image_skip and not plain.image_skip
    assert count_parameters(skip) - count_parameters(plain) == 3  # one input channel, 3 classes
    seen = {}
    skip.head.register_forward_hook(lambda m, i, o: seen.update(head=i[0]))
    x = torch.randn(1, 1, 16, 16, 16)
    logits = skip(x)
    assert seen["head"].shape[1] == 3 and torch.equal(seen["head"][:, -1:], x)
    weights = skip.head.conv.weight[:, -1].flatten().clone()
    with torch.no_grad():
        skip.head.conv.weight[:, -1] = 0
    assert torch.allclose(logits - skip(x), weights.view(1, 3, 1, 1, 1) * x, atol=1e-5)


def test_a_file_written_before_image_skip_existed_builds_the_net_without_it():
    """``image_skip`` is on by default, but an ``arch.json`` that lacks it was derived (and
    measured) without it: it must keep building that net, not gain an input channel."""
    args = {"in_channels": 1, "num_classes": 3, "spatial_dims": 3, "features": 2}
    knobs = {"sbb": False, "mssa": False}
    older = build_derived({"space": "uxnet", "space_args": args, "knobs": knobs,
                           "sample": knobs})
    assert not older.image_skip and older.head.conv.in_channels == 2
    assert create_space("uxnet", knobs=knobs, **args).image_skip


def test_aggregation_topology_follows_equation_one():
    space = _space(levels=5, spatial_dims=2)
    assert [len(row) for row in space.grid] == [5, 4, 3, 2, 1]  # N(1,4), N(2,3)... dropped
    conns = space.graph.connections
    assert conns["N0_3_in"].sources == ("N0_0", "N0_1", "N0_2")  # every shallower level
    assert conns["N2_1_in"].sources == ("N1_0", "N1_1", "N1_2", "N1_3")  # all of stage 1
    assert space.output == "N4_0" and space.graph.outputs == ["out"]


GATES = (0.95, 0.7, 0.8, 0.3, 0.65, 0.1)


def _derive(space, tau, seed=0):
    """Derive with random op scores and gates cycling through GATES from position ``seed``."""
    rng = random.Random(seed)
    gates = iter(GATES[(seed + k) % len(GATES)] for k in range(10_000))
    scores = {"op": {}, "connection": {}}
    for label, info in space.choice_infos.items():
        if info.kind == "op":
            probs = [rng.random() for _ in info.candidates]
            scores["op"][label] = {"probs": [p / sum(probs) for p in probs]}
        elif info.kind == "connection":
            scores["connection"][label] = {"probs": [next(gates) for _ in info.candidates]}
    return derive_architecture(space, scores, tau, [1, 12, 12, 12])


def test_higher_tau_keeps_fewer_connections_and_parameters():
    space = _space(features=4)
    low, high = _derive(space, 0.6), _derive(space, 0.9)
    kept = lambda a: {(l, i) for l, c in a["choices"].items() if c["kind"] == "connection"  # noqa: E731
                      for i in c["kept"]}
    assert kept(high) < kept(low)
    assert high["params"] < low["params"] < high["supernet_params"]


@pytest.mark.parametrize("tau", [0.3, 0.6, 0.9, 0.99])
def test_pruned_net_keeps_only_live_nodes_and_reaches_the_output(tau):
    space = _space()
    arch = _derive(space, tau, seed=3)
    graph = SpaceGraph(fixed=space.graph.fixed, connections=space.graph.connections,
                       outputs=space.graph.outputs)
    kept = {l: c["kept"] for l, c in arch["choices"].items() if c["kind"] == "connection"}
    live = graph.live_nodes(kept)
    net = space.freeze(arch["sample"])
    assert set(net.blocks) == {n for n in live if n.startswith("N")}
    for label, choice in arch["choices"].items():  # ops of deleted nodes are marked unused
        if choice["kind"] == "op" and choice["node"] not in live:
            assert choice["used"] is False, label
    for label, idx in kept.items():  # every live node keeps an input
        if graph.connections[label].node in live:
            assert idx
    assert net(torch.randn(1, 1, 12, 12, 12)).shape == (1, 3, 12, 12, 12)


def test_ablation_switches():
    sbb_off = _space(knobs={"sbb": False})
    assert {i.kind for i in sbb_off.choice_infos.values()} == {"connection", "knob"}
    mssa_off = _space(knobs={"mssa": False})
    assert not mssa_off.graph.connections
    assert mssa_off.graph.fixed["N1_0"] == ["N0_0", "N0_1"]  # same level and the level below
    assert mssa_off.graph.fixed["N0_2"] == ["N0_1"]
    unet = _space(knobs={"sbb": False, "mssa": False})
    assert {i.kind for i in unet.choice_infos.values()} == {"knob"}
    assert count_parameters(unet) == count_parameters(unet.freeze(unet.default_sample()))


@pytest.mark.parametrize("mssa", [True, False])
def test_search_resampling_searches_only_the_ops_between_levels(mssa):
    """``search_resampling`` makes T()'s reduction and expansion ops choices (one per node and
    direction, the paper's sets) and leaves every block a fixed 3x3x3 conv."""
    space = _space(knobs={"sbb": False, "mssa": mssa, "search_resampling": True})
    ops = {label: info.candidates for label, info in space.choice_infos.items()
           if info.kind == "op"}
    assert ops and not any("_op" in label for label in ops)
    assert {c for c in ops.values()} == {REDUCTION_OPS, EXPANSION_OPS}
    assert {label.split("_")[-1] for label in ops} == {"down", "up"}
    assert all(label.endswith("_down") == (ops[label] == REDUCTION_OPS) for label in ops)
    chosen = {label: cands[-1] for label, cands in ops.items()}
    net = space.freeze({**space.default_sample(), **chosen})
    assert not any(isinstance(m, torch.nn.ConvTranspose3d) for m in net.modules())
    assert net(torch.randn(1, 1, 12, 12, 12)).shape == (1, 3, 12, 12, 12)
    # with sbb the knob is inactive: every op is searched whatever it says
    assert _space(knobs={"sbb": True, "search_resampling": False}).search_resampling


def test_a_file_written_before_search_resampling_existed_builds_fixed_resampling():
    args = {"in_channels": 1, "num_classes": 3, "spatial_dims": 3, "features": 2}
    knobs = {"sbb": False, "mssa": False, "image_skip": True}
    older = build_derived({"space": "uxnet", "space_args": args, "knobs": knobs,
                           "sample": knobs})
    assert not older.search_resampling
    assert any(isinstance(m, torch.nn.ConvTranspose3d) for m in older.modules())


def test_search_head_gates_the_level0_node_of_every_stage_into_the_head():
    """``search_head``: the head sums the kept level-0 nodes; a net that drops the last stage's
    node loses the nodes only it needed, and the U-Net ablation has no such choice."""
    space = _space(knobs={"sbb": False, "search_head": True})
    spec = space.graph.connections["out_in"]
    assert (spec.node, spec.sources) == ("out", ("N0_0", "N1_0", "N2_0"))
    sample = space.default_sample()
    assert space.freeze(sample)(torch.randn(1, 1, 12, 12, 12)).shape == (1, 3, 12, 12, 12)
    net = space.freeze({**sample, "out_in": [0, 1]})
    assert "N2_0" not in net.blocks and "N1_1" not in net.blocks and "N1_0" in net.blocks
    assert net(torch.randn(1, 1, 12, 12, 12)).shape == (1, 3, 12, 12, 12)
    assert count_parameters(net) < count_parameters(space.freeze(sample))
    unet = _space(knobs={"sbb": False, "mssa": False, "search_head": True})
    assert not unet.search_head and "out_in" not in unet.graph.connections
    assert ("N2_0" in unet.graph.fixed["out"]) and _space(knobs={"sbb": False}).search_head


def test_a_file_written_before_search_head_existed_builds_the_head_on_the_last_node():
    args = {"in_channels": 1, "num_classes": 3, "spatial_dims": 3, "features": 2}
    space = _space(knobs={"sbb": False, "search_head": False})
    sample = {k: v for k, v in space.default_sample().items() if k != "search_head"}
    older = build_derived({"space": "uxnet", "space_args": args, "knobs": {"sbb": False},
                           "sample": sample})
    assert not older.search_head and older.head_input is None
    assert older.graph.fixed["out"] == ["N2_0"]


def test_fixed_ops_interpolate_jumps_of_more_than_one_level_up():
    space = _space(knobs={"sbb": False})
    resample = {src: space.aggregate["N1_0"].align[str(i)].resample
                for i, src in enumerate(space.graph.connections["N1_0_in"].sources)}
    assert isinstance(resample["N0_0"], torch.nn.Identity)
    assert isinstance(resample["N0_1"], torch.nn.ConvTranspose3d)  # one level: the U-Net's
    assert not any(isinstance(m, torch.nn.ConvTranspose3d) for m in resample["N0_2"].modules())
    x = torch.randn(1, space.channels[2], 3, 3, 3)
    y = resample["N0_2"](x)
    assert y.shape == (1, space.channels[0], 12, 12, 12)
    # interpolated, not painted patch by patch: neighbours inside one 4x4x4 block differ
    assert not torch.allclose(y[..., 1, 1, 1], y[..., 2, 2, 2])


def test_picture_shows_live_nodes_and_chosen_ops(tmp_path):
    space = _space()
    arch = _derive(space, 0.9, seed=1)
    path = draw_architecture(arch, tmp_path / "arch.svg")
    svg = path.read_text()
    assert svg.startswith("<svg") and "derived at tau 0.9" in svg
    for name in space.freeze(arch["sample"]).blocks:
        assert f">{name}</text>" in svg
    assert arch["choices"]["N0_0_op1"]["chosen"] in svg


def _search(tmp_path, data, *args):
    from click.testing import CliRunner

    from nasseg.cli import cli

    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["search", "--space", "uxnet", "--data", str(data), "--out",
                                      str(out), "--epochs", "2", "--warmup-epochs", "1",
                                      "--steps-per-epoch", "2", "--device", "cpu",
                                      "--space-arg", "features=2", *args])
    assert result.exit_code == 0, result.output
    return out


def test_searches_2d_data_and_draws_the_result(tmp_path, small2d):
    from nasseg.artifacts.files import read_json

    out = _search(tmp_path, small2d)
    arch = read_json(out / "arch.json")
    assert arch["space_args"]["spatial_dims"] == 2 and arch["tau"] == 0.6
    assert (out / "arch.svg").read_text().startswith("<svg")


def test_unet_ablation_trains_weights_only(tmp_path, small3d):
    import torch as _torch

    from nasseg.artifacts.files import read_json

    out = _search(tmp_path, small3d, "--set", "sbb=false", "--set", "mssa=false")
    arch = read_json(out / "arch.json")
    assert arch["params"] == arch["supernet_params"]
    assert _torch.load(out / "checkpoint.pt", weights_only=False)["arch_opt"] is None
