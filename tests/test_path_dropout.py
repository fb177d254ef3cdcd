"""Path dropout: weight steps train the supernet with random connection inputs switched off."""
from __future__ import annotations

import pytest
import torch

from nasseg.searches.darts import SearchConfig
from nasseg.searches.darts.path_dropout import dropout_rate, dropped_inputs
from nasseg.searches.darts.relaxation import ArchParameters, GatedSum
from test_modes import _engine


def _arch() -> ArchParameters:
    arch = ArchParameters()
    arch.add_connection("three_in", 3)
    arch.add_connection("two_in", 2)
    arch.add_connection("lone_in", 1)
    return arch


def test_rate_rises_linearly_from_zero_to_the_last_epoch():
    assert [dropout_rate(0.4, e, 5) for e in range(5)] == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])
    assert dropout_rate(0.4, 0, 1) == 0.4


def test_every_connection_keeps_an_input_and_only_inputs_that_are_on_drop():
    arch = _arch()
    arch.removed["three_in"] = {2}  # a selection switched it off: not drawn again
    for k in range(50):
        edges = dropped_inputs(arch, 0.99, f"0/1/{k}/0")
        per_label = {label: [i for lbl, i in edges if lbl == label]
                     for label in ("three_in", "two_in")}
        assert len(per_label["three_in"]) == 1 and per_label["three_in"][0] in (0, 1)
        assert len(per_label["two_in"]) == 1
        assert all(label != "lone_in" for label, _ in edges)
    assert dropped_inputs(arch, 0.0, "0/1/0/0") == []


def test_draws_follow_the_rate_and_repeat_for_the_same_key():
    arch = _arch()
    assert dropped_inputs(arch, 0.3, "7/3/5/0") == dropped_inputs(arch, 0.3, "7/3/5/0")
    draws = [dropped_inputs(arch, 0.3, f"0/0/{k}/0") for k in range(2000)]
    assert len({tuple(d) for d in draws}) > 5
    share = sum(len(d) for d in draws) / (5 * len(draws))  # five inputs can drop
    assert 0.22 < share < 0.32  # 0.3, less the draws given back to keep an input


def test_switched_off_restores_exactly_what_was_off():
    arch = _arch()
    arch.removed["two_in"] = {1}
    with arch.switched_off([("two_in", 1), ("two_in", 0), ("three_in", 2)]):
        assert float(arch.gate_probs("two_in").detach().sum()) == 0.0
        assert float(arch.gate_probs("three_in").detach()[2]) == 0.0
    assert arch.removed["two_in"] == {1} and not arch.removed["three_in"]


def test_config_checks_the_rate_and_the_mode():
    with pytest.raises(ValueError, match="path_dropout"):
        SearchConfig(path_dropout=1.0)
    with pytest.raises(ValueError, match="already samples"):
        SearchConfig(path_dropout=0.2, mode="gumbel")
    assert SearchConfig(path_dropout=0.2, mode="partial").path_dropout == 0.2


def test_only_weight_steps_see_inputs_dropped(small3d, tmp_path):
    engine = _engine(small3d, tmp_path, "full", epochs=2, path_dropout=0.9, select="gates")
    arch, seen = engine.arch, {"weight": 0, "arch": 0, "validation": 0}
    gated = [m for m in engine.model.modules() if isinstance(m, GatedSum)]
    multi = [m for m in gated if arch.connection_sizes[m.label] > 1]

    def record(module, args):
        phase = ("validation" if not torch.is_grad_enabled()
                 else "weight" if not engine.arch_params[0].requires_grad else "arch")
        seen[phase] += int((arch.gate_probs(module.label) == 0).sum())

    for module in multi:
        module.register_forward_pre_hook(record)
    engine.run()
    assert seen["weight"] > 0  # the last epoch drops at 0.9
    assert seen["arch"] == 0 and seen["validation"] == 0
    assert not any(arch.removed.values())  # every draw was given back
