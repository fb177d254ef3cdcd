"""The ``inter_unet`` space (Inter-U-Net and its variants): which parameters each variant shares,
the tied decoder's weights, the loss term by term, U-Net++'s nodes, training-only parts out of
the derived net, label independence at eval, conditional knobs, and search -> derive -> train ->
export through the CLI (spec section 6)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import optuna
import pytest
import torch
from click.testing import CliRunner
from torch.nn import functional as F

from nasseg.cli import cli
from nasseg.derive import build_derived, count_flops, count_parameters, read_arch
from nasseg.evaluation.metrics import SmallObjectDice, object_dice
from nasseg.export import inference_network, load_trained
from nasseg.losses import DiceCELoss
from nasseg.searches.darts.modes import channel_signature
from nasseg.searches.tuning.suggest import INACTIVE_ATTR, suggest_knobs
from nasseg.space import TrainingStage, create_space
from nasseg.spaces.inter_unet import TIED, VARIANTS, TiedBlock, minmax

ARGS = {"in_channels": 1, "num_classes": 3, "features": 4, "levels": 3}
STAGE = TrainingStage("all")


def _space(dims: int = 2, **knobs):
    return create_space("inter_unet", knobs=knobs, spatial_dims=dims, **ARGS)


def _net(dims: int = 2, **knobs):
    space = _space(dims, **knobs)
    return space.freeze(space.default_sample()).train()


def _batch(shape=(19, 21), seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(2, 1, *shape, generator=g),
            "label": torch.randint(0, 3, (2, *shape), generator=g)}


def _reached(net, outputs, keys) -> set[int]:
    """ids of the parameters that the sum of ``outputs[keys]`` depends on."""
    params = list(net.parameters())
    total = sum(outputs[k].sum() for k in keys)
    grads = torch.autograd.grad(total, params, allow_unused=True, retain_graph=True)
    return {id(p) for p, g in zip(params, grads) if g is not None and g.abs().sum() > 0}


def _conv_weights(module) -> list[torch.Tensor]:
    return [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def _same_tensors(tied: list[torch.Tensor], encoder: list[torch.Tensor]) -> None:
    """The very tensors (identity and storage), not copies."""
    assert len(tied) == len(encoder) > 0
    assert all(a is b and a.data_ptr() == b.data_ptr() for a, b in zip(tied, encoder))


def _ids(*modules) -> set[int]:
    return {id(p) for m in modules for p in m.parameters()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_builds_its_parts_and_shares_exactly_the_paper_parameters(variant):
    net = _net(supervision=variant)
    out = net.forward_batch(_batch())
    parts = {"mask_stem": variant in ("inter", "twi"), "ae": variant in ("ae", "sae", "twae"),
             "tied": variant in TIED}
    assert {name for name, built in parts.items() if built} == set(net.training_only())
    assert all(hasattr(net, name) == built for name, built in parts.items())
    backbone = _ids(net.encoder, net.ups, net.blocks, net.skips, net.head)
    image_side = _reached(net, out, ["seg"] + [k for k in out if k.startswith("y") and
                                               not k.startswith("ym")])
    assert image_side == backbone
    if variant in ("none", "tw"):
        assert "mask_seg" not in out
        return
    mask_side = _reached(net, out, ["mask_seg"] + [k for k in out if k.startswith("ym")])
    shared = image_side & mask_side
    if variant in ("inter", "twi"):  # the same network; its own first block reads m
        assert shared == backbone - _ids(net.encoder[0])
        assert mask_side == shared | _ids(net.mask_stem)
    elif variant == "ae":  # a separate auto-encoder
        assert not shared and mask_side == _ids(net.ae)
    else:  # sae, twae: the AE's own encoder, the backbone's decoder and head
        assert shared == _ids(net.ups, net.blocks, net.head)
        assert mask_side == shared | _ids(net.ae)


def test_mask_stem_repeat_runs_the_mask_through_every_image_weight():
    net = _net(supervision="inter", mask_stem="repeat")
    out = net.forward_batch(_batch())
    assert net.training_only() == ()
    backbone = _ids(net.encoder, net.ups, net.blocks, net.head)
    assert _reached(net, out, ["mask_seg", "ym0"]) == backbone


def test_tied_decoder_runs_the_encoder_weights_transposed():
    net = _net(backbone="unetpp", supervision="twi")
    encoder_convs = [m for m in net.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    for lvl, block in enumerate(net.tied.levels):
        assert isinstance(block, TiedBlock)
        _same_tensors([c.weight for c in block.convs()], _conv_weights(net.encoder[lvl]))
    assert not any(p.ndim >= 3 for p in net.tied.parameters()), "the tied decoder owns a conv"
    assert [n for n, _ in net.named_parameters() if n.startswith("tied.")]  # norms, bias only
    batch = _batch()
    recon = torch.sigmoid(net.forward_batch(batch)["recon"])
    assert recon.shape == batch["image"].shape
    assert 0 < recon.min() and recon.max() < 1
    # a step on L_t alone moves the encoder's convolutions
    before = [c.weight.detach().clone() for c in encoder_convs]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    F.binary_cross_entropy_with_logits(net.forward_batch(batch)["recon"],
                                       minmax(batch["image"])).backward()
    opt.step()
    assert all(not torch.equal(b, c.weight) for b, c in zip(before, encoder_convs))


def test_a_tied_conv_is_the_adjoint_of_its_encoder_conv():
    """<conv(x), y> == <x, conv^T(y)>: the tied step is the transposed convolution, same W."""
    space = _space(supervision="tw")
    net = space.freeze({**space.default_sample(), "enc1_op": "dil3"})
    conv = net.encoder[1][1][0]  # the second dilated conv of level 1 (8 -> 8 channels)
    tied = TiedBlock(torch.nn.Sequential(conv), 2, final=True)
    x, y = torch.randn(1, 8, 11, 13), torch.randn(1, 8, 11, 13)
    torch.testing.assert_close((conv(x) * y).sum(), (x * tied(y)).sum(), rtol=1e-4, atol=1e-4)


def test_the_search_ties_every_candidate_and_partial_channels_see_its_real_widths():
    space = _space(supervision="tw")
    for name in ("conv3", "conv5", "dil3"):
        block = space.tied.levels[1][name]
        _same_tensors([c.weight for c in block.convs()], _conv_weights(space.encoder[1][name]))
        assert channel_signature(block) == (8, 4) == channel_signature(space.encoder[1][name])[::-1]


def test_five_levels_give_five_intermediate_pairs_of_equal_shapes_and_zero_mse_when_equal():
    space = create_space("inter_unet", knobs={"supervision": "inter"}, spatial_dims=2,
                         **{**ARGS, "levels": 5})
    net = space.freeze(space.default_sample()).train()
    batch = _batch((32, 32))
    out = net.forward_batch(batch)
    pairs = [(out[f"y{j}"], out[f"ym{j}"]) for j in range(5)]
    assert "y5" not in out
    assert [y.shape for y, _ in pairs] == [t.shape for _, t in pairs]
    assert [y.shape[1] for y, _ in pairs] == [64, 32, 16, 8, 4]  # bottleneck first
    same = {**out, **{f"ym{j}": out[f"y{j}"] for j in range(5)}}
    terms = net.loss_terms(same, batch)
    assert all(terms[f"inter{j}"] == 0 for j in range(5))
    assert all(net.loss_terms(out, batch)[f"inter{j}"] > 0 for j in range(5))


def test_the_loss_is_eq_6_term_by_term():
    batch = _batch()
    space = _space(supervision="twi")
    only_image = {"alpha": 1.0, "gamma": 0.0, "beta": 0.0, **{f"omega{j}": 0.0 for j in range(3)}}
    ref = space.freeze({**space.default_sample(), **only_image}).train()
    out = ref.forward_batch(batch)
    torch.testing.assert_close(ref.compute_loss(out, batch, STAGE),
                               DiceCELoss()(out["seg"], batch["label"]))
    terms = ref.loss_terms(out, batch)
    assert set(terms) == {"image", "mask", "recon", "inter0", "inter1", "inter2"}
    knobs = {"alpha": 0.8, "gamma": 0.7, "lambda": 2.0, "beta": 0.3, "omega0": 0.2,
             "omega1": 0.5, "omega2": 0.9}
    net = space.freeze({**space.default_sample(), **knobs}).train()
    assert (net.alpha, net.gamma, net.lam, net.beta, net.omega) == (0.8, 0.7, 2.0, 0.3,
                                                                   [0.2, 0.5, 0.9])
    expected = {"alpha": terms["image"], "gamma": terms["mask"], "beta": terms["recon"],
                "lam": sum(net.omega[j] * terms[f"inter{j}"] for j in range(3))}
    base = net.compute_loss(out, batch, STAGE)
    for attr, term in expected.items():  # finite differences: each weight scales its term only
        setattr(net, attr, getattr(net, attr) + 0.25)
        torch.testing.assert_close(net.compute_loss(out, batch, STAGE) - base, 0.25 * term)
        setattr(net, attr, getattr(net, attr) - 0.25)
    net.omega[1] += 0.25
    torch.testing.assert_close(net.compute_loss(out, batch, STAGE) - base,
                               0.25 * net.lam * terms["inter1"])


def test_targets_are_detached_unless_asked():
    batch = _batch()
    for detach, reaches in ((True, False), (False, True)):
        net = _net(supervision="inter", detach_targets=detach, gamma=0.0, alpha=0.1)
        net.compute_loss(net.forward_batch(batch), batch, STAGE).backward()
        grad = net.mask_stem[0][0].weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == reaches


@pytest.mark.parametrize("backbone,dims,shape", [("unet", 3, (11, 13, 9)),
                                                  ("unetpp", 2, (19, 21))])
def test_eval_output_ignores_the_label_and_is_the_plain_backbone(backbone, dims, shape):
    space = _space(dims, backbone=backbone, supervision="twi")
    net = space.freeze(space.default_sample()).eval()
    plain_space = _space(dims, backbone=backbone, supervision="none")
    plain = plain_space.freeze({**space.default_sample(), "supervision": "none"}).eval()
    batch = _batch(shape)
    with torch.no_grad():
        seg = net.forward_batch(batch)
        assert set(seg) == {"seg"}
        image_only = net.forward_batch({"image": batch["image"]})["seg"]
        assert torch.equal(seg["seg"], image_only)
        assert torch.equal(seg["seg"], net(batch["image"])["seg"])
        assert torch.equal(seg["seg"], inference_network(net)(batch["image"])["seg"])
    assert count_parameters(net) == count_parameters(plain) == count_parameters(
        inference_network(net)) < sum(p.numel() for p in net.parameters())
    example = net.example_batch(shape, 1)
    assert count_flops(net, example) == count_flops(plain, example)


def test_unetpp_has_15_nodes_and_the_unet_gates_leave_exactly_the_unet():
    space = create_space("inter_unet", knobs={"backbone": "unetpp", "supervision": "none"},
                         spatial_dims=2, **{**ARGS, "levels": 5})
    nodes = {n for n in space.graph.fixed} | {s for srcs in space.graph.fixed.values()
                                              for s in srcs} - {"input", "out"}
    assert len(nodes - {"input", "out"}) == 15
    assert len(space.blocks) == 10 and len(space.encoder) == 5
    unet_gates = {}
    for label, info in space.choice_infos.items():
        if info.kind == "connection":
            i, j = (int(v) for v in label[1:-3].split("_"))
            unet_gates[label] = [0] if i + j == 4 else []
    derived = space.freeze({**space.default_sample(), **unet_gates})
    assert sorted(derived.blocks) == ["0_4", "1_3", "2_2", "3_1"]
    unet = create_space("inter_unet", knobs={"backbone": "unet", "supervision": "none"},
                        spatial_dims=2, **{**ARGS, "levels": 5})
    plain = unet.freeze(unet.default_sample())
    assert count_parameters(derived) == count_parameters(plain)
    assert derived.graph.live_nodes({k: v for k, v in unet_gates.items()}) == {
        "input", "out", *(f"enc{i}" for i in range(5)), "x3_1", "x2_2", "x1_3", "x0_4"}
    full = space.freeze(space.default_sample())
    assert count_parameters(derived) < count_parameters(full)


def test_weights_apply_only_to_their_variants_and_the_tuner_skips_the_others():
    space = _space(supervision="tw")
    conditions = space.knob_conditions
    assert conditions["beta"] == {"supervision": ["tw", "twi", "twae"]}
    assert conditions["gamma"]["supervision"] == ["inter", "ae", "sae", "twi", "twae"]
    assert conditions["mask_stem"] == {"supervision": ["inter", "twi"]}
    specs = {k: v for k, v in space.knob_specs.items() if k != "supervision"}
    study = optuna.create_study()
    for variant, absent in (("inter", {"beta", "ae_schedule"}),
                            ("tw", {"gamma", "lambda", "omega0", "mask_stem", "detach_targets"}),
                            ("none", {"beta", "gamma", "omega2"})):
        trial = study.ask()
        suggested = suggest_knobs(trial, specs, conditions, {"supervision": variant})
        assert not absent & set(suggested) and absent <= set(trial.user_attrs[INACTIVE_ATTR])
        assert "alpha" in suggested


def test_ae_pretrain_trains_the_auto_encoder_first_then_the_rest_against_it():
    net = _net(supervision="sae", ae_schedule="pretrain")
    first, second = net.training_stages()
    assert first.name == "ae_pretrain" and not first.search
    assert first.trainable == ("ae", "ups", "blocks", "head")
    assert "ae" not in second.trainable and {"encoder", "head"} <= set(second.trainable)
    batch = _batch()
    out = net.forward_batch(batch)
    assert net.compute_loss(out, batch, first) == net.loss_terms(out, batch)["mask"]
    assert _net(supervision="ae", ae_schedule="pretrain").training_stages()[0].trainable == ("ae",)
    assert len(_net(supervision="sae").training_stages()) == 1


def test_small_object_dice_scores_each_small_object():
    ref = np.zeros((20, 20), dtype=np.int64)
    ref[1:4, 1:4] = 1      # 9 px, found exactly
    ref[10:13, 1:4] = 2    # 9 px, missed
    ref[8:20, 8:20] = 1    # 144 px: not small
    pred = np.zeros_like(ref)
    pred[1:4, 1:5] = 1     # 12 px touching the first object
    pred[8:20, 8:20] = 1
    assert object_dice(pred, ref, 3, max_size=20) == [pytest.approx(18 / 21), 0.0]
    metric = SmallObjectDice(3, 20)
    assert np.isnan(metric.mean())
    metric.update(torch.from_numpy(np.stack([pred, ref])), torch.from_numpy(np.stack([ref, ref])))
    assert metric.mean() == pytest.approx((18 / 21 + 0.0 + 1.0 + 1.0) / 4)


def test_search_derive_train_twi_and_export_through_the_cli(small2d, tmp_path):
    def ok(*args):
        result = CliRunner().invoke(cli, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result

    ok("search", "--space", "inter_unet", "--data", small2d, "--out", tmp_path / "s",
       "--epochs", 2, "--warmup-epochs", 1, "--steps-per-epoch", 2, "--space-arg", "features=4",
       "--space-arg", "levels=3", "--set", "backbone=unetpp", "--set", "supervision=twi",
       "--set", "beta=0.5", "--arch-lr", 0.05, "--device", "cpu")
    ok("derive", tmp_path / "s", "--tau", 0.5, "--out", tmp_path / "s" / "arch-0.5.json")
    arch = read_arch(tmp_path / "s" / "arch-0.5.json")
    assert arch["sample"]["supervision"] == "twi" and arch["sample"]["beta"] == 0.5
    derived = build_derived(arch)
    plain = build_derived({**arch, "sample": {**arch["sample"], "supervision": "none"}})
    assert not hasattr(plain, "tied") and hasattr(derived, "tied")
    assert arch["params"] == count_parameters(derived) == count_parameters(plain)
    ok("train", tmp_path / "s" / "arch-0.5.json", "--out", tmp_path / "t", "--epochs", 2,
       "--steps-per-epoch", 2, "--device", "cpu")
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["params"] == count_parameters(plain)
    assert "small_dice" in metrics["validation"]
    model, info = load_trained(tmp_path / "t")
    image = torch.randn(2, *info["arch"]["input_shape"])
    with torch.no_grad():
        expected = model.forward_batch({"image": image})["seg"]
        labelled = model.forward_batch({"image": image, "label": torch.zeros(
            2, *image.shape[2:], dtype=torch.long)})["seg"]
    assert torch.equal(expected, labelled)
    ok("export", tmp_path / "t", "--format", "torchscript", "--out", tmp_path / "m.ts")
    np.save(tmp_path / "image.npy", image.numpy())
    script = tmp_path / "load.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        import numpy as np
        import torch
        sys.modules["nasseg"] = None  # any import of nasseg now fails
        net = torch.jit.load(sys.argv[1])
        names = [n for n, _ in net.named_parameters()]
        with torch.no_grad():
            out = net(torch.from_numpy(np.load(sys.argv[2]))).numpy()
        np.save(sys.argv[3], out)
        print(json.dumps({"params": sum(p.numel() for p in net.parameters()),
                          "training_only": [n for n in names if ".tied." in n
                                            or ".mask_stem." in n]}))
        """))
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "m.ts"),
                          str(tmp_path / "image.npy"), str(tmp_path / "out.npy")],
                         check=True, cwd=tmp_path, capture_output=True, text=True)
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report == {"params": count_parameters(plain), "training_only": []}
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected.numpy(), rtol=1e-4,
                               atol=1e-4)
