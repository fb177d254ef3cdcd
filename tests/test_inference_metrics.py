"""Tests for sliding-window inference (nasseg.inference), the per-case metrics
(nasseg.evaluation.metrics) and folder evaluation (nasseg.evaluation.folders)."""
from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from nasseg.data.formats import read_label_file
from nasseg.evaluation import EvaluationError, evaluate_folders, write_evaluation
from nasseg.evaluation.metrics import (case_metrics, dice_per_class, hd95_per_class, iou_per_class,
                                       pixel_accuracy)
from nasseg.inference import network_predict_fn as on_image
from nasseg.inference import sliding_window_predict, window_starts

torch.set_num_threads(1)


def _pointwise(num_classes: int = 3):
    """A per-voxel (hence tiling-independent and flip-equivariant) logit function and its truth."""
    gen = torch.Generator().manual_seed(0)
    scale = torch.randn(num_classes, generator=gen)
    shift = torch.randn(num_classes, generator=gen)

    def fn(batch: torch.Tensor) -> torch.Tensor:
        x = batch[:, :1]  # (B, 1, *patch)
        view = (1, num_classes) + (1,) * (batch.ndim - 2)
        return torch.sin(3 * x) * scale.view(view) + x * shift.view(view)

    def truth(image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(fn(image[None]), dim=1)[0]

    return fn, truth


# ---------------------------------------------------------------- sliding window


def test_window_starts_touch_the_border() -> None:
    assert window_starts(12, 8, 0.5) == [0, 4]
    assert window_starts(8, 8, 0.5) == [0]
    starts = window_starts(37, 16, 0.5)
    assert starts[0] == 0 and starts[-1] == 37 - 16
    assert all(b - a <= 8 for a, b in zip(starts, starts[1:]))


def test_whole_image_patch_is_a_single_pass() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    image = torch.randn(2, 16, 20)
    calls = []

    def fn(batch: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(batch.shape))
        return conv(batch)

    out = sliding_window_predict(on_image(fn), image, (16, 20))
    assert calls == [(1, 2, 16, 20)]
    expected = torch.softmax(conv(image[None]), dim=1)[0]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert not out.requires_grad


def test_constant_logits_give_their_softmax_everywhere() -> None:
    logits = torch.tensor([0.5, -1.0, 2.0])
    image = torch.randn(1, 19, 23, 17)
    out = sliding_window_predict(
        on_image(lambda b: logits.view(1, 3, 1, 1, 1).expand(b.shape[0], 3, *b.shape[2:])),
        image, (8, 8, 8), batch_size=4)
    assert out.shape == (3, 19, 23, 17)
    torch.testing.assert_close(out, torch.softmax(logits, 0).view(3, 1, 1, 1).expand_as(out),
                               rtol=0, atol=1e-6)


def test_gaussian_map_blends_overlapping_windows() -> None:
    # Two windows along the columns (starts 0 and 4); the first predicts class 0 everywhere,
    # the second class 1, so the result is each window's Gaussian weight share.
    columns = torch.arange(12.0).expand(8, 12)

    def fn(batch: torch.Tensor) -> torch.Tensor:
        first_col = batch[:, 0, 0, 0]
        cls1 = torch.where(first_col > 0, 10.0, -10.0).view(-1, 1, 1, 1)
        return torch.cat([-cls1, cls1], dim=1).expand(-1, 2, 8, 8)

    out = sliding_window_predict(on_image(fn), columns[None], (8, 8), overlap=0.5)[1].numpy()

    # 1-D Gaussian, sigma = 8 / 8, centre 3.5, scaled so the 2-D map peaks at 1
    g = lambda x: np.exp(-0.5 * ((np.asarray(x, dtype=float) - 3.5) / 1.0) ** 2) / np.exp(-0.125)
    rows, cols = np.meshgrid(np.arange(8), np.arange(12), indexing="ij")
    w0 = np.where(cols < 8, np.maximum(g(rows) * g(cols), 1e-4), 0.0)
    w1 = np.where(cols >= 4, np.maximum(g(rows) * g(cols - 4), 1e-4), 0.0)
    np.testing.assert_allclose(out, w1 / (w0 + w1), atol=1e-5)
    assert np.all(out[:, :4] < 1e-6) and np.all(out[:, 8:] > 1 - 1e-6)
    assert np.all(np.diff(out[4]) >= 0) and out[4, 5] + out[4, 6] == pytest.approx(1.0)  # smooth hand-over

    flat = sliding_window_predict(on_image(fn), columns[None], (8, 8), overlap=0.5, gaussian=False)[1]
    torch.testing.assert_close(flat[:, 4:8], torch.full((8, 4), 0.5), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape,patch", [((37, 41), (16, 16)), ((19, 23, 17), (8, 8, 8)),
                                         ((19, 23, 17), (16, 5, 8))])
