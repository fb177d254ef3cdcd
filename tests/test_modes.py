"""The relaxations (full mixing and the memory-saving modes: partial channels, Gumbel, binary
gates), their registry, and the cost card.

Each registered mode moves the architecture in a short search in 2D and 3D and derives a
network, and relaxes op choices over several tensors; partial channels shrink candidates and
keep shapes; sampled modes run only the sampled candidates and align only the gated-on inputs;
all three hold less activation memory than full mixing (counted exactly, with saved-tensor
hooks, not timed); a Gumbel search resumes exactly.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from nasseg.artifacts.files import read_json
from nasseg.artifacts.run_folder import RunFolder
from nasseg.cli import cli
from nasseg.data import load_arrays
from nasseg.derive import derive_architecture
from nasseg.ops import NORMAL_OPS, OutputHead, normal_op
from nasseg.runtime.seeding import seed_everything
from nasseg.searches.darts import DartsSearch, SearchConfig
from nasseg.searches.darts.modes import (PartialChannelError, PartialMixedOp, SampledConnection,
                                         gumbel_temperature, shrink_channels)
from nasseg.searches.darts.relaxation import (RELAXATIONS, FullMixing, MixedOp, get_relaxation,
                                              register_relaxation, relax)
from nasseg.space import SearchSpace, create_space

MODES = tuple(RELAXATIONS)
TINY = {"features": 4, "levels": 2}
#: UXNet with its block ops searched as well (``sbb`` defaults to fixed 3x3x3 blocks)
OPS = {"sbb": True}


class Cell(SearchSpace):
    """One UXNet cell: the seven normal ops as one op choice, then a 1x1 head."""

    def __init__(self, channels: int = 8, spatial_dims: int = 3, num_classes: int = 2,
                 extra: str | None = None) -> None:
        super().__init__()
        ops = {n: normal_op(n, spatial_dims, channels) for n in NORMAL_OPS}
        if extra == "layernorm":
            ops["odd"] = lambda: nn.Sequential(nn.Conv3d(channels, channels, 1),
                                               nn.LayerNorm([4, 4, 4]))
        self.cell = self.op_choice("cell", ops)
        self.head = OutputHead(spatial_dims, channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.cell(x))


def _engine(data: Path, tmp_path: Path, mode: str, on_epoch=None, **config) -> DartsSearch:
    seed_everything(0)
    dataset = load_arrays(data)
    run = RunFolder(tmp_path / "run")
    run.path.mkdir(parents=True, exist_ok=True)
    cfg = SearchConfig(**{"epochs": 2, "warmup_epochs": 0, "device": "cpu", "mode": mode,
                          "steps_per_epoch": 2, "arch_lr": 3e-2, "arch_weight_decay": 0.0,
                          "extend_unlearned": 0, **config})
    space = create_space("uxnet", knobs=OPS, in_channels=dataset.in_channels,
                         num_classes=dataset.num_classes, spatial_dims=dataset.spatial_dims,
                         **TINY)
    return DartsSearch(space, dataset, run, cfg, show_progress=False, on_epoch=on_epoch)


# ----- every mode searches, in 2D and 3D, and derives -----------------------------------------
@pytest.mark.parametrize("dims", [3, 2])
@pytest.mark.parametrize("mode", MODES)
def test_mode_moves_architecture_and_derives(mode, dims, small3d, small2d, tmp_path):
    data = small3d if dims == 3 else small2d
    engine = _engine(data, tmp_path, mode, epochs=3)
    before = engine.arch.labelled_state()
    engine.run()
    after = engine.arch.labelled_state()
    for label in before["alpha"]:
        assert not torch.equal(before["alpha"][label], after["alpha"][label]), label
    for label, b in before["beta"].items():
        moved = not torch.equal(b, after["beta"][label])
        if mode == "partial" and len(b) == 1:
            assert not moved, label  # edge normalisation: a lone input's gate cannot matter
        else:
            assert moved, label

    # derive and freeze: only the architecture parameters matter, the full-width ops return
    dataset = load_arrays(data)
    space = create_space("uxnet", knobs=OPS, in_channels=dataset.in_channels,
                         num_classes=dataset.num_classes, spatial_dims=dims, **TINY)
    scores = read_json(engine.run_folder.arch_params)
    arch = derive_architecture(space, scores, space.default_tau,
                               [dataset.in_channels, *dataset.patch_size])
    net = space.freeze(arch["sample"])
    x = torch.randn(1, dataset.in_channels, *dataset.patch_size)
    assert net(x).shape == (1, dataset.num_classes, *dataset.patch_size)

    card = read_json(engine.run_folder.cost)
    assert card["mode"] == mode and card["epochs_done"] == 3
    assert card["steps"] == {"weight": card["steps"]["weight"], "arch": card["steps"]["weight"]}
    assert card["steps"]["weight"] > 0 and card["peak_memory_mb"]["rss"] > 0
    assert set(card["seconds"]) == {"data", "weight_steps", "arch_steps", "validation",
                                    "checkpoint", "selection"}
    # every phase ran and was timed, and the phases fit in the search's wall time
    assert all(v > 0 for v in card["seconds"].values()), card["seconds"]
    assert sum(card["seconds"].values()) <= card["wall_seconds"]
    assert card["torch"] == torch.__version__ and card["device"] == "cpu"


# ----- op choices over several tensors ----------------------------------------------------------
class _Counted(nn.Module):
    """A candidate that records its construction (a frozen net builds the chosen one only)."""

    built: list[str] = []

    def __init__(self) -> None:
        super().__init__()
        _Counted.built.append(type(self).__name__)


class _Concat(_Counted):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2 * channels, channels, 1)

    def forward(self, a, b):
        return self.conv(torch.cat([a, b], 1))


class _Add(_Counted):
    def forward(self, a, b):
        return a + b


class _Attention(_Counted):
    """``a + sigmoid(conv(b)) * b``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 1)

    def forward(self, a, b):
        return a + torch.sigmoid(self.conv(b)) * b


