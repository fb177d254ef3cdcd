"""The ``task_decomp`` space (TDSNet): shapes, the context ensemble's receptive field, where the
sync gradient goes, the loss of each stage, per-patch presence, the paper's modules, metrics,
and search -> derive -> train through the CLI (spec section 6)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.nn import functional as F

from nasseg.cli import cli
from nasseg.data import PatchDataset, SegmentationData, make_demo
from nasseg.derive import count_parameters
from nasseg.evaluation.metrics import FlagAccumulator, image_mean_iou
from nasseg.export import load_trained
from nasseg.space import TrainingStage, create_space
from nasseg.spaces.task_decomp import (ASPP, DILATIONS, PAIRS, TaskMetrics, seg_presence,
                                       soft_iou, sync_loss)

ARGS = {"in_channels": 1, "num_classes": 3, "features": 4}


def _space(dims: int = 2, knobs: dict | None = None, **args):
    return create_space("task_decomp", knobs=knobs, spatial_dims=dims, **{**ARGS, **args})


def _paper(dims: int = 2, knobs: dict | None = None, **args):
    space = _space(dims, knobs, **args)
    return space.freeze(space.paper_sample())


def _batch(shape, seed: int = 0, scene: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 3, (2, *shape), generator=g)
    batch = {"image": torch.randn(2, 1, *shape, generator=g), "label": label,
             "presence": torch.tensor([[1.0, 0.0], [1.0, 1.0]])}
    if scene:
        batch["scene"] = torch.tensor([0, 1])
    return batch


@pytest.mark.parametrize("dims,shape", [(2, (19, 21)), (3, (11, 13, 9))])
def test_outputs_have_the_task_shapes_on_odd_sizes(dims, shape):
    space = _space(dims, num_scenes=3)
    for net in (space, space.freeze(space.paper_sample()),
                space.freeze(space.paper_sample("aspp")), space.freeze(space.default_sample())):
        out = net.forward_batch(_batch(shape))
        assert out["seg"].shape == (2, 3, *shape)
        assert out["cls"].shape == (2, 2) and out["scene"].shape == (2, 3)


@pytest.mark.parametrize("tap,width", list(enumerate([1, 3, 7, 15, 31, 63])))
def test_context_ensemble_taps_see_1_3_7_15_31_63(tap, width):
    """Gradient of the latent's centre w.r.t. the CE input, with positive weights (every ReLU
    active): its support is the tap's receptive field."""
    space = _space()
    net = space.freeze({**space.paper_sample(), "ce_latent": [tap]})
    assert len(net.cascade) == tap  # taps after the kept one are not built
    for p in net.cascade.parameters():
        torch.nn.init.constant_(p, 0.01)
    x = torch.zeros(1, net.lift[0].out_channels, 81, 81, requires_grad=True)
    net.context(x)[0, :, 40, 40].sum().backward()
    support = x.grad.abs().sum((0, 1)) > 0
    assert int(support[40].sum()) == int(support[:, 40].sum()) == width


def test_paper_sample_builds_exactly_the_code_modules():
    space = _space()
    net = space.freeze(space.paper_sample())
    assert [c[0].dilation for c in net.cascade] == [(r, r) for r in DILATIONS]
    assert net.ce_latent.kept == list(range(6))
    assert sorted(net.pairs) == sorted(PAIRS)
    assert all(s.kept == [] and len(s.align) == 0 for s in net.skips)
    assert not any(isinstance(m, ASPP) for m in net.modules())
    modules = sorted({n.rsplit(".", 1)[0] for n, _ in net.named_parameters()})
    assert modules == sorted(
        [f"encoder.{lvl}.{i}.{k}" for lvl in range(4) for i in range(2) for k in (0, 1)]
        + ["lift.0"] + [f"cascade.{k}.0" for k in range(5)] + [f"pairs.{p}.0" for p in PAIRS]
        + ["decoder.1.0", "decoder.2.0", "refine.0", "seg_head.conv"]
        + [f"{h}.fc.{i}" for h in ("cls_head", "scene_head") for i in (0, 2)])
    # the code's widths (512 -> 256 latent, 64 -> 32 -> 32 decoder) scaled to features 4
    assert net.lift[0].out_channels == 16 and net.decoder[1][0].out_channels == 8
    assert count_parameters(net) < count_parameters(space.freeze(space.default_sample()))
    aspp = space.freeze(space.paper_sample("aspp"))
    assert any(isinstance(m, ASPP) for m in aspp.modules())


def test_pruned_taps_and_pairs_are_not_built():
    space = _space()
    net = space.freeze({**space.paper_sample(), "ce_latent": [0, 2], "seg_in": [0],
                        "cls_in": [0], "scene_in": [0]})
    assert len(net.cascade) == 2 and list(net.pairs) == ["f_sc"]
    assert net.forward_batch(_batch((16, 16)))["seg"].shape == (2, 3, 16, 16)