def test_odd_shapes_are_covered_exactly(shape: tuple[int, ...], patch: tuple[int, ...]) -> None:
    fn, truth = _pointwise()
    image = torch.randn(2, *shape)
    out = sliding_window_predict(on_image(fn), image, patch, overlap=0.5, batch_size=3)
    assert out.shape == (3,) + shape and out.dtype == torch.float32
    torch.testing.assert_close(out, truth(image), rtol=0, atol=1e-5)
    single = sliding_window_predict(on_image(fn), image, patch, overlap=0.25, batch_size=1)
    torch.testing.assert_close(single, out, rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape,patch", [((5, 6), (8, 8)), ((4, 20, 11), (8, 8, 8))])
def test_images_smaller_than_the_patch_are_padded(shape: tuple[int, ...], patch: tuple[int, ...]) -> None:
    fn, truth = _pointwise()
    image = torch.rand(1, *shape) + 1.0  # > 0, so the zero padding is visible
    seen = []

    def spy(batch: torch.Tensor) -> torch.Tensor:
        assert batch.shape[2:] == patch
        seen.append(batch)
        return fn(batch)

    out = sliding_window_predict(on_image(spy), image, patch)
    assert out.shape == (3,) + shape
    torch.testing.assert_close(out, truth(image), rtol=0, atol=1e-5)
    window = seen[0][0, 0]  # the first window; padding is zeros, split evenly before and after
    before = (patch[0] - shape[0]) // 2
    assert torch.all(window[:before] == 0) and torch.all(window[before + shape[0]:] == 0)
    assert torch.all(window[before:before + shape[0]].sum() > 0)


def test_mirroring_keeps_a_flip_equivariant_function() -> None:
    torch.manual_seed(1)
    conv = torch.nn.Conv3d(1, 3, 3, padding=1, bias=True)
    with torch.no_grad():  # a kernel symmetric under every flip makes the conv flip-equivariant
        w = conv.weight
        w.copy_((w + w.flip(2) + w.flip(3) + w.flip(4) + w.flip(2, 3) + w.flip(2, 4)
                 + w.flip(3, 4) + w.flip(2, 3, 4)) / 8)
    calls = []

    def fn(batch: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return conv(batch)

    image = torch.randn(1, 13, 11, 9)
    plain = sliding_window_predict(on_image(fn), image, (8, 8, 8))
    n_plain = len(calls)
    mirrored = sliding_window_predict(on_image(fn), image, (8, 8, 8), mirror=True)
    assert len(calls) - n_plain == 8 * n_plain
    torch.testing.assert_close(mirrored, plain, rtol=0, atol=1e-5)

    # a function that is not flip-equivariant is changed (averaged) by mirroring
    ramp = torch.linspace(-3, 3, 8)
    skewed = lambda b: torch.stack([torch.zeros_like(b[:, 0]), ramp.view(1, 8, 1, 1).expand_as(b[:, 0])], 1)
    p = sliding_window_predict(on_image(skewed), torch.zeros(1, 8, 8, 8), (8, 8, 8), mirror=True)
    torch.testing.assert_close(p, torch.full_like(p, 0.5), rtol=0, atol=1e-6)


def test_sliding_window_rejects_bad_arguments() -> None:
    image = torch.zeros(1, 8, 8)
    ident = lambda b: torch.zeros(b.shape[0], 2, *b.shape[2:])
    with pytest.raises(ValueError, match="patch_size"):
        sliding_window_predict(on_image(ident), image, (8, 8, 8))
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_predict(on_image(ident), image, (4, 4), overlap=1.0)
    with pytest.raises(ValueError, match="predict_fn"):
        sliding_window_predict(on_image(lambda b: torch.zeros(b.shape[0], 2, 3, 3)), image,
                               (4, 4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sliding_window_stays_on_the_image_device() -> None:
    fn, truth = _pointwise()
    image = torch.randn(1, 19, 23, 17, device="cuda")
    out = sliding_window_predict(on_image(fn), image.cpu(), (8, 8, 8))
    seen = []

    def spy(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch.device.type)
        return fn(batch.cpu()).to(batch.device)

    gpu = sliding_window_predict(on_image(spy), image, (8, 8, 8), mirror=True, batch_size=2)
    assert gpu.device.type == "cuda" and set(seen) == {"cuda"}
    torch.testing.assert_close(gpu.cpu(), out, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- metrics


def test_dice_iou_accuracy_known_values() -> None:
    ref = np.array([1, 1, 1, 1, 0, 0, 2, 2])
    pred = np.array([1, 1, 0, 0, 1, 0, 2, 0])
    assert dice_per_class(pred, ref, 4)[:2] == pytest.approx([4 / 7, 2 / 3])
    assert math.isnan(dice_per_class(pred, ref, 4)[2])
    iou = iou_per_class(torch.as_tensor(pred), ref, 4)
    assert iou[:2] == pytest.approx([2 / 5, 1 / 2]) and math.isnan(iou[2])
    assert pixel_accuracy(pred, ref) == pytest.approx(4 / 8)
    assert iou_per_class(ref, ref, 3) == [1.0, 1.0]
    with pytest.raises(ValueError, match="outside"):
        iou_per_class(pred, ref, 2)
    with pytest.raises(ValueError, match="shape"):
        pixel_accuracy(pred[:4], ref)


def _cube(shape: tuple[int, ...], start: tuple[int, ...], size: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.int64)
    mask[tuple(slice(s, s + size) for s in start)] = 1
    return mask


@pytest.mark.parametrize("k", [1, 3])
def test_hd95_of_offset_cubes(k: int) -> None:
    shape = (30, 30, 30)
    ref = _cube(shape, (5, 5, 5), 10)
    for axis in range(3):
        start = [5, 5, 5]
        start[axis] += k
        pred = _cube(shape, tuple(start), 10)
        assert hd95_per_class(pred, ref, 2) == pytest.approx([k])
        spacing = (1.0, 2.5, 0.7)
        assert hd95_per_class(pred, ref, 2, spacing=spacing) == pytest.approx([k * spacing[axis]])
    assert hd95_per_class(ref, ref, 2, spacing=(3.0, 1.0, 1.0)) == [0.0]


def test_hd95_2d_and_edge_cases() -> None:
    ref = np.zeros((20, 24), dtype=np.int64)
    ref[4:12, 4:12] = 1
    pred = np.roll(ref, 2, axis=1)
    pred[15:18, 15:18] = 2  # class 2 only in the prediction
    hd = hd95_per_class(pred, ref, 4, spacing=(0.5, 2.0))
    assert hd[0] == pytest.approx(4.0)  # 2 pixels of 2.0
    assert hd[1] == pytest.approx(math.hypot(20 * 0.5, 24 * 2.0))  # image diagonal
    assert math.isnan(hd[2])  # class 3 in neither
    with pytest.raises(ValueError, match="spacing"):
        hd95_per_class(pred, ref, 4, spacing=(1.0,))


def test_case_metrics_names_and_means() -> None:
    ref = np.zeros((10, 10), dtype=np.int64)
    ref[2:6, 2:6] = 1
    pred = ref.copy()
    pred[2:6, 5] = 0  # 12 of 16 pixels right
    m = case_metrics(pred, ref, 3, class_names=["bg", "organ", "tumour"])
    assert set(m) == {"dice", "iou", "hd95", "mean_dice", "mean_iou", "mean_hd95", "pixel_accuracy"}
    assert m["dice"]["organ"] == pytest.approx(24 / 28) and math.isnan(m["dice"]["tumour"])
    assert m["mean_dice"] == pytest.approx(24 / 28)  # NaN class ignored
    assert m["mean_iou"] == pytest.approx(12 / 16)
    assert m["hd95"]["organ"] == pytest.approx(1.0) and m["mean_hd95"] == pytest.approx(1.0)
    assert m["pixel_accuracy"] == pytest.approx(96 / 100)
    empty = case_metrics(np.zeros((4, 4), int), np.zeros((4, 4), int), 2)
    assert list(empty["dice"]) == ["1"] and math.isnan(empty["mean_dice"])
    with pytest.raises(ValueError, match="class_names"):
        case_metrics(pred, ref, 3, class_names=["bg", "organ"])


# ---------------------------------------------------------------- folder evaluation


def _save_nifti(path, labels: np.ndarray, spacing: tuple[float, ...]) -> None:
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), np.diag(list(spacing) + [1.0])), str(path))


def _nifti_folders(tmp_path):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    spacing = (2.0, 1.0, 0.5)
    pairs = {}
    for i, name in enumerate(["case_a.nii.gz", "case_b.nii"]):
        ref = _cube((16, 16, 12), (3, 3, 3), 6)
        ref[10:13, 10:13, 8:11] = 2
        pred = _cube((16, 16, 12), (3 + i, 3, 3), 6)
        _save_nifti(ref_dir / name, ref, spacing)
        _save_nifti(pred_dir / name, pred, spacing)
        pairs[name] = (pred, ref)
    (pred_dir / "plans.json").write_text("{}")  # non-label files are ignored
    return pred_dir, ref_dir, pairs, spacing


def test_evaluate_nifti_folders(tmp_path) -> None:
    pred_dir, ref_dir, pairs, spacing = _nifti_folders(tmp_path)
    labels, sp, _ = read_label_file(ref_dir / "case_a.nii.gz")
    assert labels.shape == (16, 16, 12) and sp == spacing
    result = evaluate_folders(pred_dir, ref_dir, class_names=["bg", "liver", "tumour"])
    assert result["cases"] == ["case_a.nii.gz", "case_b.nii"] and result["num_classes"] == 3
    for name, (pred, ref) in pairs.items():
        expected = case_metrics(pred, ref, 3, spacing=spacing, class_names=["bg", "liver", "tumour"])
        assert result["per_case"][name]["dice"] == pytest.approx(expected["dice"])
        assert result["per_case"][name]["hd95"] == pytest.approx(expected["hd95"])
    assert result["per_case"]["case_b.nii"]["hd95"]["liver"] == pytest.approx(2.0)  # 1 voxel of 2.0
    summary = result["summary"]
    assert summary["dice"]["liver"] == pytest.approx((1.0 + 10 / 12) / 2)
    assert summary["mean_dice"] == pytest.approx(np.mean([m["mean_dice"] for m in result["per_case"].values()]))
    assert summary["dice"]["tumour"] == 0.0  # in the reference, never predicted

    default = evaluate_folders(pred_dir, ref_dir)  # num_classes from the largest reference label
    assert default["num_classes"] == 3 and list(default["summary"]["dice"]) == ["1", "2"]

    out = tmp_path / "eval" / "summary.json"
    write_evaluation(result, out)
    assert json.loads(out.read_text())["summary"]["dice"]["liver"] == pytest.approx(summary["dice"]["liver"])


def test_evaluate_png_folders(tmp_path) -> None:
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir()
    ref_dir.mkdir()
    ref = np.zeros((20, 24), dtype=np.uint8)
    ref[4:12, 4:12] = 1
    pred = np.roll(ref, 2, axis=1)
    Image.fromarray(ref).save(ref_dir / "img1.png")
    Image.fromarray(pred).save(pred_dir / "img1.png")
    Image.fromarray(np.zeros_like(ref)).save(ref_dir / "img2.png")
    Image.fromarray(np.zeros_like(ref)).save(pred_dir / "img2.png")
    result = evaluate_folders(pred_dir, ref_dir)
    assert result["num_classes"] == 2 and result["cases"] == ["img1.png", "img2.png"]
    case = result["per_case"]["img1.png"]
    assert case["dice"]["1"] == pytest.approx(2 * 48 / 128) and case["hd95"]["1"] == pytest.approx(2.0)
    assert math.isnan(result["per_case"]["img2.png"]["dice"]["1"])
    assert result["summary"]["dice"]["1"] == pytest.approx(2 * 48 / 128)  # NaN case ignored
    assert result["summary"]["pixel_accuracy"] == pytest.approx((1 - 32 / 480 + 1) / 2)
    write_evaluation(result, tmp_path / "e.json")
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["per_case"]["img2.png"]["dice"]["1"] is None  # NaN -> null


def _error(pred_dir, ref_dir, **kwargs) -> str:
    with pytest.raises(EvaluationError) as info:
        evaluate_folders(pred_dir, ref_dir, **kwargs)
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, ValueError)
    return message


def test_evaluation_errors_name_the_file(tmp_path) -> None:
    pred_dir, ref_dir, _, spacing = _nifti_folders(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    assert str(tmp_path / "nowhere") in _error(tmp_path / "nowhere", ref_dir)
    assert "no label files" in _error(pred_dir, empty) and str(empty) in _error(pred_dir, empty)

    _save_nifti(pred_dir / "extra.nii.gz", np.zeros((16, 16, 12)), spacing)
    message = _error(pred_dir, ref_dir)
    assert "predictions without reference" in message and "extra.nii.gz" in message
    (pred_dir / "extra.nii.gz").unlink()
    (pred_dir / "case_b.nii").unlink()
    message = _error(pred_dir, ref_dir)
    assert "references without prediction" in message and "case_b.nii" in message

    _save_nifti(pred_dir / "case_b.nii", np.zeros((16, 16, 11)), spacing)
    message = _error(pred_dir, ref_dir)
    assert "case_b.nii" in message and "(16, 16, 11)" in message and "does not match" in message

    (pred_dir / "case_b.nii").write_bytes(b"not a nifti file")
    message = _error(pred_dir, ref_dir)
    assert str(pred_dir / "case_b.nii") in message and "not a readable" in message

    _save_nifti(pred_dir / "case_b.nii", np.full((16, 16, 12), 5), spacing)
    message = _error(pred_dir, ref_dir)
    assert str(pred_dir / "case_b.nii") in message and "outside 0..2" in message

    png_pred, png_ref = tmp_path / "pp", tmp_path / "pr"
    png_pred.mkdir()
    png_ref.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png_ref / "x.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png_pred / "x.png")
    message = _error(png_pred, png_ref)
    assert str(png_pred / "x.png") in message and "RGB" in message
    (png_pred / "x.png").write_bytes(b"\x89PNG broken")
    assert str(png_pred / "x.png") in _error(png_pred, png_ref)