class Fuse(SearchSpace):
    """Two branches of the image, fused by a two-input op choice, then a 1x1 head. Without
    ``concat`` every candidate maps C to C channels, which partial channels would split."""

    def __init__(self, channels: int = 4, concat: bool = True) -> None:
        super().__init__()
        self.a = nn.Conv3d(1, channels, 3, padding=1)
        self.b = nn.Conv3d(1, channels, 3, padding=1)
        candidates = {"concat": lambda: _Concat(channels), "add": _Add,
                      "attention": lambda: _Attention(channels)}
        if not concat:
            del candidates["concat"]
        self.fuse = self.op_choice("fuse", candidates, inputs=2)
        self.head = nn.Conv3d(channels, 2, 1)

    def forward(self, x):
        return self.head(self.fuse(self.a(x), self.b(x)))


@pytest.mark.parametrize("concat", [True, False])
@pytest.mark.parametrize("mode", MODES)
def test_two_input_op_choice_is_relaxed_in_every_mode(mode, concat):
    torch.manual_seed(0)
    space = Fuse(concat=concat)
    arch = relax(space, mode=mode, partial_k=2)
    # partial channels cannot split two tensors: the choice stays fully mixed, and says so
    assert arch.fully_mixed == (["fuse"] if mode == "partial" else [])
    x = torch.randn(2, 1, 6, 6, 6)
    for _ in range(3):  # sampled modes: a few draws
        arch.zero_grad()
        space.zero_grad()
        space(x).square().mean().backward()
        assert arch.alpha["fuse"].grad.abs().sum() > 0
        assert space.head.weight.grad.abs().sum() > 0
    space.eval()
    assert space(x).shape == (2, 2, 6, 6, 6)


def test_a_frozen_two_input_choice_builds_only_the_chosen_candidate():
    space = Fuse()
    _Counted.built.clear()
    net = space.freeze({"fuse": "attention"})
    assert _Counted.built == ["_Attention"] and isinstance(net.fuse, _Attention)
    assert net(torch.randn(1, 1, 4, 4, 4)).shape == (1, 2, 4, 4, 4)


# ----- partial channels -----------------------------------------------------------------------
@pytest.mark.parametrize("dims", [3, 2])
def test_shrunk_candidates_run_on_a_quarter_of_the_channels(dims):
    size = (6,) * dims
    for name in NORMAL_OPS:
        op = shrink_channels(normal_op(name, dims, 8)(), 4)
        assert op(torch.randn(2, 2, *size)).shape == (2, 2, *size), name
        assert sum(p.numel() for p in op.parameters()) < sum(
            p.numel() for p in normal_op(name, dims, 8)().parameters()) / 4, name