def _grads(net, loss) -> dict[str, float]:
    """Gradient magnitude per top-level part of ``net`` (pairs split by name)."""
    params = dict(net.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    out: dict[str, float] = {}
    for name, g in zip(params, grads):
        part = ".".join(name.split(".")[:2]) if name.startswith("pairs.") else name.split(".")[0]
        out[part] = out.get(part, 0.0) + (0.0 if g is None else float(g.abs().sum()))
    return out


@pytest.mark.parametrize("sync,presence", [("to_class", "hard"), ("to_class", "soft_max"),
                                           ("to_seg", "soft_max"), ("both", "noisy_or")])
def test_sync_gradient_reaches_exactly_the_chosen_side(sync, presence):
    net = _paper(knobs={"sync": sync, "presence": presence})
    torch.manual_seed(0)
    out = net.forward_batch(_batch((32, 32)))
    g = _grads(net, sync_loss(out["seg"], out["cls"], presence, sync))
    seg_side = ("decoder", "refine", "seg_head", "pairs.f_ss")
    class_side = ("cls_head", "pairs.f_cs")
    shared = ("pairs.f_sc", "cascade", "lift", "encoder")
    assert g["scene_head"] == 0
    assert all(g[p] > 0 for p in shared)
    assert all((g[p] > 0) == (sync != "to_seg") for p in class_side), g
    assert all((g[p] > 0) == (sync != "to_class") for p in seg_side), g


def test_hard_presence_is_argmax_volume_and_soft_estimators_bound_it():
    logits = torch.randn(3, 4, 6, 7) * 3
    logits[0, 2] = -10  # class 2 never wins in image 0
    hard = seg_presence(logits, "hard")
    expected = torch.stack([(logits.argmax(1) == c).flatten(1).any(1) for c in range(1, 4)], 1)
    assert torch.equal(hard, expected.float()) and hard[0, 1] == 0
    soft, noisy = seg_presence(logits, "soft_max"), seg_presence(logits, "noisy_or")
    assert (soft <= noisy + 1e-6).all() and (noisy <= 1).all()
    with pytest.raises(ValueError, match="needs presence=soft_max"):
        _space(knobs={"sync": "both", "presence": "hard"})


def test_each_stage_adds_its_term_to_eq4():
    net = _paper(knobs={"w1": 0.3, "w2": 0.7, "w3": 0.5, "iou_weight": 1.0})
    batch = _batch((24, 24))
    out = net.forward_batch(batch)
    seg = F.cross_entropy(out["seg"], batch["label"]) + 1 - soft_iou(out["seg"], batch["label"])
    cla = F.binary_cross_entropy_with_logits(out["cls"], batch["presence"])
    sync = sync_loss(out["seg"], out["cls"], "hard", "to_class")
    scene = F.cross_entropy(out["scene"], batch["scene"])
    names = [s.name for s in net.training_stages()]
    assert names == ["class", "sync", "scene"]
    assert [s.lr_scale for s in net.training_stages()] == [1.0, 0.5, 0.2]
    expected = {"class": seg + 0.3 * cla, "sync": seg + 0.3 * cla + 0.5 * sync,
                "scene": seg + 0.3 * cla + 0.5 * sync + 0.7 * scene}
    for stage in net.training_stages():
        torch.testing.assert_close(net.compute_loss(out, batch, stage), expected[stage.name])
    torch.testing.assert_close(net.compute_loss(out, batch, TrainingStage("seg")), seg)
    torch.testing.assert_close(net.compute_loss(out, batch, TrainingStage("joint")),
                               expected["scene"])
    torch.testing.assert_close(net.arch_loss(out, batch, TrainingStage("scene")), seg)
    stage = _paper(knobs={"arch_loss": "stage", "w1": 0.3, "w2": 0.7, "w3": 0.5})
    assert stage.arch_loss(out, batch, TrainingStage("scene")) == stage.compute_loss(
        out, batch, TrainingStage("scene"))
    assert [s.name for s in _space(knobs={"schedule": "code4"}).training_stages()] == [
        "seg", "class", "sync", "scene"]


def test_zero_sync_and_scene_weights_are_base_plus_class():
    net = _paper(knobs={"w2": 0.0, "w3": 0.0})
    batch = _batch((24, 24))
    out = net.forward_batch(batch)
    assert set(net.loss_terms(out, batch, TrainingStage("scene"))) == {"seg", "class"}
    assert net.compute_loss(out, batch, TrainingStage("scene")) == net.compute_loss(
        out, batch, TrainingStage("class"))


def test_data_without_scenes_trains_the_scene_head_off_and_says_so_once(caplog):
    net = _paper()
    batch = _batch((24, 24), scene=False)
    out = net.forward_batch(batch)
    with caplog.at_level(logging.INFO, logger="nasseg"):
        for _ in range(2):
            loss = net.compute_loss(out, batch, TrainingStage("scene"))
    assert loss == net.compute_loss(out, batch, TrainingStage("sync"))
    assert [r.message for r in caplog.records].count(
        "task_decomp: the data has no scene labels; the scene loss (w2) is off") == 1
    with pytest.raises(ValueError, match="num_scenes=2"):
        net.compute_loss(out, {**batch, "scene": torch.tensor([0, 2])}, TrainingStage("scene"))


def test_presence_is_the_patch_own_even_when_the_case_has_more():
    label = np.zeros((1, 32, 32), dtype=np.int64)
    label[0, 12:20, 12:20] = 1
    label[0, :3, :3] = 2  # in the case, outside the centre patch
    data = SegmentationData("p", np.random.rand(1, 1, 32, 32).astype(np.float32), label,
                            ["bg", "a", "b"], np.array([[1.0, 1.0]], dtype=np.float32))
    item = PatchDataset(data, [0], patch_size=(16, 16))[0]
    assert item["presence"].tolist() == [1.0, 0.0]
    train = PatchDataset(data, [0], augment=True, patch_size=(16, 16))
    for epoch in range(6):
        train.set_epoch(epoch)
        item = train[0]
        expected = [float((item["label"] == c).any()) for c in (1, 2)]
        assert item["presence"].tolist() == expected


def test_demo3d_scene_says_mixed_or_single_class():
    data = make_demo("demo3d")
    assert data.scene_names == ["mixed", "single_class"]
    assert np.array_equal(data.scene, (data.presence.sum(1) < 2).astype(np.int64))
    assert set(np.bincount(data.scene)) == {10, 30}


def test_metrics_score_perfect_outputs_one_and_follow_conventions():
    batch = _batch((8, 8))
    label = batch["label"]
    perfect = {"seg": F.one_hot(label, 3).movedim(-1, 1).float(),
               "cls": batch["presence"] * 20 - 10, "scene": F.one_hot(batch["scene"], 2).float()}
    metric = TaskMetrics(3)
    metric.update(perfect, batch)
    assert metric.compute() == {"miou": 1.0, "cls_acc": 1.0, "cls_f1": 1.0, "scene_acc": 1.0}
    empty = np.zeros((4, 4), dtype=np.int64)
    half = empty.copy()
    half[:2] = 1
    assert image_mean_iou(empty, empty, 3) == 1.0  # absent from both counts 1 (ROBOT18)
    assert image_mean_iou(half, empty, 3) == 0.5
    flags = FlagAccumulator()
    flags.update(torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0]]))
    assert flags.accuracy() == 0.5 and flags.f1() == pytest.approx(2 / 3)


