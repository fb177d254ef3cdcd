"""``nasseg predict``: segment new images with a trained network, back on their original grid.

Each input case is preprocessed as the training data was (crop to non-zero, resample to the
training spacing, normalise by channel kind with the training set's statistics), predicted by
Gaussian-weighted sliding windows at the training patch size, then resampled and un-cropped
onto the source grid. A network trained on large images (``PredictionPlan.large_images``) reads
its inputs -- big PNG/TIFF files or whole-slide pyramids -- window by window instead
(:mod:`nasseg.inference.large`) and writes PNG, or tiled TIFF when the image is too big for
PNG. NIfTI outputs carry the input's affine and header (qform and sform with
their codes) and integer labels (uint8, or uint16 beyond 255 classes); 2D outputs are PNG. Each
file is written to a temporary name, checked by reading it back, then renamed.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from nasseg.artifacts.files import atomic_path
from nasseg.data import CaseSet, DataError
from nasseg.data.views import PATCH_VIEW, DataView
from nasseg.data.formats import SUPPORTED_ENDINGS, RawCase, RawDataset, read_spacing
from nasseg.data.preprocess import CTStats, normalise, prepare_case, restore_label
from nasseg.export import load_trained
from nasseg.data.multires import SLIDE_SUFFIXES, open_large_image
from nasseg.inference.large import predict_large_image, write_label_bands
from nasseg.inference.postprocess import remove_small_components
from nasseg.inference.sliding_window import network_predict_fn, sliding_window_predict
from nasseg.runtime.device import resolve_device

__all__ = ["PredictionPlan", "discover_inputs", "discover_large_images", "predict_case",
           "predict_path", "write_label"]

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class PredictionPlan:
    """How inputs are prepared: what the training data went through.

    A training folder carries it (``plan.json``, and inside ``model.pt``), so prediction runs
    where the training data is absent.
    """

    channel_kinds: list[str]
    target_spacing: tuple[float, ...] | None  # None: keep each input's own spacing
    ct_stats: dict[int, CTStats]
    patch_size: tuple[int, ...]
    class_names: list[str]
    view: DataView = PATCH_VIEW
    large_images: bool = False  # inputs are large 2D images, read region by region
    #: per class, components smaller than this many voxels are removed (decided after training)
    min_component: dict[int, int] = field(default_factory=dict)

    @classmethod
    def from_data(cls, data: CaseSet, patch_size: Sequence[int] | None = None,
                  view: DataView = PATCH_VIEW) -> "PredictionPlan":
        """The plan of a loaded training set (demo sets: z-score, no resampling)."""
        kinds = getattr(data, "channel_kinds", None) or ["image"] * data.in_channels
        ct = {int(c): CTStats(**s) for c, s in (getattr(data, "ct_stats", None) or {}).items()}
        spacing = getattr(data, "target_spacing", None)
        return cls(list(kinds), None if spacing is None else tuple(float(v) for v in spacing),
                   ct, tuple(patch_size or data.patch_size), list(data.class_names), view,
                   hasattr(data, "read_context"))

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``plan.json``)."""
        return {"channel_kinds": self.channel_kinds,
                "target_spacing": None if self.target_spacing is None else list(self.target_spacing),
                "ct_stats": {str(c): asdict(s) for c, s in self.ct_stats.items()},
                "patch_size": list(self.patch_size), "class_names": self.class_names,
                "view": self.view.to_dict(), "large_images": self.large_images,
                "min_component_voxels": {str(c): n for c, n in self.min_component.items()}}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PredictionPlan":
        """Read :meth:`to_dict`'s form."""
        spacing = values["target_spacing"]
        return cls(list(values["channel_kinds"]),
                   None if spacing is None else tuple(float(v) for v in spacing),
                   {int(c): CTStats(**s) for c, s in values["ct_stats"].items()},
                   tuple(int(p) for p in values["patch_size"]), list(values["class_names"]),
                   DataView.from_dict(values.get("view")), bool(values.get("large_images", False)),
                   {int(c): int(n) for c, n in values.get("min_component_voxels", {}).items()})


def _ending(path: Path) -> str:
    for ending in SUPPORTED_ENDINGS:
        if path.name.endswith(ending):
            return ending
    return ""


def discover_inputs(path: str | Path) -> list[RawCase]:
    """Input cases: one file, or a folder of files grouped by case (``CASE_0000.nii.gz``...)."""
    path = Path(path)
    if path.is_file():
        if not _ending(path):
            raise DataError(f"{path}: not an image file ({', '.join(SUPPORTED_ENDINGS)})")
        return [RawCase(path.name[: -len(_ending(path))], [path], None)]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    groups: dict[str, list[tuple[int, Path]]] = {}
    for file in sorted(path.iterdir()):
        ending = _ending(file)
        if not ending or file.name.startswith("."):
            continue
        stem = file.name[: -len(ending)]
        match = _CHANNEL.match(stem)
        case, channel = (match["case"], int(match["channel"])) if match else (stem, 0)
        groups.setdefault(case, []).append((channel, file))
    if not groups:
        raise DataError(f"{path}: no image files ({', '.join(SUPPORTED_ENDINGS)}) found")
    return [RawCase(case, [f for _, f in sorted(files)], None) for case, files in groups.items()]