def test_shrinking_handles_depthwise_convs_and_group_norm():
    op = nn.Sequential(nn.Conv3d(8, 8, 3, padding=1, groups=8), nn.GroupNorm(4, 8),
                       nn.Conv3d(8, 8, 1), nn.BatchNorm3d(8))
    shrink_channels(op, 2)
    assert op(torch.randn(2, 4, 5, 5, 5)).shape == (2, 4, 5, 5, 5)
    assert op[0].groups == 4 and op[1].num_groups == 2 and op[3].running_mean.shape == (4,)
    with pytest.raises(PartialChannelError, match="groups=2"):
        shrink_channels(nn.Conv3d(8, 8, 3, groups=2), 2)


@pytest.mark.parametrize("dims", [3, 2])
def test_partial_mixed_op_keeps_shape_and_bypasses_three_quarters(dims):
    cell = Cell(channels=8, spatial_dims=dims)
    arch = relax(cell, mode="partial", partial_k=4)
    mixed = cell.cell
    assert isinstance(mixed, PartialMixedOp) and arch.fully_mixed == []
    x = torch.randn(2, 8, *(6,) * dims)
    out = mixed(x)
    assert out.shape == x.shape
    # PC-DARTS channel shuffle: mixed channel j lands at 4 j, bypassed chunk g at 4 j + g
    for g in range(1, 4):
        assert torch.equal(out[:, g::4], x[:, 2 * g:2 * (g + 1)])
    assert not torch.allclose(out[:, 0::4], x[:, 0:2])
    loss = cell.head(out).square().mean()
    loss.backward()
    assert arch.alpha["cell"].grad.abs().sum() > 0


def test_partial_mode_runs_channel_changing_choices_on_a_quarter_of_the_channels():
    space = create_space("uxnet", knobs=OPS, in_channels=1, num_classes=3, spatial_dims=3,
                         **TINY)
    arch = relax(space, mode="partial")
    assert arch.fully_mixed == []
    partial = {n: m for n, m in space.named_modules() if isinstance(m, PartialMixedOp)}
    changing = {n: m for n, m in partial.items() if m.cin != m.cout}
    assert changing, "the T() reduction/expansion choices should be partial"
    assert space(torch.randn(1, 1, 8, 8, 8)).shape == (1, 3, 8, 8, 8)


class _Resize(SearchSpace):
    """One choice from 8 to ``cout`` channels at half the size (``up``: twice the size)."""

    def __init__(self, cout: int, up: bool = False) -> None:
        super().__init__()
        conv = (nn.ConvTranspose3d(8, cout, 2, stride=2) if up
                else nn.Conv3d(8, cout, 3, stride=2, padding=1))
        self.resize = self.op_choice("resize", {
            "a": lambda: conv, "b": lambda: nn.Sequential(
                nn.Upsample(scale_factor=2) if up else nn.MaxPool3d(2), nn.Conv3d(8, cout, 1))})

    def forward(self, x):
        return self.resize(x)


def test_partial_bypass_repeats_or_averages_channels_and_others_stay_mixed():
    x = torch.randn(1, 8, 4, 4, 4)
    wide = _Resize(16)
    relax(wide, mode="partial", partial_k=2)
    out = wide(x)
    assert out.shape == (1, 16, 2, 2, 2)
    # group 1 (odd channels): the bypassed half, max-pooled, each channel twice
    pooled = nn.functional.max_pool3d(x[:, 4:], 2)
    assert torch.equal(out[:, 1::2], pooled.repeat_interleave(2, dim=1))

    narrow = _Resize(4, up=True)
    relax(narrow, mode="partial", partial_k=2)
    out = narrow(x)
    assert out.shape == (1, 4, 8, 8, 8)
    averaged = x[:, 4:].unflatten(1, (2, 2)).mean(2)
    assert torch.allclose(out[:, 1::2], nn.functional.interpolate(averaged, scale_factor=2))
    out.sum().backward()

    odd = _Resize(12)  # 8 -> 12 channels: no whole factor, so fully mixed
    arch = relax(odd, mode="partial", partial_k=2)
    assert arch.fully_mixed == ["resize"] and odd(x).shape == (1, 12, 2, 2, 2)


