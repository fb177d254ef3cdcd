"""Tests for DiceCELoss (nasseg.losses) and the Dice metrics (nasseg.evaluation.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nasseg.evaluation.metrics import DiceAccumulator, chance_dice
from nasseg.losses import DiceCELoss


def _onehot_logits(labels: torch.Tensor, num_classes: int, scale: float = 10.0) -> torch.Tensor:
    return F.one_hot(labels, num_classes).movedim(-1, 1).float() * scale


# ---------------------------------------------------------------- DiceAccumulator


def test_dice_perfect_and_disjoint() -> None:
    ref = torch.tensor([[[0, 1, 1], [2, 2, 0]]])
    acc = DiceAccumulator(3)
    acc.update(ref, ref)
    assert acc.per_class() == [1.0, 1.0] and acc.mean() == 1.0

    acc = DiceAccumulator(3)
    acc.update(torch.tensor([[[1, 0, 0], [0, 0, 2]]]), ref)
    assert acc.per_class() == [0.0, 0.0] and acc.mean() == 0.0


def test_dice_partial_overlap_and_absent_class() -> None:
    ref = np.array([[1, 1, 1, 1, 0, 0]])
    pred = np.array([[0, 0, 1, 1, 0, 0]])
    acc = DiceAccumulator(3)
    acc.update(pred, ref)
    scores = acc.per_class()
    assert scores[0] == pytest.approx(2 * 2 / (2 + 4))
    assert math.isnan(scores[1])  # class 2 absent from both
    assert acc.mean() == pytest.approx(2 / 3)


def test_dice_all_absent_mean_zero() -> None:
    acc = DiceAccumulator(3)
    acc.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long))
    assert all(math.isnan(s) for s in acc.per_class()) and acc.mean() == 0.0


def test_dice_logits_match_labels_and_accumulate_globally() -> None:
    gen = torch.Generator().manual_seed(0)
    ref = torch.randint(0, 3, (4, 5, 6, 7), generator=gen)
    logits = torch.randn(4, 3, 5, 6, 7, generator=gen)
    from_logits = DiceAccumulator(3)
    from_logits.update(logits, ref)
    from_labels = DiceAccumulator(3)
    for i in range(4):  # batch by batch: counts add up, no per-batch averaging
        from_labels.update(logits[i : i + 1].argmax(1), ref[i : i + 1])
    assert from_logits.per_class() == pytest.approx(from_labels.per_class())
    pred = logits.argmax(1)
    for c, score in zip((1, 2), from_logits.per_class()):
        tp = ((pred == c) & (ref == c)).sum().item()
        assert score == pytest.approx(2 * tp / ((pred == c).sum().item() + (ref == c).sum().item()))
    from_logits.reset()
    assert from_logits.mean() == 0.0


def test_dice_rejects_bad_input() -> None:
    acc = DiceAccumulator(2)
    with pytest.raises(ValueError, match="does not match"):
        acc.update(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="outside"):
        acc.update(torch.full((1, 4), 2), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="logits shape"):
        acc.update(torch.zeros(1, 3, 4), torch.zeros(1, 4, dtype=torch.long))


# ---------------------------------------------------------------- chance_dice


def test_chance_dice_value() -> None:
    labels = np.array([[0, 0, 1, 1, 1], [2, 0, 0, 0, 0]])
    # p1 = 0.3, p2 = 0.1; class 3 never occurs and is ignored.
    assert chance_dice(labels, 4) == pytest.approx(0.2)
    assert chance_dice(np.zeros((3, 3), np.int64), 3) == 0.0
    with pytest.raises(ValueError):
        chance_dice(labels, 2)


def test_chance_dice_matches_random_predictor() -> None:
    rng = np.random.default_rng(0)
    freqs = np.array([0.7, 0.2, 0.1])
    labels = rng.choice(3, size=(4, 64, 64, 16), p=freqs)
    pred = rng.choice(3, size=labels.shape, p=freqs)
    acc = DiceAccumulator(3)
    acc.update(pred, labels)
    assert acc.mean() == pytest.approx(chance_dice(labels, 3), abs=0.01)


# ---------------------------------------------------------------- DiceCELoss


@pytest.mark.parametrize("spatial", [(8, 8), (4, 5, 6)])
def test_loss_decreases_toward_target(spatial: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (2, *spatial), generator=gen)
    noise = torch.randn(2, 3, *spatial, generator=gen)
    goal = _onehot_logits(target, 3)
    loss_fn = DiceCELoss()
    values = [loss_fn(noise + t * (goal - noise), target).item() for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(math.isfinite(v) for v in values)
    assert all(a > b for a, b in zip(values, values[1:]))
    assert values[-1] < 0.01


def test_loss_gradient_steps_reduce_loss() -> None:
    gen = torch.Generator().manual_seed(1)
    target = torch.randint(0, 2, (2, 6, 6, 6), generator=gen)
    logits = torch.randn(2, 2, 6, 6, 6, generator=gen, requires_grad=True)
    loss_fn = DiceCELoss()
    start = loss_fn(logits, target).item()
    opt = torch.optim.SGD([logits], lr=50.0)
    for _ in range(20):
        opt.zero_grad()
        loss = loss_fn(logits, target)
        loss.backward()
        opt.step()
    assert torch.isfinite(logits.grad).all()
    assert loss_fn(logits, target).item() < 0.5 * start


def test_loss_components_and_weights() -> None:
    target = torch.tensor([[[0, 1], [1, 2]]])
    logits = torch.tensor([[[[2.0, 0.0], [0.0, 1.0]], [[0.0, 3.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 2.0]]]])
    ce = F.cross_entropy(logits, target)
    probs = logits.softmax(1)
    dices = []
    for c in (1, 2):
        p, g = probs[:, c], (target == c).float()
        dices.append((2 * (p * g).sum() + 1e-5) / (p.sum() + g.sum() + 1e-5))
    dice_loss = 1 - sum(dices) / 2
    assert DiceCELoss()(logits, target).item() == pytest.approx((ce + dice_loss).item(), rel=1e-6)
    assert DiceCELoss(dice_weight=0)(logits, target).item() == pytest.approx(ce.item(), rel=1e-6)
    assert DiceCELoss(ce_weight=0, dice_weight=2)(logits, target).item() == pytest.approx(
        2 * dice_loss.item(), rel=1e-6
    )


def test_loss_absent_class_finite_and_shape_check() -> None:
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    value = DiceCELoss()(torch.zeros(1, 3, 4, 4), target)
    assert torch.isfinite(value)
    with pytest.raises(ValueError, match="does not match"):
        DiceCELoss()(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
