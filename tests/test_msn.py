"""The ``msn`` space (Meta Segmentation Network): weight sharing by identity, frozen parts bit for
bit per stage, crop geometry against ``multires_crops``, Meta-FM sizes and closed-form
gradients, pruned gates build no Mem-RM, the test label never reaches eval, the paper's gap
statistics, 3D refused, and search -> derive -> train -> predict -> export (spec section 6)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from nasseg.spaces.msn import (
    MetaFusion,
    MSNMetrics,
    PlainFusion,
    crop_up,
    gap_statistics,
    output_layer_sigma,
    stats_sample,
)
from test_real_data import make_png
from torch.nn import functional as F

from nasseg.cli import cli
from nasseg.data.multires import ArrayImage, multires_crops
from nasseg.data.views import context_crop
from nasseg.derive import count_parameters
from nasseg.evaluation.metrics import DiceAccumulator
from nasseg.export import inference_network, load_trained
from nasseg.runtime.staging import StagedWeights
from nasseg.space import create_space

ARGS = {"in_channels": 1, "num_classes": 3, "features": 4, "levels": 2, "downsamples": [1, 2, 4]}


def _space(knobs: dict | None = None, **args):
    return create_space("msn", knobs=knobs, **{**ARGS, **args})


def _batch(size: int = 16, n: int = 2, classes: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 1, size, size, generator=g),
            "context": torch.randn(n, 2, 1, size, size, generator=g),
            "label": torch.randint(0, classes, (n, size, size), generator=g),
            "context_label": torch.randint(0, classes, (n, 2, size, size), generator=g)}


def _backbone_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith("backbone"))


def test_one_backbone_serves_all_branches_unless_sharing_is_off():
    shared, separate = _space(), _space({"share_weights": False})
    assert shared.branch_net("x1") is shared.branch_net("x2") is shared.branch_net("x3")
    assert not any(n.startswith("backbones.") for n, _ in shared.named_parameters())
    assert _backbone_params(separate) == 3 * _backbone_params(shared)
    ids = [{id(p) for p in separate.branch_net(b).parameters()} for b in ("x1", "x2", "x3")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


def _step(model, stage_name: str) -> tuple[dict, dict]:
    stages = model.training_stages()
    for p in model.parameters():
        p.requires_grad_(True)
    staged = StagedWeights(model, stages, lr=0.05, weight_decay=1e-4)
    stage = next(s for s in stages if s.name == stage_name)
    staged.enter(stage, 0.05)
    staged.train_mode()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = _batch()
    loss = model.compute_loss(model.forward_batch(batch), batch, stage)
    staged.optimizer.zero_grad()
    loss.backward()
    staged.optimizer.step()
    return before, {n: p.detach() for n, p in model.named_parameters()}


@pytest.mark.parametrize("stage,moving", [("memrm", "memrm"), ("fusion", "fusion")])
def test_a_stage_trains_its_part_and_keeps_everything_else_bit_for_bit(stage, moving):
    torch.manual_seed(0)
    model = _space()
    eval_batch = _batch(seed=1)
    model.eval()
    with torch.no_grad():
        s3 = model.forward_batch(eval_batch)["s3"]
    before, after = _step(model, stage)
    for name, value in after.items():
        if name.startswith(moving):
            continue
        assert torch.equal(before[name], value), name
    assert any(not torch.equal(before[n], v) for n, v in after.items() if n.startswith(moving))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.forward_batch(eval_batch)["s3"], s3)


def test_stages_are_the_paper_steps_on_the_two_splits():
    stages = _space().training_stages()
    assert [(s.name, s.fraction, s.search) for s in stages] == [
        ("meta", 3.0, False), ("memrm", 1.0, True), ("fusion", 1.0, False)]
    assert stages[0].cases == (0.0, 0.75) and stages[1].cases == stages[2].cases == (0.75, 1.0)
    assert stages[1].trainable == ("memrm",) and stages[1].eval_modules == ("backbone",)
    everything = _space({"steps23_data": "all"}).training_stages()
    assert all(s.cases == (0.0, 1.0) for s in everything)
    separate = _space({"share_weights": False}).training_stages()
    assert separate[0].trainable == ("backbones.x3",)
    assert separate[1].trainable == ("memrm", "backbones.x1", "backbones.x2")


def test_crops_of_the_view_are_multires_crops_and_crop_up_aligns_x3_on_x1():
    s, yy, xx = 32, *np.mgrid[0:700, 0:640].astype(np.float32)
    smooth = (np.sin(yy / 90.0) + np.cos(xx / 70.0)).astype(np.float32)
    label = (smooth > 0).astype(np.uint8)
    centre = (320, 352)  # (x, y)
    crops, labels = multires_crops(ArrayImage(smooth[..., None]), centre, s, (1, 4, 16),
                                   label=ArrayImage(label[..., None], label=True))
    x1, x3 = crops[0][..., 0], crops[2][..., 0]
    pooled = x1.reshape(2, 16, 2, 16).mean(axis=(1, 3))
    np.testing.assert_allclose(pooled, x3[15:17, 15:17], rtol=0, atol=1e-5)
    start = (centre[1] - s // 2, centre[0] - s // 2)
    for f, crop, lab in zip((1, 4, 16), crops, labels):  # the data view cuts the same boxes
        np.testing.assert_allclose(context_crop(smooth[None], start, (s, s), f)[0], crop[..., 0],
                                   atol=1e-5)
        assert np.array_equal(context_crop(label, start, (s, s), f, label=True), lab)
    up = crop_up(torch.from_numpy(x3)[None, None], 1 / 16, (s, s))[0, 0].numpy()
    assert np.abs(up - x1).max() < 0.02 < np.abs(x3 - x1).max()


def test_meta_fm_sizes_follow_table_5():
    for nc, weights, plain in ((4, 432, 440), (2, 108, 112)):
        meta = MetaFusion(nc, head_channels=5, hidden=8, sigma_norm="none", meta_eval="stored")
        assert meta.learner[-1].out_features == weights == 27 * nc ** 2
        assert meta.learner[0].in_features == 2 * nc * 5  # 2 |W_o|
        w1, w2 = meta.split(torch.zeros(3, weights))
        assert w1.shape == (3, nc, 2 * nc, 3, 3) and w2.shape == (3, nc, nc, 3, 3)
        assert sum(p.numel() for p in PlainFusion(nc).parameters()) == plain
    model = _space()
    assert model.fusion.learner[0].in_features == 2 * 3 * 4


def test_closed_form_sigma_equals_autograd_for_both_branches():
    g = torch.Generator().manual_seed(0)
    h1, h2 = (torch.randn(1, 5, 12, 12, generator=g, dtype=torch.float64) for _ in range(2))
    target = torch.randint(0, 3, (1, 12, 12), generator=g)
    weight = torch.randn(3, 5, 1, 1, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=g, dtype=torch.float64)
    s1 = F.conv2d(h1, weight, bias)
    (grad1,) = torch.autograd.grad(F.cross_entropy(s1, target), weight)
    np.testing.assert_allclose(output_layer_sigma(s1.detach(), h1, target).double()[0],
                               -grad1.flatten(), atol=1e-6)
    s2p = crop_up(F.conv2d(h2, weight, bias), 0.5)  # S2' = up(crop(S2))
    (grad2,) = torch.autograd.grad(F.cross_entropy(s2p, target), weight)
    sigma2 = output_layer_sigma(s2p.detach(), crop_up(h2, 0.5), target).double()[0]
    np.testing.assert_allclose(sigma2, -grad2.flatten(), atol=1e-6)


def test_sigma_needs_no_weight_gradients_nor_grad_mode():
    model = _space()
    model.train()
    batch = _batch()
    for p in model.parameters():
        p.requires_grad_(False)  # the architecture step's state
    with torch.enable_grad():
        reference = model.forward_batch(batch)["seg"]
    with torch.no_grad():
        assert torch.equal(model.forward_batch(batch)["seg"], reference)
    model.fusion.learner[0].weight.requires_grad_(True)
    assert model.forward_batch(batch)["seg"].requires_grad


@pytest.mark.parametrize("meta_eval", ["stored", "pseudo_label"])
def test_eval_output_never_reads_the_label_and_uses_the_context(meta_eval):
    model = _space({"meta_eval": meta_eval})
    model.train()
    _step(model, "fusion")  # a fusion step sets W*
    assert int(model.fusion.stored_steps) == 1
    model.eval()
    batch = _batch()
    with torch.no_grad():
        with_label = model.forward_batch(batch)["seg"]
        without = model.forward_batch({k: v for k, v in batch.items() if "label" not in k})["seg"]
        other_label = model.forward_batch({**batch, "label": 2 - batch["label"]})["seg"]
        other_context = model.forward_batch({**batch, "context": batch["context"] + 1})["seg"]
    assert torch.equal(with_label, without) and torch.equal(with_label, other_label)
    assert not torch.allclose(with_label, other_context)
    assert model.training_only() == (("fusion.learner",) if meta_eval == "stored" else ())


def test_stored_weights_follow_the_fusion_steps_and_eval_fuses_with_them():
    model = _space()
    model.train()
    batch = _batch()
    with torch.no_grad():  # outside a trained fusion stage nothing is stored
        model.forward_batch(batch)
    assert int(model.fusion.stored_steps) == 0
    _step(model, "fusion")
    first = model.fusion.stored.clone()
    _step(model, "fusion")
    assert int(model.fusion.stored_steps) == 2 and not torch.equal(first, model.fusion.stored)
    model.eval()
    out = model.forward_batch(batch)
    w1, w2 = model.fusion.split(model.fusion.stored)
    s2p = crop_up(out["s2"], 0.5)
    expected = F.conv2d(F.relu(F.conv2d(torch.cat([out["s1"], s2p], 1), w1, padding=1)), w2,
                        padding=1)
    torch.testing.assert_close(out["seg"], expected)


def test_pruned_gates_build_no_memrm_and_kept_gates_are_eq1():
    space = _space()
    plain = space.freeze(space.gap_sample([]))
    assert len(plain.memrm) == 0 and count_parameters(plain) < count_parameters(space)
    assert [(s.name, s.fraction) for s in plain.training_stages()] == [("meta", 3.0),
                                                                        ("fusion", 2.0)]
    plain.eval()
    batch = _batch()
    with torch.no_grad():
        out = plain.forward_batch(batch)
        assert torch.equal(out["s1"], plain.backbone(batch["image"])[0])  # Table 3 Meta-branch
    some = space.freeze(space.gap_sample({"x1": [2], "x2": [1, 3]}))
    assert sorted(some.memrm) == ["x1_l2", "x2_l1", "x2_l3"]
    assert some.gaps["x1_l2"].kept == [1] and some.gaps["x1_l1"].kept == [0]
    some.eval()
    with torch.no_grad():
        memory = some.backbone(batch["context"][:, 1])[2]
        # eq. (1) exactly: at the gap layer the Mem-RM output replaces B
        seen = []
        some.backbone(batch["image"], lambda layer, b: seen.append(layer) or (
            some.memrm["x1_l2"](b, memory[1]) if layer == 2 else b))
        s1 = some.backbone(batch["image"], lambda layer, b: (
            some.memrm["x1_l2"](b, memory[1]) if layer == 2 else b))[0]
        assert seen == [1, 2, 3] and torch.equal(some.forward_batch(batch)["s1"], s1)


def test_shared_gates_are_one_label_for_both_branches():
    space = _space({"share_gap_gates": True})
    gates = [label for label, info in space.choice_infos.items() if info.kind == "connection"]
    assert gates == ["gap_l1", "gap_l2", "gap_l3"]
    derived = space.freeze(space.gap_sample([3]))
    assert sorted(derived.memrm) == ["x1_l3", "x2_l3"]


def test_gap_statistics_rank_layers_and_pick_the_top_k():
    space = _space()
    stats = gap_statistics(space, [_batch(seed=s) for s in range(2)])
    assert [r["layer"] for r in stats["x1"]] == [1, 2, 3]
    assert all(r["mean_gap"] >= 0 and r["var_gap"] >= 0 for r in stats["x2"])
    made = {"x1": [{"layer": 1, "mean_gap": 0.1, "var_gap": 0.1},
                   {"layer": 2, "mean_gap": 1.0, "var_gap": 0.5},
                   {"layer": 3, "mean_gap": 0.2, "var_gap": 1.0}],
            "x2": [{"layer": 1, "mean_gap": 1.0, "var_gap": 1.0},
                   {"layer": 2, "mean_gap": 0.0, "var_gap": 0.0},
                   {"layer": 3, "mean_gap": 0.0, "var_gap": 0.1}]}
    sample = stats_sample(space, made, 2)
    assert [sample[f"gap_x1_l{lvl}"] for lvl in (1, 2, 3)] == [[0], [1], [1]]
    assert [sample[f"gap_x2_l{lvl}"] for lvl in (1, 2, 3)] == [[1], [0], [1]]


def test_metrics_score_each_branch_against_its_own_field():
    acc = DiceAccumulator(3)
    acc.update(torch.tensor([[0, 1, 1, 2]]), torch.tensor([[0, 1, 2, 2]]))
    assert acc.iou_per_class() == [1.0, 0.5, 0.5] and acc.mean_iou() == pytest.approx(2 / 3)
    assert acc.mean_iou(background=False) == pytest.approx(0.5)
    batch = _batch()
    onehot = lambda y: F.one_hot(y, 3).movedim(-1, 1).float()
    metric = MSNMetrics(3)
    metric.update({"s1": onehot(batch["label"]), "seg": onehot(batch["label"]),
                   "s2": onehot(batch["context_label"][:, 0]),
                   "s3": onehot(batch["label"])}, batch)  # S3 scored against Y3, not Y1
    values = metric.compute()
    assert values["miou_x1"] == values["miou_x2"] == values["miou_fusion"] == 1.0
    assert values["miou_x3"] < 0.5


def test_3d_is_refused_with_one_clear_line(tmp_path):
    with pytest.raises(ValueError, match="2D images only") as err:
        create_space("msn", spatial_dims=3)
    assert "\n" not in str(err.value)
    result = CliRunner().invoke(cli, ["search", "--space", "msn", "--data", "demo3d", "--out",
                                      str(tmp_path / "s"), "--device", "cpu"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if "2D images only" in line] == [
        result.output.strip().splitlines()[-1]]
    with pytest.raises(ValueError, match="downsamples"):
        _space(downsamples=[1, 3, 4])


def _ok(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_search_derive_train_predict_export_end_to_end(tmp_path):
    data = make_png(tmp_path)
    common = ("--device", "cpu", "--patch-size", "16x16", "--steps-per-epoch", 2,
              "--batch-size", 2)
    _ok("search", "--space", "msn", "--data", data, "--out", tmp_path / "s", "--epochs", 5,
        "--warmup-epochs", 0, "--space-arg", "features=4", "--space-arg", "levels=2",
        "--space-arg", "downsamples=[1,2,4]", "--arch-lr", 0.1, *common)
    state = torch.load(tmp_path / "s" / "checkpoint.pt", weights_only=False)
    # 5 epochs of 2 steps rarely learn both classes: the search then runs its recipe again
    extended = "extended_for_unlearned" in json.loads((tmp_path / "s" / "run.json").read_text())
    recipe = ["meta"] * 3 + ["memrm", "fusion"]
    assert [h["stage"] for h in state["history"]] == recipe * (2 if extended else 1)
    gates = json.loads((tmp_path / "s" / "arch_params.json").read_text())["connection"]
    assert len(gates) == 6 and any(abs(e["probs"][1] - 0.5) > 1e-3 for e in gates.values())
    _ok("derive", tmp_path / "s", "--tau", 0.5, "--out", tmp_path / "s" / "arch-0.5.json")
    arch = json.loads((tmp_path / "s" / "arch-0.5.json").read_text())
    kept = sum(1 in arch["sample"][f"gap_{b}_l{lvl}"] for b in ("x1", "x2") for lvl in (1, 2, 3))
    _ok("train", tmp_path / "s" / "arch-0.5.json", "--out", tmp_path / "t", "--epochs", 5,
        *common)
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["selection_metric"] == "miou_fusion" and metrics["best_epoch"] == 5
    assert metrics["params"] == arch["params"]  # counted whole after the frozen stages
    assert all(0 <= metrics["validation"][f"miou_{k}"] <= 1 for k in ("x1", "x2", "x3", "fusion"))
    assert json.loads((tmp_path / "t" / "plan.json").read_text())["view"] == {
        "context": [2, 4], "context_labels": True}
    model, _ = load_trained(tmp_path / "t")
    assert len(model.memrm) == kept and int(model.fusion.stored_steps) > 0
    _ok("predict", tmp_path / "t", "--input", data / "imagesTr", "--output", tmp_path / "p")
    from PIL import Image
    pred = np.asarray(Image.open(tmp_path / "p" / "img_00.png"))
    assert pred.shape == (30, 34) and pred.max() < 3
    # export: the learner is training-only; the file fuses with W* and runs without nasseg
    out = tmp_path / "m.ts"
    _ok("export", tmp_path / "t", "--format", "torchscript", "--out", out)
    assert not any(n.startswith("fusion.learner") for n, _ in
                   inference_network(model).named_parameters())
    rng = np.random.default_rng(0)
    image = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    context = rng.standard_normal((3, 2, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "context.npy", context)
    with torch.no_grad():
        expected = model.forward_batch({"image": torch.from_numpy(image),
                                        "context": torch.from_numpy(context)})["seg"].numpy()
    script = tmp_path / "load.py"
    script.write_text(textwrap.dedent("""
        import sys
        import numpy as np
        sys.modules["nasseg"] = None  # any import of nasseg now fails
        import torch
        net = torch.jit.load(sys.argv[1])
        assert not any("learner" in n for n, _ in net.named_parameters())
        image, context = np.load(sys.argv[2]), np.load(sys.argv[3])
        with torch.no_grad():
            np.save(sys.argv[4], net(torch.from_numpy(image), torch.from_numpy(context)).numpy())
        """))
    subprocess.run([sys.executable, str(script), str(out), str(tmp_path / "image.npy"),
                    str(tmp_path / "context.npy"), str(tmp_path / "out.npy")],
                   check=True, cwd=tmp_path)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-4, atol=1e-4)
    _ok("export", tmp_path / "t", "--format", "onnx", "--out", tmp_path / "m.onnx")
    import onnxruntime as ort
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "context"]
    out = session.run(None, {"image": image, "context": context})[0]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