def test_partial_mode_pools_the_bypass_of_a_strided_choice():
    class Down(SearchSpace):
        def __init__(self) -> None:
            super().__init__()
            self.down = self.op_choice("down", {
                "pool": lambda: nn.MaxPool3d(2),
                "conv": lambda: nn.Sequential(nn.Conv3d(8, 8, 3, stride=2, padding=1),
                                              nn.InstanceNorm3d(8, affine=True))})

        def forward(self, x):
            return self.down(x)

    space = Down()
    relax(space, mode="partial", partial_k=2)
    x = torch.randn(1, 8, 8, 8, 8)
    out = space(x)
    assert out.shape == (1, 8, 4, 4, 4)
    assert torch.equal(out[:, 1::2], nn.functional.max_pool3d(x[:, 4:], 2))


def test_partial_mode_refuses_what_it_cannot_shrink():
    with pytest.raises(PartialChannelError, match="'cell'.*'odd'.*LayerNorm"):
        relax(Cell(channels=8, extra="layernorm"), mode="partial")
    with pytest.raises(PartialChannelError, match="6 channels are not divisible by K=4"):
        relax(Cell(channels=6), mode="partial", partial_k=4)


# ----- sampled modes --------------------------------------------------------------------------
def _count_calls(mixed) -> dict[str, int]:
    calls = dict.fromkeys(mixed.candidates, 0)
    for name, op in mixed.candidates.items():
        op.register_forward_hook(lambda m, a, o, n=name: calls.__setitem__(n, calls[n] + 1))
    return calls


@pytest.mark.parametrize("mode, arch_paths", [("gumbel", 1), ("binary", 2)])
def test_sampled_modes_run_only_the_sampled_candidates(mode, arch_paths):
    torch.manual_seed(0)
    cell = Cell(channels=4, spatial_dims=3)
    arch = relax(cell, mode=mode)
    arch.temperature = 5.0
    calls = _count_calls(cell.cell)
    x = torch.randn(2, 4, 6, 6, 6)
    weights = list(cell.parameters())
    for step in range(6):
        for kind in ("arch", "weight"):
            for p in weights:
                p.requires_grad_(kind == "weight")
            arch.alpha["cell"].requires_grad_(kind == "arch")
            arch.alpha["cell"].grad = None
            before = dict(calls)
            loss = cell(x).square().mean()
            ran = [n for n in calls if calls[n] != before[n]]
            assert all(calls[n] - before[n] == 1 for n in ran)
            assert len(ran) == (arch_paths if kind == "arch" else 1), (kind, ran)
            if kind == "arch":
                loss.backward()
                assert arch.alpha["cell"].grad.abs().sum() > 0
    cell.eval()
    before = dict(calls)
    cell(x)
    assert sum(calls.values()) - sum(before.values()) == 1


def test_binary_second_path_runs_without_autograd_and_changes_no_gradient():
    torch.manual_seed(0)
    cell = Cell(channels=4, spatial_dims=3)
    arch = relax(cell, mode="binary")
    for p in cell.parameters():
        p.requires_grad_(False)  # the architecture step
    x = torch.randn(2, 4, 6, 6, 6, requires_grad=True)
    alpha = arch.alpha["cell"]
    loss = cell.head(cell.cell(x)).square().mean()
    sample = arch.op_sample("cell")
    assert len(sample.paths) == 2
    got = torch.autograd.grad(loss, [alpha, x], retain_graph=True)
    # the reference: both sampled paths under autograd, same sample and weights
    ops = list(cell.cell.candidates.values())
    out = sum(w * ops[i](x) for w, i in zip(sample.weights, sample.paths))
    want = torch.autograd.grad(cell.head(out).square().mean(), [alpha, x])
    assert torch.allclose(got[0], want[0], atol=1e-7) and got[0].abs().sum() > 0
    assert torch.allclose(got[1], want[1], atol=1e-7)