def write_label(label: np.ndarray, target: Path, source: Path) -> Path:
    """Write ``label`` to ``target`` atomically, as NIfTI with ``source``'s affine and header or as
    PNG, and read it back to check it before it takes the final name."""
    dtype = np.uint8 if label.max(initial=0) < 256 else np.uint16
    label = label.astype(dtype)
    ending = _ending(target)
    with atomic_path(target, suffix=ending) as tmp:
        if ending == ".png":
            from PIL import Image

            Image.fromarray(label).save(tmp, format="PNG")
            written = np.asarray(Image.open(tmp))
            affine_ok = True
        else:
            import nibabel as nib

            src = nib.load(str(source))
            header = src.header.copy()
            out = nib.Nifti1Image(label, src.affine, header=header)
            out.set_data_dtype(dtype)
            out.header.set_slope_inter(1.0, 0.0)
            out.set_qform(src.get_qform(), code=int(src.header["qform_code"]))
            out.set_sform(src.get_sform(), code=int(src.header["sform_code"]))
            nib.save(out, str(tmp))
            back = nib.load(str(tmp))
            written = np.asarray(back.dataobj)
            affine_ok = np.allclose(back.affine, src.affine, atol=1e-4)
        if written.shape != label.shape or written.dtype != dtype or not affine_ok \
                or not np.array_equal(written, label):
            raise DataError(f"{target}: the written file does not read back as written")
    return target


def discover_large_images(path: str | Path) -> list[Path]:
    """Large-image inputs: one file, or every image file of a folder (PNG, JPEG, TIFF, slides)."""
    path = Path(path)
    endings = set(SLIDE_SUFFIXES) | {".png", ".jpg", ".jpeg", ".bmp"}
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    files = sorted(f for f in path.iterdir()
                   if f.suffix.lower() in endings and not f.name.startswith("."))
    if not files:
        raise DataError(f"{path}: no image files ({', '.join(sorted(endings))}) found")
    return files


def _predict_large(model: Any, plan: PredictionPlan, inputs: str | Path, out_dir: Path,
                   overlap: float, mirror: bool, dev: torch.device, fmt: str,
                   progress: Callable[[str], None] | None) -> list[Path]:
    """Stream every large image under ``inputs`` through the network into ``out_dir``."""
    written = []
    for file in discover_large_images(inputs):
        with open_large_image(file) as image:
            if image.channels != len(plan.channel_kinds):
                raise DataError(f"{file}: {image.channels} channel(s), the network takes "
                                f"{len(plan.channel_kinds)}")
            bands = predict_large_image(network_predict_fn(model), image, plan.patch_size,
                                        len(plan.class_names), plan.view, overlap, mirror,
                                        device=dev)
            width, height = image.size
            target = write_label_bands(bands, width, height, out_dir / file.stem,
                                       len(plan.class_names), fmt)
        written.append(target)
        if progress:
            progress(f"{file.stem}: {target}")
    return written


def predict_case(model: Any, plan: PredictionPlan, raw: RawCase, folder: Path,
                 overlap: float = 0.5, mirror: bool = False,
                 device: torch.device | str = "cpu") -> np.ndarray:
    """The label map of one input case on its own grid: preprocessed as the training data was
    (``plan``), segmented by sliding window with ``model`` (in eval mode, on ``device``) and put
    back where the crop and resampling took it from, less the small components the training
    decided to remove (``plan.min_component``)."""
    n = len(raw.image_files)
    if n not in (1, len(plan.channel_kinds)):  # one file per channel, or one multi-channel file
        raise DataError(f"{raw.image_files[0]}: case {raw.case_id} has {n} channel file(s), "
                        f"the network takes {len(plan.channel_kinds)}")
    ds = RawDataset(name="predict", folder=folder, format="nnunetv2",
                    class_names=plan.class_names, channel_kinds=plan.channel_kinds,
                    spatial_dims=len(plan.patch_size), file_ending=_ending(raw.image_files[0]),
                    cases=[raw])
    spacing = plan.target_spacing or read_spacing(raw)
    prepared = prepare_case(ds, raw, spacing)
    image, _ = normalise(prepared.image, plan.channel_kinds, plan.ct_stats)
    probs = sliding_window_predict(network_predict_fn(model), torch.from_numpy(image).to(device),
                                   plan.patch_size, overlap=overlap, mirror=mirror,
                                   view=model.data_view())
    label = probs.argmax(0).cpu().numpy().astype(np.int64)
    return restore_label(remove_small_components(label, plan.min_component), prepared.meta)


def predict_path(trained: str | Path, inputs: str | Path, output: str | Path, overlap: float = 0.5,
                 mirror: bool = False, device: str = "auto",
                 progress: Callable[[str], None] | None = None,
                 label_format: str = "auto") -> list[Path]:
    """Segment every case under ``inputs`` with the network of ``trained``; return the files.

    ``label_format`` (``auto``, ``png``, ``tiff``) applies to networks trained on large images.
    """
    model, state = load_trained(trained)
    if "plan" not in state:
        raise DataError(f"{trained}: the trained model carries no preprocessing plan; retrain "
                        "it with this version of nasseg")
    plan = PredictionPlan.from_dict(state["plan"])
    dev = resolve_device(device)
    model.to(dev)
    if plan.large_images:
        out_dir = Path(output)
        out_dir.mkdir(parents=True, exist_ok=True)
        return _predict_large(model, plan, inputs, out_dir, overlap, mirror, dev, label_format,
                              progress)
    cases = discover_inputs(inputs)
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(inputs) if Path(inputs).is_dir() else Path(inputs).parent
    written = []
    for raw in cases:
        label = predict_case(model, plan, raw, folder, overlap, mirror, dev)
        target = out_dir / f"{raw.case_id}{_ending(raw.image_files[0])}"
        written.append(write_label(label, target, raw.image_files[0]))
        if progress:
            progress(f"{raw.case_id}: {target}")
    return written
