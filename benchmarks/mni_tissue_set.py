"""Write a 3D data set of real brain anatomy: grey and white matter in crops of the MNI152 template.

    pip install nilearn          # it carries the template and its tissue maps in its wheel
    python benchmarks/mni_tissue_set.py --out bench/mni_tissue --cases 100
    python benchmarks/search_quality.py --data bench/mni_tissue --test-fraction 0.68

The image is the ICBM 2009a symmetric T1 template (an average of 152 adult brains, skull
stripped, 1 mm) and the labels are its grey- and white-matter probability maps, each voxel
given the most probable of background/CSF, grey and white matter. A case is a 64 mm cube of
it, centred on a random point of the brain, moved as a scan would move it (a rotation up to
10 degrees about each axis, a scale of 0.9-1.1, a smooth random displacement of a few mm),
sampled at 2 mm (32^3 voxels: partial volumes at the tissue borders), then given a smooth
multiplicative bias field, a gamma change of contrast and Rician noise, as MR images have.

What this is and is not: real anatomical shapes (the folded grey-matter ribbon, thin at 2 mm,
beside white matter about two noise widths brighter) with the
intensity problems of MR, but ONE template: the cases differ by position, pose, deformation
and acquisition, not by patient. It tests a search on anatomy, not generalisation across
people. Cases are deterministic in ``--seed`` and their index, and written as an nnU-Net v2
raw folder (``imagesTr/mni_NNNN_0000.nii.gz``, ``labelsTr/mni_NNNN.nii.gz``);
``dataset.json`` comes last, so an interrupted run leaves no folder that reads as a set.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from nasseg.artifacts.files import write_json

#: The template files in nilearn's package data.
TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
CLASSES = {"background": 0, "grey_matter": 1, "white_matter": 2}
CROP_MM = 64
SPACING_MM = 2


def load_template() -> torch.Tensor:
    """T1 (0-255), grey- and white-matter probability (0-1) as one (3, X, Y, Z) float tensor."""
    try:
        import nilearn
    except ImportError as error:
        raise SystemExit("mni_tissue_set: needs nilearn, whose wheel carries the MNI152 "
                         "template (pip install nilearn)") from error
    folder = Path(nilearn.__file__).parent / "datasets" / "data"
    volumes = [np.asarray(nib.load(folder / TEMPLATE.format(kind)).dataobj, dtype=np.float32)
               for kind in ("t1", "gm", "wm")]
    volumes[1] /= 255.0
    volumes[2] /= 255.0
    return torch.from_numpy(np.stack(volumes))


def _smooth_field(generator: torch.Generator, channels: int, coarse: int, size: int,
                  scale: float) -> torch.Tensor:
    """A smooth random field: Gaussian values on a coarse grid, upsampled trilinearly."""
    field = torch.randn(1, channels, coarse, coarse, coarse, generator=generator) * scale
    return F.interpolate(field, size=(size,) * 3, mode="trilinear", align_corners=True)[0]


def _rotation(angles: np.ndarray) -> torch.Tensor:
    """The rotation by ``angles`` (radians) about the three axes in turn."""
    matrix = torch.eye(3, dtype=torch.float64)
    for axis, angle in enumerate(angles):
        c, s = math.cos(angle), math.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        turn = torch.eye(3, dtype=torch.float64)
        turn[i, i], turn[i, j], turn[j, i], turn[j, j] = c, -s, s, c
        matrix = turn @ matrix
    return matrix.float()


def make_case(template: torch.Tensor, brain: torch.Tensor, seed: int, index: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Case ``index``: a (32, 32, 32) float32 image and uint8 label at 2 mm."""
    rng = np.random.default_rng([seed, index])
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    centre = brain[int(rng.integers(len(brain)))].float()
    size = CROP_MM  # sampled at 1 mm, then averaged down to 2 mm
    axis = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    offsets = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    transform = _rotation(rng.uniform(-1, 1, 3) * math.radians(10)) * rng.uniform(0.9, 1.1)
    displacement = _smooth_field(generator, 3, 5, size, 3.0).permute(1, 2, 3, 0)
    source = offsets @ transform.T + centre + displacement  # template voxel coordinates
    shape = torch.tensor(template.shape[1:], dtype=torch.float32)
    grid = (2 * source / (shape - 1) - 1).flip(-1)  # grid_sample wants (z, y, x) order
    sampled = F.grid_sample(template[None], grid[None], mode="bilinear",
                            padding_mode="zeros", align_corners=True)
    coarse = F.avg_pool3d(sampled, SPACING_MM)[0]  # partial volumes at 2 mm
    t1, grey, white = coarse
    label = torch.stack([(1 - grey - white).clamp(min=0), grey, white]).argmax(0)
    n = coarse.shape[-1]
    bias = torch.exp(_smooth_field(generator, 1, 4, n, rng.uniform(0.1, 0.25))[0])
    image = 255 * (t1 * bias / 255).clamp(min=0) ** rng.uniform(0.8, 1.25)
    noise = rng.uniform(6.0, 18.0)
    real = image + noise * torch.randn(image.shape, generator=generator)
    imaginary = noise * torch.randn(image.shape, generator=generator)
    image = torch.sqrt(real ** 2 + imaginary ** 2)
    return image.numpy().astype(np.float32), label.numpy().astype(np.uint8)


def write_set(out: Path, cases: int, seed: int) -> None:
    """Write ``cases`` cases and ``dataset.json`` under ``out`` (nnU-Net v2 raw layout)."""
    template = load_template()
    brain = torch.nonzero(template[1] + template[2] > 0.5)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(exist_ok=True)
    affine = np.diag([SPACING_MM] * 3 + [1]).astype(float)
    for index in range(cases):
        image, label = make_case(template, brain, seed, index)
        case = f"mni_{index:04d}"
        nib.save(nib.Nifti1Image(image, affine), out / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), out / "labelsTr" / f"{case}.nii.gz")
    dataset = {"name": "MNI152 tissue crops", "channel_names": {"0": "T1"}, "labels": CLASSES,
               "numTraining": cases, "file_ending": ".nii.gz",
               "description": f"{CROP_MM} mm crops of the ICBM 2009a symmetric template at "
                              f"{SPACING_MM} mm, randomly posed, deformed, bias-fielded and "
                              f"noised (seed {seed}); labels from its tissue probability maps",
               "reference": "Fonov et al., NeuroImage 2011 (MNI ICBM152 2009a), as packaged "
                            "by nilearn"}
    write_json(out / "dataset.json", dataset)
    print(json.dumps({"written": str(out), "cases": cases}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/mni_tissue"))
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_set(args.out, args.cases, args.seed)


if __name__ == "__main__":
    main()