@pytest.mark.parametrize("mode", ["gumbel", "binary"])
def test_sampled_gates_align_only_the_inputs_they_keep(mode):
    torch.manual_seed(0)
    space = create_space("uxnet", knobs=OPS, in_channels=1, num_classes=3, spatial_dims=3,
                         **TINY)
    arch = relax(space, mode=mode)
    conn = space.aggregate["N1_0"]
    assert isinstance(conn, SampledConnection)
    aligned: list[int] = []
    for key, module in conn.align.items():
        module.register_forward_hook(lambda m, a, o, i=int(key): aligned.append(i))
    x = torch.randn(1, 1, 8, 8, 8)
    seen = set()
    for _ in range(12):
        aligned.clear()
        space(x)
        kept = arch.gate_sample("N1_0_in").on
        assert aligned == kept and len(kept) >= 1
        seen.add(tuple(kept))
    assert len(seen) > 1  # gates at 0.5: the subsets vary
    with torch.no_grad():
        arch.beta["N1_0_in"].fill_(-20.0)
    aligned.clear()
    space(x)
    assert len(aligned) == 1  # every gate off: still one input


# ----- memory: activations saved for backward, counted exactly --------------------------------
def _saved_bytes(fn) -> int:
    from nasseg.runtime.cost import saved_activation_bytes

    return saved_activation_bytes(fn)


def _step_memory(mode: str) -> int:
    """The larger of the saved-tensor bytes of an architecture step and of a weight step of
    one 3D cell (16 channels, 16^3, batch 2)."""
    torch.manual_seed(0)
    cell = Cell(channels=16, spatial_dims=3)
    arch = relax(cell, mode=mode)
    x = torch.randn(2, 16, 16, 16, 16)
    peak = 0
    for kind in ("arch", "weight"):
        for p in cell.parameters():
            p.requires_grad_(kind == "weight")
        arch.alpha["cell"].requires_grad_(kind == "arch")
        for _ in range(3):  # sampled modes: a few draws, keep the worst
            peak = max(peak, _saved_bytes(lambda: cell(x).square().mean()))
    return peak


def test_memory_modes_hold_less_than_full_mixing():
    full = _step_memory("full")
    for mode in ("partial", "gumbel", "binary"):
        assert _step_memory(mode) < 0.5 * full, mode


def _supernet_step_memory(mode: str, small3d, tmp_path) -> int:
    """The larger of the saved-tensor bytes of the engine's architecture step and weight step
    on the UXNet supernet (features 8, 3 levels, 16^3, batch 2); sampled modes: worst of 4."""
    from nasseg.runtime.cost import saved_activation_bytes
    from nasseg.searches.darts.engine import _grad_enabled

    seed_everything(0)
    dataset = load_arrays(small3d)
    run = RunFolder(tmp_path / mode)
    run.path.mkdir(parents=True)
    space = create_space("uxnet", knobs=OPS, in_channels=1, num_classes=dataset.num_classes,
                         spatial_dims=3, features=8, levels=3)
    engine = DartsSearch(space, dataset, run, SearchConfig(device="cpu", mode=mode),
                         show_progress=False)
    batch = next(engine.stage_loaders(engine.schedule[0])[0].epoch(0))
    engine.model.train()
    peak = 0
    for frozen in (engine.weights, engine.arch_params):
        with _grad_enabled(frozen, False):
            for _ in range(4 if get_relaxation(mode).samples else 1):
                peak = max(peak, saved_activation_bytes(lambda: engine._loss(batch, "m", 0, 0)))
    return peak


def test_memory_modes_meet_the_target_on_the_uxnet_supernet(small3d, tmp_path):
    """Issue target: each memory-saving mode holds at most 0.4x full mixing's step memory."""
    full = _supernet_step_memory("full", small3d, tmp_path)
    for mode in ("partial", "gumbel", "binary"):
        assert _supernet_step_memory(mode, small3d, tmp_path) <= 0.4 * full, mode


# ----- temperature, resume, settings, CLI -----------------------------------------------------
def test_gumbel_temperature_anneals_linearly_over_the_searching_epochs():
    assert gumbel_temperature(0, 10, 2, 5.0, 0.5) == 5.0  # warm-up
    assert gumbel_temperature(2, 10, 2, 5.0, 0.5) == 5.0
    assert gumbel_temperature(9, 10, 2, 5.0, 0.5) == 0.5
    assert gumbel_temperature(5, 10, 2, 5.0, 0.5) == pytest.approx(5.0 - 4.5 * 3 / 7)
    assert gumbel_temperature(0, 1, 0, 5.0, 0.5) == 0.5


