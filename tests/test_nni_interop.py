"""NNI 3.0's own DARTS strategy runs on nasseg spaces through nasseg.searches.nni.run_nni_darts."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nasseg.searches.nni import run_nni_darts
from nasseg.space import SearchSpace, create_space

UNET_ARGS = {"in_channels": 1, "num_classes": 2, "spatial_dims": 2, "features": 4, "levels": 2}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions: with two OpenMP threads on a busy 2-core machine a step can take 100x
    longer than with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(n: int = 8, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 1, size, size, generator=g)
    labels = (images[:, 0] > 0.5).long()
    return images, labels


@pytest.mark.parametrize("connections", ["nni", "sigmoid"])
def test_nni_darts_searches_unet_and_sample_freezes(connections):
    space = create_space("unet", **UNET_ARGS)
    before = {k: repr(v) for k, v in space.simplify().items()}
    images, labels = _data()
    result = run_nni_darts(space, (images[:4], labels[:4]), (images[4:], labels[4:]), epochs=2,
                           batch_size=2, connections=connections, seed=0, accelerator="cpu")

    sample = result["sample"]
    searched = {label: info for label, info in space.choice_infos.items() if info.kind != "knob"}
    assert set(searched) <= set(sample)  # every op and connection label is exported
    for label, info in searched.items():
        if info.kind == "op":
            assert sample[label] in info.candidates
            assert math.isclose(sum(result["probs"][label].values()), 1.0, rel_tol=1e-5)
        else:
            assert all(isinstance(i, int) and 0 <= i < len(info.candidates) for i in sample[label])
    if connections == "nni":  # NNI's mixed input keeps exactly one input of each connection
        assert all(len(sample[label]) == 1 for label, info in searched.items()
                   if info.kind == "connection")

    net = space.freeze(sample)
    assert not net.simplify()
    out = net.segmentation(net(images))
    assert out.shape == (8, 2, 16, 16)
    assert torch.isfinite(out).all()

    assert len(result["train_loss"]) == len(result["arch_loss"]) == 2
    assert all(math.isfinite(v) for v in result["train_loss"] + result["arch_loss"])
    assert result["connections"] == connections and result["seconds"] > 0
    # The caller's space is left searchable (NNI mutated a copy).
    assert {k: repr(v) for k, v in space.simplify().items()} == before


class _TwoInputSpace(SearchSpace):
    """One op choice feeding a two-candidate connection (the unet's skips have one candidate)."""

    def __init__(self, channels: int = 2) -> None:
        super().__init__()
        self.fixed_edge("input", "a")
        self.fixed_edge("input", "b")
        self.mix = self.connection_choice("mix", "out", ["a", "b"])
        self.set_outputs("out")
        self.a = self.op_choice("a_op", {"c1": lambda: nn.Conv2d(1, channels, 1),
                                         "c3": lambda: nn.Conv2d(1, channels, 3, padding=1)},
                                node="a")
        self.b = nn.Conv2d(1, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix([self.a(x), self.b(x)])


@pytest.mark.parametrize("connections,start", [("nni", 0.5), ("sigmoid", 0.5)])
def test_connection_weights_are_trained(connections, start):
    """Guards the bridge's forwarding of NNI's mixed input: nasseg's Connection sums its inputs
    itself when its choice is an InputChoice, which NNI's DifferentiableMixedInput is."""
    torch.manual_seed(0)
    space = _TwoInputSpace()
    images, labels = _data()
    result = run_nni_darts(space, (images[:4], labels[:4]), (images[4:], labels[4:]), epochs=3,
                           arc_learning_rate=0.1, connections=connections, seed=0,
                           accelerator="cpu")
    weights = result["probs"]["mix"]
    assert set(weights) == {0, 1}
    assert max(abs(w - start) for w in weights.values()) > 0.01
    if connections == "nni":
        assert len(result["sample"]["mix"]) == 1


def test_bad_arguments_are_refused():
    space = create_space("unet", **UNET_ARGS)
    data = _data(4)
    with pytest.raises(ValueError, match="connections"):
        run_nni_darts(space, data, data, connections="gumbel")
    with pytest.raises(ValueError, match="epochs"):
        run_nni_darts(space, data, data, epochs=0)
    with pytest.raises(ValueError, match="frozen"):
        run_nni_darts(space.freeze(space.default_sample()), data, data)
