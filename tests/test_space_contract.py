"""Every registered space honours the method contract, in every registered relaxation: one
architecture step and one weight step move their parameters; eval outputs ignore the label;
training-only modules stay out of counts and exports."""
from __future__ import annotations

import pytest
import torch

import nasseg.searches.darts  # noqa: F401  (registers every relaxation)
from nasseg.artifacts.run_folder import RunFolder
from nasseg.data import load_data
from nasseg.derive import count_parameters
from nasseg.derive.cost import is_under
from nasseg.export import inference_network
from nasseg.searches.darts import SearchConfig
from nasseg.searches.darts.engine import DartsSearch
from nasseg.searches.darts.relaxation import RELAXATIONS
from nasseg.ops import ConvNormAct, OutputHead
from nasseg.space import SearchSpace, create_space, get_space_class, list_spaces

ARGS = {"in_channels": 1, "num_classes": 3, "features": 4}


def _dims(name: str) -> int:
    dims = get_space_class(name).supported_dims
    return 2 if 2 in dims else dims[0]


@pytest.mark.parametrize("mode", sorted(RELAXATIONS))
@pytest.mark.parametrize("name", list_spaces())
def test_every_space_takes_an_architecture_and_a_weight_step_in_every_mode(
        name, mode, small2d, tmp_path):
    if _dims(name) != 2:
        pytest.skip(f"{name} does not run on the 2D test set")
    data = load_data(str(small2d))
    space = create_space(name, spatial_dims=2, **ARGS)
    engine = DartsSearch(space, data, RunFolder(tmp_path), SearchConfig(
        epochs=len(space.training_stages()), warmup_epochs=0, mode=mode, device="cpu",
        arch_lr=0.05), show_progress=False)
    weight_loader, arch_loader, _ = engine.stage_loaders(engine.schedule[0])
    wb, ab = next(weight_loader.epoch(0)), next(arch_loader.epoch(0))
    engine.staged.enter(engine.schedule[0], 0.01)
    engine.staged.train_mode()
    arch_before = [p.detach().clone() for p in engine.arch_params]
    weights_before = [p.detach().clone() for p in engine.weights]
    engine._arch_step(ab, wb, 0, 0)
    assert all(p.grad is not None for p in engine.arch_params)
    assert any(not torch.equal(a, p) for a, p in zip(arch_before, engine.arch_params))
    assert all(torch.equal(w, p) for w, p in zip(weights_before, engine.weights)), \
        "the architecture step must leave the weights alone"
    engine._weight_step(wb, 0, 0)
    assert any(not torch.equal(w, p) for w, p in zip(weights_before, engine.weights))


@pytest.mark.parametrize("name", list_spaces())
def test_eval_outputs_ignore_the_label_and_counts_skip_training_only_modules(name):
    dims = _dims(name)
    space = create_space(name, spatial_dims=dims, **ARGS)
    net = space.freeze(space.default_sample()).eval()
    shape = (24,) * dims
    batch = {k: torch.randn_like(v) for k, v in net.example_batch(shape, 1).items()}
    with torch.no_grad():
        plain = net.segmentation(net.forward_batch(batch))
        labelled = net.segmentation(net.forward_batch(
            {**batch, "label": torch.randint(0, 3, (1, *shape))}))
    assert torch.equal(plain, labelled)
    skip = net.training_only()
    assert count_parameters(net) == sum(p.numel() for n, p in net.named_parameters()
                                        if not is_under(n, skip))
    exported = inference_network(net)
    assert not any(is_under(n, skip) for n, _ in exported.named_parameters())


class _GradientInForward(SearchSpace):
    """Takes the gradient of its own output layer's loss inside its forward (as MSN's meta
    fusion learner does), in every mode of the engine: weight step, architecture step and
    validation (no_grad outside)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 3, spatial_dims: int = 2,
                 features: int = 4) -> None:
        super().__init__()
        self.fixed_edge("input", "out")
        self.set_outputs("out")
        self.body = self.op_choice("body", {
            "k3": lambda: ConvNormAct(spatial_dims, in_channels, features, kernel=3),
            "k1": lambda: ConvNormAct(spatial_dims, in_channels, features, kernel=1)})
        self.head = OutputHead(spatial_dims, features, num_classes)
        self.seen_gradients: list[float] = []

    def forward_batch(self, batch):
        x = self.body(batch["image"])
        logits = self.head(x)
        with torch.enable_grad():
            weight = self.head.conv.weight.detach().requires_grad_()
            probe = torch.nn.functional.conv2d(x.detach(), weight).pow(2).mean()
            (grad,) = torch.autograd.grad(probe, weight)
        self.seen_gradients.append(float(grad.abs().sum()))
        return logits + 0 * grad.sum()


def test_a_space_may_take_gradients_inside_its_forward(small2d, tmp_path):
    data = load_data(str(small2d))
    space = _GradientInForward()
    engine = DartsSearch(space, data, RunFolder(tmp_path), SearchConfig(
        epochs=1, warmup_epochs=0, device="cpu", arch_lr=0.05, steps_per_epoch=2),
        show_progress=False)
    engine.run()
    assert engine.cost.steps["arch"] > 0 and engine.cost.steps["weight"] > 0
    assert len(space.seen_gradients) > 2 * engine.cost.steps["weight"]
    assert all(g > 0 for g in space.seen_gradients)