def test_gumbel_search_resumes_to_the_same_architecture(small3d, tmp_path):
    unbroken = _engine(small3d, tmp_path / "a", "gumbel", epochs=3)
    unbroken.run()
    class Killed(Exception):
        pass

    def kill(epoch: int, dice: float) -> None:
        raise Killed  # after the first epoch's checkpoint

    broken = _engine(small3d, tmp_path / "b", "gumbel", on_epoch=kill, epochs=3)
    with pytest.raises(Killed):
        broken.run()
    resumed = _engine(small3d, tmp_path / "b", "gumbel", epochs=3)
    resumed.resume()
    resumed.run()
    a, b = unbroken.arch.labelled_state(), resumed.arch.labelled_state()
    for kind in a:
        for label in a[kind]:
            assert torch.equal(a[kind][label], b[kind][label]), label
    card = read_json(resumed.run_folder.cost)
    assert [s["epochs"] for s in card["sessions"]] == [[0, 1], [1, 3]]
    assert card["steps"]["weight"] == sum(s["steps"]["weight"] for s in card["sessions"])


def test_settings_refuse_bad_mode_combinations():
    with pytest.raises(ValueError, match="mode must be one of"):
        SearchConfig(mode="half")
    with pytest.raises(ValueError, match="second order needs a deterministic relaxation"):
        SearchConfig(mode="gumbel", order=2)
    with pytest.raises(ValueError, match="gumbel_temperature"):
        SearchConfig(mode="gumbel", gumbel_temperature=(0.5, 5.0))


def test_settings_read_the_gumbel_temperature_of_an_older_run_json():
    old = {k: v for k, v in SearchConfig().to_dict().items() if k != "gumbel_temperature"}
    config = SearchConfig.from_dict({**old, "tau_gumbel": [3, 1]})
    assert config.gumbel_temperature == (3.0, 1.0)
    assert "tau_gumbel" not in config.to_dict()


def test_a_registered_relaxation_is_a_mode_of_relax_and_the_settings():
    assert MODES == ("full", "partial", "gumbel", "binary")
    mode_option = next(p for p in cli.commands["search"].params if p.name == "mode")
    assert tuple(mode_option.type.choices) == MODES
    with pytest.raises(ValueError, match=r"mode must be one of \('full', 'partial'"):
        get_relaxation("half")
    with pytest.raises(ValueError, match="already registered"):
        register_relaxation("full")(type("Other", (FullMixing,), {}))

    @register_relaxation("toy")
    class Toy(FullMixing):
        """Full mixing that calls itself random (so no second order) and costs a toy field."""

        second_order = False

        def cost_fields(self):
            return {"toy": 1}

    try:
        cell = Cell(channels=4)
        arch = relax(cell, mode="toy")
        assert type(arch.relaxation) is Toy and arch.relaxation.name == "toy"
        assert isinstance(cell.cell, MixedOp) and arch.relaxation.cost_fields() == {"toy": 1}
        with pytest.raises(ValueError, match=r"relaxation \(mode full or partial\)"):
            SearchConfig(mode="toy", order=2)
    finally:
        del RELAXATIONS["toy"]


def test_cli_search_mode_partial_writes_the_cost_card(small3d, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "search", "--data", str(small3d), "--out", str(out), "--epochs", "1",
        "--warmup-epochs", "0", "--steps-per-epoch", "2", "--device", "cpu", "--space-arg",
        "features=4", "--space-arg", "levels=2", "--mode", "partial", "--partial-k", "2"])
    assert result.exit_code == 0, result.output
    card = json.loads((out / "cost.json").read_text())
    assert card["mode"] == "partial" and card["partial_k"] == 2
    assert card["fully_mixed_choices"] == []
    assert read_json(out / "run.json")["search"]["mode"] == "partial"
    assert (out / "arch.json").exists()

    bad = CliRunner().invoke(cli, ["search", "--data", str(small3d), "--out",
                                   str(tmp_path / "bad"), "--mode", "binary", "--order", "2"])
    assert bad.exit_code == 1
    assert "second order needs a deterministic relaxation" in bad.output


