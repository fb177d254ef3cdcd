"""Streaming whole-image prediction (nasseg.inference.large) and TIFF read tile by tile."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from nasseg.data.multires import ArrayImage, TiffImage, open_large_image
from nasseg.data.views import DataView
from nasseg.inference.large import label_format, predict_large_image, write_label_bands
from nasseg.inference.sliding_window import sliding_window_predict


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (150, 230, 3), dtype=np.uint8)


@pytest.mark.parametrize("layout", [{"tile": (64, 64), "compression": "zlib"},
                                    {"rowsperstrip": 16}])
def test_tiff_regions_read_only_what_they_touch(pixels: np.ndarray, tmp_path: Path,
                                                layout: dict) -> None:
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, pixels, photometric="rgb", **layout)
    image = open_large_image(path)
    assert isinstance(image, TiffImage) and image.size == (230, 150) and image.channels == 3
    reference = ArrayImage(pixels)
    for box in [(0, 0, 230, 150, 1), (-20, -10, 100, 90, 1), (200, 120, 64, 64, 2),
                (10, 20, 150, 100, 5)]:
        np.testing.assert_array_equal(image.read_region(*box), reference.read_region(*box))
    image._cache.clear()
    image.read_region(70, 0, 50, 20)  # one tile (or two strips) of the image
    assert len(image._cache) <= 2


def test_tiff_pyramid_levels_serve_downsamples(tmp_path: Path) -> None:
    base = np.random.default_rng(1).integers(0, 256, (256, 256), dtype=np.uint8)
    half = base.reshape(128, 2, 128, 2).mean((1, 3)).astype(np.uint8)
    path = tmp_path / "pyramid.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(base, tile=(64, 64), subifds=1)
        tif.write(half, tile=(64, 64), subfiletype=1)
    image = TiffImage(path)
    assert image.level_downsamples == (1.0, 2.0)
    np.testing.assert_array_equal(image.read_region(0, 0, 256, 256, 2)[..., 0], half)


def _fn(net: torch.nn.Module):
    return lambda batch: net(torch.cat([batch["image"], batch["context"][:, 0]], 1))


@pytest.mark.parametrize("shape", [(70, 53), (20, 53), (10, 8)])
def test_streamed_labels_equal_the_in_memory_sliding_window(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = torch.nn.Conv2d(2, 3, 5, padding=2)
    pixels = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    view = DataView(context=(3,))
    bands = list(predict_large_image(_fn(net), ArrayImage(pixels), (16, 16), 3, view,
                                     batch_size=5))
    assert all(b.shape[1] == shape[1] for b in bands)
    assert max(b.shape[0] for b in bands) <= 16  # one window high at most
    whole = torch.from_numpy(pixels[None] / np.float32(255))
    reference = sliding_window_predict(_fn(net), whole, (16, 16), view=view).argmax(0).numpy()
    np.testing.assert_array_equal(np.concatenate(bands), reference)


def test_label_maps_written_as_tiled_tiff_or_png(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Conv2d(2, 4, 3, padding=1)
    image = ArrayImage(np.random.default_rng(3).integers(0, 256, (300, 270), dtype=np.uint8))
    view = DataView(context=(2,))

    def bands():
        return predict_large_image(_fn(net), image, (32, 32), 4, view)

    tif = write_label_bands(bands(), 270, 300, tmp_path / "a", 4, fmt="tiff")
    png = write_label_bands(bands(), 270, 300, tmp_path / "a", 4)
    assert (tif.name, png.name) == ("a.tif", "a.png")
    with tifffile.TiffFile(tif) as back:
        assert back.pages[0].is_tiled and back.pages[0].shape == (300, 270)
    np.testing.assert_array_equal(tifffile.imread(tif), np.asarray(Image.open(png)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a.tif"]  # no temp files
    assert label_format(5000, 5000) == "tiff" and label_format(4000, 4000) == "png"
    with pytest.raises(ValueError, match="unknown label format"):
        label_format(10, 10, "jpeg")


def test_evaluate_reads_tiled_tiff_label_maps(tmp_path: Path) -> None:
    """The label maps streaming prediction writes above the PNG limit are scored like PNGs."""
    from nasseg.evaluation.folders import evaluate_folders

    rng = np.random.default_rng(0)
    ref = rng.integers(0, 3, (300, 270)).astype(np.uint8)
    pred = ref.copy()
    pred[:30] = 0
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    write_label_bands([pred[:150], pred[150:]], 270, 300, tmp_path / "pred" / "s", 3, fmt="tiff")
    Image.fromarray(ref).save(tmp_path / "ref" / "s.png")
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "ref", 3)["per_case"]["s.png"]
    tp = ((pred == 1) & (ref == 1)).sum()
    assert summary["dice"]["1"] == pytest.approx(2 * tp / ((pred == 1).sum() + (ref == 1).sum()))
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    from nasseg.data import DataError
    from nasseg.data.formats import read_label_file

    with pytest.raises(DataError, match="broken.tif: not a readable TIFF"):
        read_label_file(tmp_path / "broken.tif")