def test_search_derive_train_through_the_cli_reports_class_and_scene_metrics(tmp_path):
    def ok(*args):
        result = CliRunner().invoke(cli, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result

    ok("search", "--space", "task_decomp", "--data", "demo2d", "--out", tmp_path / "s",
       "--epochs", 3, "--warmup-epochs", 1, "--steps-per-epoch", 2, "--space-arg", "features=4",
       "--arch-lr", 0.05, "--set", "presence=soft_max", "--set", "sync=both", "--device", "cpu",
       "--seed", 0)
    arch = json.loads((tmp_path / "s" / "arch.json").read_text())
    assert arch["sample"]["sync"] == "both" and arch["sample"]["seg_dec"] in ("upconv", "aspp")
    ok("derive", tmp_path / "s", "--tau", 0.5, "--out", tmp_path / "s" / "arch-0.5.json")
    ok("train", tmp_path / "s" / "arch-0.5.json", "--out", tmp_path / "t", "--epochs", 3,
       "--steps-per-epoch", 2, "--device", "cpu")
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert [s["name"] for s in metrics["stages"]] == ["class", "sync", "scene"]
    assert [s["lr_scale"] for s in metrics["stages"]] == [1.0, 0.5, 0.2]
    for name in ("miou", "cls_acc", "cls_f1", "scene_acc"):
        assert 0.0 <= metrics["validation"][name] <= 1.0, name

    # the trained network exports to one file that returns the segmentation, as nasseg computes it
    ok("export", tmp_path / "t", "--format", "torchscript")
    model, info = load_trained(tmp_path / "t")
    x = torch.randn(1, *info["arch"]["input_shape"])
    with torch.no_grad():
        expected = model.segmentation(model.forward_batch({"image": x}))
        exported = torch.jit.load(str(tmp_path / "t" / "model.ts"))(x)
    assert exported.shape == (1, 3, *info["arch"]["input_shape"][1:])
    torch.testing.assert_close(exported, expected, rtol=1e-4, atol=1e-4)
