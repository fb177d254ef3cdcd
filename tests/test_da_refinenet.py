"""DA-RefineNet (spaces/da_refinenet.py): the paper's facts and the public code's bugs absent."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nasseg.data.views import DataView
from nasseg.derive import count_parameters
from nasseg.evaluation.metrics import ConfusionAccumulator, ordinal_score
from nasseg.space import create_space
from nasseg.spaces.da_refinenet import (CRP, AddFusion, AttentionFusion, ConcatFusion,
                                        DARefineNetSpace, fusion_candidates)

ARGS = {"in_channels": 1, "num_classes": 4, "features": 4, "max_blocks": 1}
C = 8


def _net(fusion: str = "attention", **knobs: object) -> DARefineNetSpace:
    space = create_space("da_refinenet", knobs=knobs, **ARGS)
    return space.freeze(space.paper_sample(fusion))


def _batch(net: DARefineNetSpace, shape: tuple[int, int] = (32, 32), n: int = 2
           ) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: torch.randn(n, *v.shape[1:]) for k, v in net.example_batch(shape, 1).items()}


def _ids(module: torch.nn.Module | None) -> set[int]:
    return set() if module is None else {id(p) for p in module.parameters()}


@pytest.mark.parametrize("fusion", ["concat", "add", "attention"])
@pytest.mark.parametrize("block", ["refine", "lw"])
def test_no_parameter_shared_between_the_encoders_and_their_paths(fusion: str, block: str
                                                                  ) -> None:
    net = _net(fusion, block=block)
    a, b = _ids(net.enc_a), _ids(net.enc_b)
    assert a and b and not a & b
    paths_a = set().union(*(_ids(blk.path_a) for blk in net.decoder))
    paths_b = set().union(*(_ids(blk.path_b) for blk in net.decoder))
    assert paths_b and not paths_a & paths_b and not (a | b) & (paths_a | paths_b)
    every = [id(p) for p in net.parameters()]
    assert len(every) == len(set(every))


@pytest.mark.parametrize("main,inputs", [(True, 3), (False, 2)])
def test_fusion_candidates_shapes_and_parameter_counts(main: bool, inputs: int) -> None:
    xs = [torch.randn(2, C, 5, 7) for _ in range(inputs)]
    built = {name: make() for name, make in fusion_candidates(C, inputs, main, "paper").items()}
    for module in built.values():
        assert module(*xs).shape == (2, C, 5, 7)
    params = {name: count_parameters(m) for name, m in built.items()}
    assert params == {"concat": inputs * C * C, "add": 0, "attention": inputs * C * C}
    assert isinstance(built["add"], AddFusion) and isinstance(built["concat"], ConcatFusion)
    torch.testing.assert_close(built["add"](*xs), sum(xs))


def test_attention_weights_in_unit_range_and_identity_when_xa_is_zero() -> None:
    att = AttentionFusion(C, 3, main=True)
    xa, xb, x = (torch.randn(2, C, 6, 6) for _ in range(3))
    w = att.weights(xa, xb, x)
    assert w.shape == (2, C, 1, 1) and bool(((w > 0) & (w < 1)).all())
    assert torch.equal(att(torch.zeros_like(xa), xb, x), x)  # X added once, not twice
    torch.testing.assert_close(att(xa, xb, x), xa * w + x)
    se = AttentionFusion(C, 3, main=True, form="se")
    assert torch.equal(se(torch.zeros_like(xa), xb, x), x)
    deepest = AttentionFusion(C, 2, main=False)
    torch.testing.assert_close(deepest(xa, xb), xa * deepest.weights(xa, xb))


def test_output_depends_on_context_exactly_when_dual() -> None:
    dual = _net("attention").eval()
    assert dual.data_view() == DataView(context=(5,))
    batch = _batch(dual)
    batch["context"].requires_grad_(True)
    dual.forward_batch(batch).sum().backward()
    assert batch["context"].grad.abs().sum() > 0
    single = _net("attention", dual=False).eval()
    assert single.enc_b is None and all(blk.path_b is None for blk in single.decoder)
    assert single.data_view().context == () and "context" not in single.example_batch((32, 32), 1)
    plain = {"image": batch["image"]}
    out = single.forward_batch(plain)
    torch.testing.assert_close(single.forward_batch({**plain, "context": -batch["context"]}), out)


def test_lw_has_no_crp_and_fewer_parameters() -> None:
    refine, lw = _net("add"), _net("add", block="lw")
    assert not any(isinstance(m, CRP) for m in lw.modules())
    assert sum(isinstance(m, CRP) for m in refine.modules()) == 4
    assert count_parameters(lw) < count_parameters(refine)


def test_odd_sizes_keep_the_input_size_and_eval_ignores_the_label() -> None:
    net = _net("concat").eval()
    batch = _batch(net, (37, 29))
    out = net.forward_batch(batch)
    assert out.shape == (2, 4, 37, 29)
    labelled = net.forward_batch({**batch, "label": torch.randint(0, 4, (2, 37, 29))})
    assert torch.equal(out, labelled)


def test_derived_net_builds_only_the_chosen_fusion_and_shared_scope_uses_one_label() -> None:
    space = create_space("da_refinenet", **ARGS)
    assert space.fusion_labels() == ["fuse_l1", "fuse_l2", "fuse_l3", "fuse_l4"]
    assert space.choice_infos["fuse_l1"].inputs == 2 and space.choice_infos["fuse_l2"].inputs == 3
    mixed = space.freeze({**space.paper_sample("add"), "fuse_l2": "attention"})
    kinds = [type(blk.fuse).__name__ for blk in mixed.decoder]
    assert kinds == ["AddFusion", "AttentionFusion", "AddFusion", "AddFusion"]
    shared = create_space("da_refinenet", knobs={"fusion_scope": "shared"}, **ARGS)
    assert shared.fusion_labels() == ["fuse"]
    net = shared.freeze(shared.paper_sample("concat"))
    assert all(isinstance(blk.fuse, ConcatFusion) for blk in net.decoder)
    single = create_space("da_refinenet", knobs={"dual": False}, **ARGS)
    assert single.fusion_labels() == ["fuse_l2", "fuse_l3", "fuse_l4"]  # deepest: one input


def test_same_fov_context_is_the_patch_at_lower_resolution() -> None:
    net = _net("add", context="same_fov", context_factor=2).eval()
    assert net.data_view().context == ()
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    b = net.context_input({"image": image})
    assert b.shape == image.shape
    torch.testing.assert_close(b.mean(), image.mean())


def test_recipe_three_falling_steps_and_encoder_multiplier_by_module() -> None:
    net = _net("concat", enc_lr=0.1)
    stages = net.training_stages()
    assert [s.lr_scale for s in stages] == [1.0, 0.5, 0.2]
    for name, _ in net.named_parameters():
        expected = 0.1 if name.startswith(("enc_a.", "enc_b.")) else 1.0
        assert stages[0].lr_factor(name) == pytest.approx(expected), name
    # decoder convs named like encoder parts (the code's regex caught them) keep the full rate
    assert any(".conv1." in n for n, _ in net.named_parameters() if n.startswith("decoder"))


def test_score_worked_examples_range_and_metrics() -> None:
    assert ordinal_score(np.array([0, 3, 2, 0]), np.array([0, 1, 2, 3]), 4) == pytest.approx(
        1 - 5 / 7)
    assert ordinal_score(np.array([1, 0, 1, 3]), np.array([0, 0, 1, 3]), 4) == pytest.approx(0.875)
    ref = np.random.default_rng(0).integers(0, 4, 500)
    assert ordinal_score(ref, ref, 4) == 1.0
    assert ordinal_score(np.zeros(5, int), np.zeros(5, int), 4) == 1.0  # h = 0
    assert ordinal_score(3 - ref * (ref > 1), ref, 4) >= 0.0
    worst = np.where(ref >= 2, 0, 3)
    assert 0.0 <= ordinal_score(worst, ref, 4) <= 1.0
    acc = ConfusionAccumulator(4)
    acc.update(torch.tensor([[0, 3], [2, 0]]), torch.tensor([[0, 1], [2, 3]]))
    values = acc.values()
    assert values["score"] == pytest.approx(1 - 5 / 7) and values["accuracy"] == 0.5
    assert values["iou0"] == 0.5 and values["iou2"] == 1.0 and values["miou"] == 0.375
    net = _net("add")
    metric = net.metrics()[0]
    metric.update(torch.eye(4)[[0, 3, 2, 0]].T.reshape(1, 4, 2, 2),
                  {"label": torch.tensor([[[0, 1], [2, 3]]])})
    assert metric.compute()["score"] == pytest.approx(1 - 5 / 7)
    assert net.selection_metric == "score"
    assert _net("add", select="miou").selection_metric == "miou"


def _ok(*args: object) -> str:
    from click.testing import CliRunner

    from nasseg.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_search_derive_train_predict_a_whole_slide_with_context_export(tmp_path: Path) -> None:
    """End to end on demo_slides: a tiny search of the fusions, its derived net retrained
    through the three steps, a whole held-out slide predicted window by window with context."""
    import json

    from PIL import Image

    from nasseg.data import make_demo
    from nasseg.data.demo import _default_cache_dir
    from nasseg.export import load_trained

    make_demo("demo_slides")
    (folder,) = _default_cache_dir().glob("demo_slides-v*")
    small = tmp_path / "slides"  # the demo's slides cropped, so the test trains in seconds
    meta = json.loads((folder / "dataset.json").read_text())
    for sub in ("images", "labels"):
        (small / sub).mkdir(parents=True)
        for png in sorted((folder / sub).glob("*.png"))[:4]:
            crop = np.asarray(Image.open(png))[256:512, 256:512]
            Image.fromarray(crop).save(small / sub / png.name)
    (small / "dataset.json").write_text(json.dumps({**meta, "patches_per_case": 2}))
    common = ("--device", "cpu", "--batch-size", 4, "--steps-per-epoch", 1)
    _ok("search", "--space", "da_refinenet", "--data", small, "--out", tmp_path / "s",
        "--epochs", 3, "--warmup-epochs", 1, "--space-arg", "features=2",
        "--space-arg", "max_blocks=1", "--set", "context_factor=2", *common)
    arch = json.loads((tmp_path / "s" / "arch.json").read_text())
    assert {arch["choices"][f"fuse_l{k}"]["chosen"] for k in range(1, 5)} <= set(
        ["concat", "add", "attention"])
    _ok("train", tmp_path / "s" / "arch.json", "--out", tmp_path / "t", "--epochs", 3, *common)
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["selection_metric"] == "score" and 0 <= metrics["pooled"]["score"] <= 1
    assert [s["lr_scale"] for s in metrics["stages"]] == [1.0, 0.5, 0.2]
    slide = folder / "images" / "slide_07.png"
    out = _ok("predict", tmp_path / "t", "--input", slide, "--output", tmp_path / "p",
              "--overlap", 0)
    assert "predicted 1 case(s)" in out
    labels = np.asarray(Image.open(tmp_path / "p" / "slide_07.png"))
    assert labels.shape == np.asarray(Image.open(slide)).shape and labels.max() <= 3
    (tmp_path / "ref").mkdir()
    reference = (folder / "labels" / "slide_07.png").read_bytes()
    (tmp_path / "ref" / "slide_07.png").write_bytes(reference)
    assert "score" in _ok("evaluate", "--pred", tmp_path / "p", "--ref", tmp_path / "ref")
    _ok("export", tmp_path / "t", "--format", "torchscript", "--out", tmp_path / "net.pt")
    model, _ = load_trained(tmp_path / "t")
    exported = torch.jit.load(str(tmp_path / "net.pt"))
    batch = {k: torch.rand_like(v) for k, v in model.example_batch((32, 32), 1).items()}
    torch.testing.assert_close(exported(batch["image"], batch["context"]),
                               model.forward_batch(batch), atol=1e-5, rtol=1e-4)
