"""The anatomy benchmark's data set maker, on a stand-in template (a white-matter ball in a
grey-matter shell): cases are deterministic, posed differently, labelled by tissue, and written
as a folder nasseg reads; without nilearn it says what to install."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import mni_tissue_set  # noqa: E402

from nasseg.data.source import verified_folder  # noqa: E402


def _ball_template() -> torch.Tensor:
    axis = torch.arange(96, dtype=torch.float32) - 47.5
    radius = torch.sqrt(sum(a ** 2 for a in torch.meshgrid(axis, axis, axis, indexing="ij")))
    white = (radius < 18).float()
    grey = ((radius >= 18) & (radius < 30)).float()
    return torch.stack([214 * white + 166 * grey, grey, white])


@pytest.fixture
def template(monkeypatch):
    volumes = _ball_template()
    monkeypatch.setattr(mni_tissue_set, "load_template", lambda: volumes)
    return volumes


def test_cases_are_repeatable_distinct_and_labelled_by_tissue(template):
    brain = torch.nonzero(template[1] + template[2] > 0.5)
    image, label = mni_tissue_set.make_case(template, brain, 0, 3)
    again, _ = mni_tissue_set.make_case(template, brain, 0, 3)
    other, _ = mni_tissue_set.make_case(template, brain, 0, 4)
    assert image.shape == label.shape == (32, 32, 32)
    assert np.array_equal(image, again)
    assert not np.allclose(image, other)
    assert set(np.unique(label)) <= {0, 1, 2}
    # each tissue keeps its brightness under the bias field, gamma and noise
    means = [image[label == c].mean() for c in range(3) if (label == c).any()]
    assert means == sorted(means) and len(means) >= 2


def test_written_set_is_a_folder_nasseg_reads(template, tmp_path):
    mni_tissue_set.write_set(tmp_path / "set", 3, seed=1)
    data = verified_folder(tmp_path / "set")
    assert len(data.cases) == 3
    assert data.class_names == ["background", "grey_matter", "white_matter"]


def test_without_nilearn_it_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nilearn", None)
    with pytest.raises(SystemExit, match="pip install nilearn"):
        mni_tissue_set.load_template()
