"""Connection selection by removal: inputs are kept for what the supernet loses without them."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from nasseg.artifacts.files import read_json
from nasseg.data import load_arrays
from nasseg.derive import derive_architecture
from nasseg.evaluation.validation import Validation
from nasseg.searches.darts import SearchConfig
from nasseg.searches.darts.relaxation import ArchParameters
from nasseg.searches.darts.run import resume_search, start_search
from nasseg.searches.darts.selection import (MIN_MEASURED_CASES, measured_cases,
                                             select_by_removal, select_ops_by_removal,
                                             unlearned_classes)
from nasseg.space import TrainingStage, schedule_in_passes, stage_schedule
from test_modes import TINY, _engine


def _arch() -> ArchParameters:
    arch = ArchParameters()
    arch.add_connection("a_in", 3)
    arch.add_connection("b_in", 2)
    arch.add_connection("lone_in", 1)
    with torch.no_grad():  # gates that say the opposite of what the inputs are worth
        arch.beta["a_in"].copy_(torch.tensor([-3.0, 3.0, 3.0]))
        arch.beta["b_in"].copy_(torch.tensor([3.0, -3.0]))
    return arch


def _supernet_dice(arch: ArchParameters) -> float:
    """a_in 0 is essential; a_in 1 and 2 carry the same thing (either will do); b_in 1 helps
    a little; b_in 0 does nothing."""
    off = {(label, i) for label, idx in arch.removed.items() for i in idx}
    dice = 0.9
    dice -= 0.5 * (("a_in", 0) in off)
    dice -= 0.3 * (("a_in", 1) in off and ("a_in", 2) in off)
    dice -= 0.04 * (("b_in", 1) in off)
    dice += 0.002 * (("b_in", 0) in off)
    return dice


def test_removal_keeps_what_the_supernet_uses_whatever_the_gates_say():
    arch = _arch()
    gates_before = {label: arch.gate_probs(label).tolist() for label in arch.connection_sizes}
    result = select_by_removal(arch, lambda: _supernet_dice(arch), tolerance=0.01)
    a, b = result.scores["a_in"], result.scores["b_in"]
    assert a[0] == pytest.approx(0.5 / 0.51)  # essential, though its gate was 0.05
    assert sorted(a[1:]) == [0.0, pytest.approx(0.3 / 0.31)]  # one of two redundant inputs
    assert b == [0.0, pytest.approx(0.04 / 0.05)]
    assert result.scores["lone_in"] == [1.0]
    assert result.full_dice == pytest.approx(0.9)
    assert result.final_dice == pytest.approx(0.902)  # b_in 0 and one of a_in 1/2 went
    # each of the 5 inputs alone, then the two greedy ones not measured alone already
    assert result.evaluations == 1 + 5 + 3
    # the inputs that went stay off; the scores replace the gates, which are kept beside them
    assert arch.removed["b_in"] == {0} and len(arch.removed["a_in"]) == 1
    assert float(arch.gate_probs("b_in").detach()[0]) == 0.0
    arch.selected = result.scores
    scores = arch.scores()["connection"]
    assert scores["a_in"]["probs"] == a and scores["a_in"]["gates"] == gates_before["a_in"]


@pytest.mark.parametrize("keep_at", [0.5, 0.6, 0.75])
def test_an_input_costing_the_tolerance_scores_keep_at_and_kept_ones_no_less(keep_at):
    """Deriving at ``keep_at`` (the space's default tau) keeps exactly what the selection
    kept: an input that costs the tolerance scores ``keep_at``, one that costs more, more."""
    arch = ArchParameters()
    arch.add_connection("x_in", 3)
    costs = {0: 0.01, 1: 0.04, 2: 0.0}  # at the tolerance, four times it, nothing

    def dice() -> float:
        return 0.9 - sum(costs[i] for i in arch.removed.get("x_in", ()))

    result = select_by_removal(arch, dice, tolerance=0.01, keep_at=keep_at)
    at_tolerance, essential, useless = result.scores["x_in"]
    assert at_tolerance == pytest.approx(keep_at)
    assert essential == pytest.approx(0.04 / (0.04 + 0.01 * (1 - keep_at) / keep_at))
    assert useless == 0.0 and arch.removed["x_in"] == {2}
    assert result.to_dict()["keep_at"] == keep_at
    with pytest.raises(ValueError, match="kept input"):
        select_by_removal(arch, dice, tolerance=0.01, keep_at=1.0)


def test_a_full_dice_measured_already_is_not_measured_again():
    calls = []

    def dice() -> float:
        calls.append(1)
        return _supernet_dice(arch)

    arch = _arch()
    given = select_by_removal(arch, dice, tolerance=0.01, full_dice=0.9)
    assert len(calls) == given.evaluations - 1 == 8  # the 5 inputs alone, 3 greedy
    measured = _arch()
    assert given.scores == select_by_removal(measured, lambda: _supernet_dice(measured),
                                             tolerance=0.01).scores


def test_a_class_below_the_floor_is_unlearned_and_an_absent_one_is_not_judged():
    assert unlearned_classes({"bright": 0.04, "textured": 0.52, "absent": math.nan}) == ["bright"]
    assert unlearned_classes({"bright": 0.1, "textured": 0.9}) == []


def test_a_node_keeps_its_last_input_and_tolerance_must_be_positive():
    arch = ArchParameters()
    arch.add_connection("x_in", 2)
    result = select_by_removal(arch, lambda: 0.5, tolerance=0.01)  # nothing matters
    assert sorted(result.scores["x_in"]) == [0.0, 0.0] and len(arch.removed["x_in"]) == 1
    assert sum("switched_off" in entry for entry in result.log) == 1
    with pytest.raises(ValueError, match="positive"):
        select_by_removal(arch, lambda: 0.5, tolerance=0.0)


def test_removed_inputs_are_switched_off_in_the_forward(small3d, tmp_path):
    engine = _engine(small3d, tmp_path, "full", epochs=1)
    label = next(lbl for lbl, n in engine.arch.connection_sizes.items() if n > 1)
    engine.arch.removed[label] = {0}
    assert engine.arch.gate_probs(label)[0] == 0 and engine.arch.gate_probs(label)[1] > 0


@pytest.mark.parametrize("select", ["removal", "gates"])
def test_search_selects_connections_and_derive_follows(select, small3d, tmp_path, caplog):
    engine = _engine(small3d, tmp_path, "full", epochs=2, select=select, extend_unlearned=0)
    with caplog.at_level(logging.WARNING, logger="nasseg"):
        engine.run()
    run = engine.run_folder
    params = read_json(run.arch_params)
    assert params["selection"] == select
    assert run.selection.exists() == (select == "removal")
    dataset = load_arrays(small3d)
    if select == "removal":
        record = read_json(run.selection)
        assert record["evaluations"] > sum(n > 1 for n in engine.arch.connection_sizes.values())
        # the full supernet's Dice per class, and a warning for each class it has not learned
        assert list(record["class_dice"]) == dataset.class_names[1:]
        missed = [n for n, d in record["class_dice"].items() if d is not None and d < 0.1]
        assert record["unlearned_classes"] == missed
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                  and "has not learned" in r.getMessage()]
        assert len(warned) == (1 if missed else 0)
        for message in warned:  # names each class and the command that continues the search
            assert all(name in message for name in missed)
            assert f"nasseg search --resume --out {run.path} --epochs 4" in message
        # a handful of cases: the architecture half is too small to measure on alone
        split = read_json(run.split)
        assert len(split["arch"]) < MIN_MEASURED_CASES
        assert record["measured_on"] == {"halves": "weights+arch",
                                         "cases": len(split["weights"]) + len(split["arch"])}
        for label, entry in params["connection"].items():
            assert entry["probs"] == record["scores"][label]
            assert len(entry["gates"]) == len(entry["probs"])
        assert read_json(run.cost)["seconds"]["selection"] > 0
    arch = derive_architecture(engine.model, params, 0.6,
                               [dataset.in_channels, *dataset.patch_size])
    for label, choice in arch["choices"].items():
        if choice["kind"] == "connection":
            assert all(choice["scores"][i] >= 0.6 for i in choice["kept"]
                       if len(choice["kept"]) > 1), label
    if select == "removal":  # at the space's default tau: the net the selection measured
        assert read_json(run.selection)["keep_at"] == engine.model.default_tau
        default = derive_architecture(engine.model, params, engine.model.default_tau,
                                      [dataset.in_channels, *dataset.patch_size])
        for label, choice in default["choices"].items():
            if choice["kind"] == "connection" and choice["kept"]:  # a live node
                measured = set(range(len(choice["sources"]))) - engine.arch.removed.get(label,
                                                                                      set())
                assert set(choice["kept"]) == measured, label


def test_a_supernet_that_has_not_learned_a_class_searches_on_once(small3d, tmp_path, caplog):
    """One epoch of two steps learns neither blob class: the search adds its extension (once),
    run.json records the new end so that a resume continues the extended run, and the
    selection measures the supernet after the extension."""
    config = SearchConfig(epochs=1, warmup_epochs=0, device="cpu", steps_per_epoch=2,
                          arch_lr=3e-2, extend_unlearned=2)
    with caplog.at_level(logging.WARNING, logger="nasseg"):
        result = start_search(tmp_path / "run", "uxnet", str(small3d), {}, TINY, config,
                              show_progress=False)
    run = result.folder
    description = read_json(run.config)
    record = description["extended_for_unlearned"]
    assert record["after_epochs"] == 1 and record["epochs"] == 3
    assert min(record["class_dice"].values()) < 0.1
    assert description["search"]["epochs"] == 3 and description["search"]["extend_unlearned"] == 0
    assert read_json(run.arch_params)["epochs_done"] == 3
    assert read_json(run.cost)["epochs_planned"] == 3
    assert len(torch.load(run.checkpoint, weights_only=False)["history"]) == 3
    extended = [r.getMessage() for r in caplog.records
                if "searching on to epoch 3" in r.getMessage()]
    assert len(extended) == 1 and all(n in extended[0] for n in record["class_dice"]
                                      if record["class_dice"][n] < 0.1)
    # the selection measured the extended supernet, not the one the extension was decided on
    assert read_json(run.selection)["class_dice"] != record["class_dice"]

    # killed during the extension, resumed from run.json: the extended run, to the digit
    class Killed(Exception):
        pass

    def kill(epoch: int, dice: float) -> None:
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        start_search(tmp_path / "broken", "uxnet", str(small3d), {}, TINY,
                     SearchConfig(**{**config.to_dict(), "epochs": 1, "extend_unlearned": 2}),
                     show_progress=False, on_epoch=kill)
    resumed = resume_search(tmp_path / "broken", show_progress=False)
    assert resumed.arch["sample"] == result.arch["sample"]
    assert read_json(resumed.folder.arch_params)["connection"] == read_json(
        run.arch_params)["connection"]


def test_a_learned_supernet_is_not_extended_and_its_measurement_is_reused(small3d, tmp_path,
                                                                         monkeypatch):
    engine = _engine(small3d, tmp_path, "full", epochs=1, extend_unlearned=5)
    measured = []

    def learned() -> Validation:
        measured.append(True)
        return Validation({"dice_mean": 0.8}, [0.7, 0.9])

    monkeypatch.setattr(engine, "_measured_dice", learned)
    engine.run()
    assert engine.config.epochs == 1 and len(engine.history) == 1
    record = read_json(engine.run_folder.selection)
    assert record["class_dice"] == dict(zip(load_arrays(small3d).class_names[1:], [0.7, 0.9]))
    # one measurement decided the extension and served as the selection's full supernet
    assert len(measured) == record["evaluations"]


def test_no_extension_when_switched_off_or_under_a_time_budget():
    assert SearchConfig(epochs=25).extension_epochs() == 25
    assert SearchConfig(epochs=25, extend_unlearned=10).extension_epochs() == 10
    assert SearchConfig(epochs=25, extend_unlearned=0).extension_epochs() == 0
    assert SearchConfig(time_budget=600.0).extension_epochs() == 0
    with pytest.raises(ValueError, match="extend_unlearned"):
        SearchConfig(extend_unlearned=-1)


def test_bad_selection_settings_are_refused():
    with pytest.raises(ValueError, match="select must be one of"):
        SearchConfig(select="magnitude")
    with pytest.raises(ValueError, match="select_tolerance"):
        SearchConfig(select_tolerance=-1)
    with pytest.raises(ValueError, match="select_ops must be one of"):
        SearchConfig(select_ops="magnitude")
    with pytest.raises(ValueError, match="mixes the candidates"):  # one op runs at a time
        SearchConfig(select_ops="removal", mode="gumbel")


def _op_arch() -> ArchParameters:
    arch = ArchParameters()
    arch.add_op("a", ["skip", "conv", "pool"])
    arch.add_op("b", ["conv", "dil"])
    arch.add_op("only", ["conv"])
    with torch.no_grad():  # alphas that prefer what the supernet needs least
        arch.alpha["a"].copy_(torch.tensor([2.0, 0.0, 1.0]))
        arch.alpha["b"].copy_(torch.tensor([0.5, 0.0]))
    return arch


def _op_supernet_dice(arch: ArchParameters) -> float:
    """a: the supernet needs conv most, then pool; skip does nothing. b: both alike."""
    off = {(label, i) for label, idx in arch.op_removed.items() for i in idx}
    return 0.9 - 0.3 * (("a", 1) in off) - 0.1 * (("a", 2) in off) + 0.01 * (("a", 0) in off)


def test_op_removal_chooses_what_the_supernet_needs_whatever_the_alphas_say():
    arch = _op_arch()
    result = select_ops_by_removal(arch, lambda: _op_supernet_dice(arch))
    assert result.chosen == {"a": "conv", "b": "conv"}  # b: a tie goes to the larger alpha
    assert result.alphas_chose == {"a": "skip"}
    assert result.drops["a"] == {"skip": pytest.approx(-0.01), "conv": pytest.approx(0.3),
                                 "pool": pytest.approx(0.1)}
    assert "only" not in result.drops  # a single candidate is no choice
    assert result.evaluations == 1 + 3 + 2
    assert arch.op_removed == {"a": set(), "b": set()}  # every candidate is back on
    # the scores replace the alphas' probabilities, which are kept beside them; derive
    # takes their argmax
    arch.op_selected = result.scores
    ops = arch.scores()["op"]
    assert ops["a"]["probs"] == [0.0, 1.0, 0.0] and ops["a"]["alphas"][0] > 0.6
    assert ops["only"] == {"candidates": ["conv"], "probs": [1.0]}


def test_removed_op_candidates_weigh_nothing_and_a_last_one_runs_alone():
    arch = _op_arch()
    probs = arch.op_probs("a").detach()
    with arch.switched_off([("a", 0)], ops=True):
        masked = arch.op_probs("a").detach()
        assert masked[0] == 0 and torch.allclose(masked[1:], probs[1:])
        with arch.switched_off([("a", 2)], ops=True):  # as the derived network runs it
            assert arch.op_probs("a").tolist() == [0.0, 1.0, 0.0]
    assert torch.equal(arch.op_probs("a").detach(), probs) and not arch.removed


def test_search_selects_ops_by_removal_and_derive_follows(small3d, tmp_path):
    engine = _engine(small3d, tmp_path, "full", epochs=1, select_ops="removal")
    engine.run()
    run = engine.run_folder
    params, record = read_json(run.arch_params), read_json(run.selection)
    assert params["op_selection"] == "removal" and "scores" in record  # connections first
    ops = record["ops"]
    assert set(ops["chosen"]) == {label for label, names in engine.arch.op_candidates.items()
                                  if len(names) > 1}
    assert ops["evaluations"] == 1 + sum(len(d) for d in ops["drops"].values())
    assert ops["full_dice"] == record["final_dice"]  # the pruned supernet, not measured again
    # switching a candidate off changes the supernet's forward, so its Dice
    assert any(drop != 0 for d in ops["drops"].values() for drop in d.values())
    for label, chosen in ops["chosen"].items():
        drops = ops["drops"][label]
        assert drops[chosen] == max(drops.values())
        names = params["op"][label]["candidates"]
        assert params["op"][label]["probs"] == [float(n == chosen) for n in names]
    dataset = load_arrays(small3d)
    arch = derive_architecture(engine.model, params, 0.6,
                               [dataset.in_channels, *dataset.patch_size])
    assert all(arch["sample"][label] == chosen for label, chosen in ops["chosen"].items())
    assert not any(engine.arch.op_removed.values())


def test_a_recipe_of_several_stages_is_extended_by_another_pass_and_resumes_along_it(
        small2d, tmp_path):
    """Inter-U-Net with AE pretraining has two stages (the AE alone, then the rest). An
    extension runs both again, each its share, rather than spreading the whole run's epochs
    anew; a search killed in the extension resumes along the same passes, to the digit."""
    knobs = {"supervision": "ae", "ae_schedule": "pretrain", "backbone": "unetpp"}
    space_args = {"features": 4, "levels": 3}
    config = SearchConfig(epochs=2, warmup_epochs=0, device="cpu", steps_per_epoch=2,
                          arch_lr=3e-2, extend_unlearned=6)
    result = start_search(tmp_path / "run", "inter_unet", str(small2d), knobs, space_args,
                          config, show_progress=False)
    run = result.folder
    record = read_json(run.config)["extended_for_unlearned"]
    assert record["after_epochs"] == 2 and record["epochs"] == 8
    # the plan's pass (one epoch each), then the extension's (a quarter of 6 is 2 epochs)
    passes = ["ae_pretrain", "joint"] + ["ae_pretrain"] * 2 + ["joint"] * 4
    history = torch.load(run.checkpoint, weights_only=False)["history"]
    assert [h["stage"] for h in history] == passes
    # the AE pretraining moves no architecture parameters; the joint stages do
    assert [h["arch_loss"] is None for h in history] == [s == "ae_pretrain" for s in passes]

    class Killed(Exception):
        pass

    def kill(epoch: int, dice: float) -> None:
        if epoch == 2:  # after the checkpoint of the extension's first epoch
            raise Killed

    with pytest.raises(Killed):
        start_search(tmp_path / "broken", "inter_unet", str(small2d), knobs, space_args,
                     config, show_progress=False, on_epoch=kill)
    resumed = resume_search(tmp_path / "broken", show_progress=False)
    resumed_history = torch.load(resumed.folder.checkpoint, weights_only=False)["history"]
    assert [h["stage"] for h in resumed_history] == passes
    assert read_json(resumed.folder.arch_params)["connection"] == read_json(
        run.arch_params)["connection"]


def test_epochs_added_to_a_recipe_are_another_pass_through_its_stages():
    stages = [TrainingStage("a", 1.0), TrainingStage("b", 3.0)]
    names = [s.name for s in schedule_in_passes(stages, [8, 4])]
    assert names == ["a"] * 2 + ["b"] * 6 + ["a"] + ["b"] * 3
    assert schedule_in_passes(stages, [8]) == stage_schedule(stages, 8)
    with pytest.raises(ValueError, match="cannot hold"):
        schedule_in_passes(stages, [8, 1])


def test_a_small_architecture_half_is_measured_together_with_the_weight_half():
    few = {"weights": [0, 1, 2], "arch": [3, 4, 5], "val": [6]}
    assert measured_cases(few) == ([0, 1, 2, 3, 4, 5], "weights+arch")
    enough = {"weights": list(range(10)), "arch": list(range(10, 10 + MIN_MEASURED_CASES)),
              "val": [30]}
    assert measured_cases(enough) == (enough["arch"], "arch")