# ----- exact faster conv gradients on CPU (flipped-kernel input gradient, dilated phases) -----
@pytest.mark.parametrize("dims", [3, 2])
def test_fast_conv_gradients_match_pytorch(dims):
    import copy

    from nasseg.runtime.fastconv import FLIP_BELOW, FastConv2d, FastConv3d, speed_up_convs

    fast_type = FastConv3d if dims == 3 else FastConv2d
    conv_type = nn.Conv3d if dims == 3 else nn.Conv2d
    cases = [(3, 1, 6), (5, 1, FLIP_BELOW), (3, 2, 6), (5, 2, FLIP_BELOW), (1, 1, 6),
             ((3, 5, 3)[:dims], (2, 1, 3)[:dims], 6)]
    for kernel, dilation, cout in cases:
        k = (kernel,) * dims if isinstance(kernel, int) else kernel
        d = (dilation,) * dims if isinstance(dilation, int) else dilation
        ref = conv_type(4, cout, k, padding=tuple(a * (b - 1) // 2 for a, b in zip(d, k)),
                        dilation=d, bias=True).double()
        fast = copy.deepcopy(ref)
        assert speed_up_convs(fast) == 1 and isinstance(fast, fast_type)
        size = (6, 4, 6)[:dims]
        x = torch.randn(2, 4, *size, dtype=torch.double)
        x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        g = torch.randn(2, cout, *size, dtype=torch.double)
        ref(x1).backward(g)
        fast(x2).backward(g)
        assert torch.allclose(x1.grad, x2.grad), (kernel, dilation, cout)
        assert torch.allclose(ref.weight.grad, fast.weight.grad), (kernel, dilation, cout)
        assert torch.allclose(ref.bias.grad, fast.bias.grad)
    # strided, grouped or not "same"-padded: left alone
    assert speed_up_convs(conv_type(4, 4, 3, padding=1, stride=2)) == 0
    assert speed_up_convs(conv_type(4, 4, 3, padding=1, groups=2)) == 0
    assert speed_up_convs(conv_type(4, 4, 3, padding=0)) == 0
    # differentiable twice (second-order uses of the supernet stay exact)
    conv = conv_type(2, 2, 3, padding=2, dilation=2).double()
    speed_up_convs(conv)
    x = torch.randn(1, 2, *(4, 4, 2)[:dims], dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, w: conv._conv_forward(x, w, conv.bias),
                                        (x, conv.weight))


# ----- centred gates --------------------------------------------------------------------------
def test_centred_gates_keep_only_ratios_and_a_lone_input_on():
    """Centred gates have no common level (a shift of a node's betas changes nothing), a node's
    only input is always on and outside J, and the other gates still learn and binarize."""
    space = create_space("uxnet", knobs=OPS, **TINY)
    arch = relax(space, gates="centred")
    lone = [lbl for lbl, n in arch.connection_sizes.items() if n == 1]
    several = [lbl for lbl, n in arch.connection_sizes.items() if n > 1]
    assert lone and several
    with torch.no_grad():
        for b in arch.beta.values():
            b.copy_(torch.linspace(-1, 1, b.numel()))
    before = {lbl: arch.gate_probs(lbl).clone() for lbl in several}
    with torch.no_grad():
        for b in arch.beta.values():
            b.add_(3.0)
    for lbl in several:
        torch.testing.assert_close(arch.gate_probs(lbl), before[lbl])
        assert arch.gate_probs(lbl).sum() > 0 and arch.gate_probs(lbl).std() > 0
    assert all(float(arch.gate_probs(lbl).detach()) == 1.0 for lbl in lone)
    arch.binarization_loss().backward()
    assert all(arch.beta[lbl].grad is None for lbl in lone)
    assert all(float(arch.beta[lbl].grad.abs().sum()) > 0 for lbl in several)
    with pytest.raises(ValueError, match="gates must be one of"):
        relax(create_space("uxnet", knobs=OPS, **TINY), gates="softmax")


@pytest.mark.parametrize("mode", ["full", "binary"])
def test_a_centred_gate_search_runs_and_derives(mode, small3d, tmp_path):
    engine = _engine(small3d, tmp_path, mode, gates="centred")
    engine.run()
    scores = engine.arch.scores()["connection"]
    assert all(p == [1.0] for lbl, p in ((k, v["probs"]) for k, v in scores.items())
               if len(p) == 1)
    arch = derive_architecture(engine.model, engine.arch.scores(), 0.6, [1, 16, 16, 16])
    assert arch["params"] < arch["supernet_params"]
