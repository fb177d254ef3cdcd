"""Real data end to end: verify, search, train, predict on the original grid, evaluate, for the
MSD and nnU-Net layouts (3D NIfTI) and a 2D PNG set."""
from __future__ import annotations

import json
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from test_real_data import make_msd, make_nnunet, make_png

from nasseg.cli import cli
from nasseg.data.source import verified_folder
from nasseg.data.views import PATCH_VIEW
from nasseg.inference.predict import PredictionPlan, predict_case

TINY = ["--space", "unet", "--space-arg", "features=2", "--space-arg", "levels=2",
        "--device", "cpu", "--steps-per-epoch", "2"]


def _ok(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def trained_msd(tmp_path_factory):
    root = tmp_path_factory.mktemp("msd")
    data = make_msd(root)
    _ok("verify", data)
    _ok("search", "--data", data, "--out", root / "search", "--epochs", 1, "--warmup-epochs", 0,
        *TINY)
    _ok("train", root / "search" / "arch.json", "--out", root / "train", "--epochs", 2,
        "--steps-per-epoch", 2, "--device", "cpu")
    return data, root / "train"


def test_train_metrics_score_whole_cases(trained_msd):
    metrics = json.loads((trained_msd[1] / "metrics.json").read_text())
    assert set(metrics["dice_per_class"]) == {"liver", "tumour"}
    assert {"iou_mean", "hd95_mean", "per_case"} <= set(metrics)


@pytest.mark.parametrize("layout", ["msd", "nnunet"])
def test_predict_writes_the_original_grid_with_the_input_header(trained_msd, layout, tmp_path):
    data, trained = trained_msd
    inputs = data / "imagesTr" if layout == "msd" else make_nnunet(tmp_path) / "imagesTr"
    out = tmp_path / "pred"
    result = _ok("predict", trained, "--input", inputs, "--output", out)
    assert "predicted 4 case(s)" in result.stdout
    for ref_file in sorted((data / "labelsTr").glob("*.nii.gz")):
        pred = nib.load(str(out / ref_file.name))
        ref = nib.load(str(ref_file))
        assert pred.shape == ref.shape
        assert np.asarray(pred.dataobj).dtype == np.uint8
        np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-5)
        for code in ("qform_code", "sform_code"):
            assert pred.header[code] == ref.header[code]
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
    assert not list(out.glob(".*")), "no temporary files left behind"
    result = _ok("evaluate", "--pred", out, "--ref", data / "labelsTr")
    summary = json.loads((out / "evaluation.json").read_text())
    assert len(summary["cases"]) == 4 and "mean_dice" in summary["summary"]


def test_2d_png_set_end_to_end(tmp_path):
    data = make_png(tmp_path)
    _ok("search", "--data", data, "--out", tmp_path / "s", "--epochs", 1, "--warmup-epochs", 0,
        *TINY)
    _ok("train", tmp_path / "s" / "arch.json", "--out", tmp_path / "t", "--epochs", 1,
        "--steps-per-epoch", 2, "--device", "cpu")
    _ok("predict", tmp_path / "t", "--input", data / "imagesTr", "--output", tmp_path / "p")
    for ref in (data / "labelsTr").glob("*.png"):
        pred = np.asarray(Image.open(tmp_path / "p" / f"{ref.stem}.png"))
        assert pred.shape == np.asarray(Image.open(ref)).shape and pred.dtype == np.uint8


def test_verify_lists_every_problem_and_search_refuses_the_data(tmp_path):
    data = make_msd(tmp_path)
    (data / "labelsTr" / "case_001.nii.gz").write_bytes(b"broken")
    img = nib.load(str(data / "imagesTr" / "case_002.nii.gz"))
    arr = np.asarray(img.dataobj).copy()
    arr[3, 3, 3, 0] = np.nan
    nib.save(nib.Nifti1Image(arr, img.affine), str(data / "imagesTr" / "case_002.nii.gz"))
    result = CliRunner().invoke(cli, ["verify", str(data)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert any("case_001.nii.gz" in line for line in lines)
    assert any("case_002.nii.gz" in line and "NaN" in line for line in lines)
    result = CliRunner().invoke(cli, ["search", "--data", str(data), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "problem(s) found by verification" in result.stderr
    assert not (tmp_path / "r").exists()


def test_predict_input_errors_are_named(trained_msd, tmp_path):
    result = CliRunner().invoke(cli, ["predict", str(trained_msd[1]), "--input",
                                      str(tmp_path / "nothing"), "--output", str(tmp_path / "o")])
    assert result.exit_code == 1 and f"{tmp_path / 'nothing'}: no such file" in result.stderr


class _Bright(torch.nn.Module):
    """A stand-in network: class 1 wherever the normalised first channel is above 0."""

    def data_view(self):
        return PATCH_VIEW

    def forward(self, x):
        x = x[:, :1]
        return torch.cat([torch.zeros_like(x), 10 * x, torch.full_like(x, -1e3)], dim=1)


def test_predict_removes_the_small_components_the_training_chose(trained_msd, tmp_path):
    """model.pt's plan carries the post-processing decided on the validation cases, and
    prediction applies it."""
    data, trained = trained_msd
    post = json.loads((trained / "metrics.json").read_text())["postprocessing"]
    assert set(post["small_object_voxels"]) == {"liver", "tumour"}
    assert post["dice_mean_after"] >= post["dice_mean_before"]
    state = torch.load(trained / "model.pt", weights_only=False)
    assert state["plan"] == json.loads((trained / "plan.json").read_text())
    plan = PredictionPlan.from_dict(state["plan"])
    raw = verified_folder(data).cases[0]
    kept = predict_case(_Bright().eval(), replace(plan, min_component={}), raw, data)
    specks = predict_case(_Bright().eval(), replace(plan, min_component={1: 50}), raw, data)
    none = predict_case(_Bright().eval(), replace(plan, min_component={1: 10 ** 9}), raw, data)
    assert kept.any() and not none.any()
    assert 0 < specks.sum() < kept.sum()  # the small components of the noise went
