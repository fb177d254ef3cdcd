"""Path dropout: train the supernet's weights with random connection inputs switched off.

The removal selection (:mod:`nasseg.searches.darts.selection`) judges each input by the Dice
the trained supernet loses without it. In a supernet whose weights always saw every input, the
paths co-adapt: a node may come to rely on whichever input happened to learn first, and the
supernet with one input switched off is a network its weights never met. Bender et al. (ICML
2018, "Understanding and simplifying one-shot architecture search") found that a one-shot
model's accuracy with parts removed predicts those sub-networks' own accuracy only when such
parts were dropped at random while it trained, at a rate raised linearly over training.

Here each input of a connection with several candidates is dropped, in a weight step, with
probability :func:`dropout_rate` (0 in the first epoch, ``rate`` in the last); a connection
always keeps one of its inputs. The architecture steps and the validation see the whole
supernet. A draw depends only on (seed, epoch, step, rank), so a resumed search draws the same.
"""
from __future__ import annotations

import random

from nasseg.searches.darts.relaxation import ArchParameters, Edge

__all__ = ["dropout_rate", "dropped_inputs"]


def dropout_rate(rate: float, epoch: int, epochs: int) -> float:
    """The drop probability of an input in ``epoch`` (0-based) of ``epochs``: linear from 0 in
    the first epoch to ``rate`` in the last."""
    return rate * epoch / (epochs - 1) if epochs > 1 else rate


def dropped_inputs(arch: ArchParameters, rate: float, key: str) -> list[Edge]:
    """The inputs to switch off in one weight step: each input that is still on, of a
    connection with several, with probability ``rate``; of a connection that would lose every
    input, one drawn input stays on. ``key`` seeds the draw (e.g. ``"seed/epoch/step/rank"``)."""
    if rate <= 0:
        return []
    rng = random.Random(key)
    edges: list[Edge] = []
    for label, n in arch.connection_sizes.items():
        on = [i for i in range(n) if i not in arch.removed.get(label, ())]
        if len(on) < 2:
            continue
        drop = [i for i in on if rng.random() < rate]
        if len(drop) == len(on):
            drop.remove(rng.choice(drop))
        edges.extend((label, i) for i in drop)
    return edges
