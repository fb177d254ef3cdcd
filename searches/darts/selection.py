"""Connection selection by removal: keep the inputs the trained supernet actually uses.

A gate's magnitude does not say how much its input matters. A block that normalises its input
makes a node blind to a common scale of its gates, so the loss teaches only their ratios:
gradients push one input up and another down, and "both inputs matter" cannot show in the
gates at all. Measured on the demo's default search, the input whose removal cost the supernet
0.49 Dice had gate 0.32 (pruned at tau 0.6), while a gate of 0.69 carried 0.001. Wang et al.
(ICLR 2021, "Rethinking architecture selection in differentiable NAS") measure each choice's
effect on the supernet instead; this module does that for connection choices.

:func:`select_by_removal` switches inputs off one at a time and measures the supernet's Dice on
the architecture half:

1. the drop of every removable input (one of several inputs of a node) in the full supernet;
2. greedily, in that order from the least useful, once more in the supernet pruned so far:
   switch it off for good if it costs less than ``tolerance`` Dice (a node keeps its last
   input; nothing is re-trained). Of two redundant inputs the first goes, and the second, now
   needed, stays.

The score of an input is ``drop / (drop + k * tolerance)`` with its last measured drop (0 for an
input that went) and ``k = (1 - keep_at) / keep_at``: an input that costs exactly the tolerance
scores ``keep_at``, the space's default tau. So deriving at the default tau derives exactly the
net the selection measured (a node keeps its last input, as derive does), and a higher tau asks
more: ``tau / (1 - tau) * k`` times the tolerance (UXNet, default 0.6: tau 0.75 / 0.9 ask for
2 / 6 times). Until 2026-12-01 the scale was fixed (``k = 1``), so UXNet's default tau asked
1.5 times the tolerance and cut, unmeasured, inputs the selection had kept, and with them the
nodes they fed (README, "The derived net is the measured net"). Single-input connections
score 1: such a node lives or dies by its consumers.

Few architecture cases make a poor measurement. Searched on 8 brain-tissue cases (3 in the
architecture half), the supernets fitted their weight half far better than the architecture
half (Dice 0.92-0.94 against 0.75-0.82), switching most inputs off *raised* their Dice on those
three cases, and the selection kept the 10,723-parameter chain at two seeds of six; at seeds 0
and 1 its nets retrained 0.033 and 0.019 Dice below the U-Net. Measured on both halves, the
same supernets kept 40-98 k parameters, which retrained as well as the U-Net. So with fewer
than :data:`MIN_MEASURED_CASES` cases in the architecture half the selection measures the
supernet on every training case (:func:`measured_cases`).

A supernet that has not learned a class cannot show which inputs that class needs: without
any input it loses nothing, and the selection keeps the smallest net it can. Measured on the
demo, the searches that ended in the smallest chain with a poor net had one blob class at Dice
0.00-0.04 on the architecture half. :func:`unlearned_classes` names such classes, so a search
can say that it was too short.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from nasseg.searches.darts.relaxation import ArchParameters, Edge

__all__ = ["RemovalSelection", "OpSelection", "select_by_removal", "select_ops_by_removal",
           "unlearned_classes", "measured_cases", "DEFAULT_TOLERANCE", "UNLEARNED_DICE",
           "MIN_MEASURED_CASES"]

#: An input whose removal costs the supernet less Dice than this is switched off. On brain-
#: tissue crops, where the deeper paths cost the supernet 0.003-0.01 each, 0.01 pruned more at
#: five seeds of six, and the nets 0.003 keeps retrained better at four of those five; from six
#: demo3d supernets it derives the nets 0.01 did (README, "Search quality").
DEFAULT_TOLERANCE = 0.003
#: A class the full supernet segments with less Dice than this has not been learned.
UNLEARNED_DICE = 0.1
#: An architecture half with fewer cases than this is too small to measure the supernet on
#: alone: 3 cases were (the selection kept the smallest chain), 13 were not; at 7 the nets
#: measured on 7 and on all 13 training cases retrained alike (README, "Search quality").
MIN_MEASURED_CASES = 8


def measured_cases(split: Mapping[str, Sequence[int]]) -> tuple[list[int], str]:
    """The cases the selection measures the supernet on, and which halves they are: the
    architecture half, or both halves when it has fewer than :data:`MIN_MEASURED_CASES`."""
    arch = list(split["arch"])
    if len(arch) >= MIN_MEASURED_CASES:
        return arch, "arch"
    return list(split["weights"]) + arch, "weights+arch"


@dataclass
class RemovalSelection:
    """What :func:`select_by_removal` measured and decided (``selection.json``)."""

    tolerance: float
    full_dice: float
    #: the score of an input that costs exactly the tolerance (the space's default tau)
    keep_at: float = 0.5
    final_dice: float = float("nan")
    evaluations: int = 0
    #: per connection label, the derivation score of every input
    scores: dict[str, list[float]] = field(default_factory=dict)
    #: one entry per measurement: edge, phase, Dice without it, drop, and the decision
    log: list[dict[str, Any]] = field(default_factory=list)
    #: the full supernet's Dice per foreground class, when the caller measured it
    class_dice: dict[str, float] = field(default_factory=dict)
    #: the cases measured on, as the caller chose them (:func:`measured_cases`)
    measured_on: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        return {"method": "removal", "tolerance": self.tolerance, "keep_at": self.keep_at,
                "full_dice": self.full_dice,
                "final_dice": self.final_dice, "evaluations": self.evaluations,
                "class_dice": self.class_dice,
                "unlearned_classes": unlearned_classes(self.class_dice),
                "measured_on": self.measured_on, "scores": self.scores, "log": self.log}


def unlearned_classes(class_dice: Mapping[str, float]) -> list[str]:
    """The classes with Dice below :data:`UNLEARNED_DICE` (NaN, a class absent from the
    measured cases, is not judged)."""
    return [name for name, dice in class_dice.items() if dice < UNLEARNED_DICE]


def _score(drop: float, tolerance: float, keep_at: float) -> float:
    """The derivation score of an input whose removal costs ``drop``: ``keep_at`` at the
    tolerance, towards 1 for an essential input, 0 for one the supernet does not miss."""
    drop = max(drop, 0.0)
    return drop / (drop + tolerance * (1.0 - keep_at) / keep_at)


def select_by_removal(arch: ArchParameters, dice: Callable[[], float],
                      tolerance: float = DEFAULT_TOLERANCE,
                      progress: Callable[[str], None] | None = None,
                      full_dice: float | None = None,
                      keep_at: float = 0.5) -> RemovalSelection:
    """Score every connection input of the supernet behind ``arch`` by the Dice lost without it.

    ``dice()`` evaluates the supernet (in eval mode, on data the weights were not trained on)
    with the inputs in ``arch.removed`` switched off; ``full_dice`` is its value with every
    input on, when the caller measured it already. The inputs the selection switched off
    stay in ``arch.removed``; the caller stores the returned scores (``arch.selected``), on
    which an input kept for what it costs scores at least ``keep_at`` (the space's default
    tau; a node's last input, kept whatever it costs, may score less).
    """
    if not tolerance > 0:
        raise ValueError(f"the selection tolerance must be positive Dice, got {tolerance}")
    if not 0.0 < keep_at < 1.0:
        raise ValueError(f"the score of a kept input must lie in (0, 1), got {keep_at}")
    say = progress or (lambda message: None)
    result = RemovalSelection(tolerance, dice() if full_dice is None else full_dice,
                              keep_at=keep_at)
    result.evaluations = 1
    removable = [(label, i) for label, n in arch.connection_sizes.items() if n > 1
                 for i in range(n)]

    def measure(edge: Edge, phase: str, reference: float, known: float | None = None) -> float:
        if known is None:
            with arch.switched_off([edge]):
                known = dice()
            result.evaluations += 1
        result.log.append({"edge": list(edge), "phase": phase, "dice_without": known,
                           "drop": reference - known})
        return known

    say(f"selection: supernet Dice {result.full_dice:.4f}; measuring {len(removable)} inputs")
    drops = {edge: result.full_dice - measure(edge, "alone", result.full_dice)
             for edge in removable}
    off: set[Edge] = set()
    last_drop = dict(drops)
    current = result.full_dice
    for edge in sorted(removable, key=lambda e: (drops[e], e)):
        label = edge[0]
        if arch.connection_sizes[label] - len(arch.removed.get(label, ())) <= 1:
            continue  # a node keeps its last input
        # with nothing off yet, the greedy measurement is the one made alone
        value = measure(edge, "greedy", current,
                        None if off else result.full_dice - drops[edge])
        last_drop[edge] = current - value
        if last_drop[edge] < tolerance:
            arch.removed.setdefault(label, set()).add(edge[1])
            off.add(edge)
            current = value
            result.log[-1]["switched_off"] = True
    result.final_dice = current
    say(f"selection: {len(off)} of {len(removable)} inputs off, supernet Dice "
        f"{result.full_dice:.4f} -> {current:.4f} ({result.evaluations} evaluations)")
    for label, n in arch.connection_sizes.items():
        result.scores[label] = [1.0 if n == 1 else 0.0 if (label, i) in off
                                else _score(last_drop[(label, i)], tolerance, keep_at)
                                for i in range(n)]
    return result


@dataclass
class OpSelection:
    """What :func:`select_ops_by_removal` measured and decided (``selection.json``, ``ops``)."""

    full_dice: float
    evaluations: int = 0
    #: per op label, its candidates and the Dice the supernet loses without each
    drops: dict[str, dict[str, float]] = field(default_factory=dict)
    #: per op label, the candidate chosen: the largest drop (ties: the larger alpha)
    chosen: dict[str, str] = field(default_factory=dict)
    #: per op label where it differs, the candidate the largest alpha would have chosen
    alphas_chose: dict[str, str] = field(default_factory=dict)

    @property
    def scores(self) -> dict[str, list[float]]:
        """Per op label, 1 for the chosen candidate and 0 for the others."""
        return {label: [float(name == self.chosen[label]) for name in drops]
                for label, drops in self.drops.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        return {"method": "removal", "full_dice": self.full_dice,
                "evaluations": self.evaluations, "chosen": self.chosen,
                "alphas_chose": self.alphas_chose, "drops": self.drops}


def select_ops_by_removal(arch: ArchParameters, dice: Callable[[], float],
                          progress: Callable[[str], None] | None = None,
                          full_dice: float | None = None) -> OpSelection:
    """Choose every op by the Dice the supernet loses without it (Wang et al., ICLR 2021):
    the op the supernet needs most, not the one with the largest alpha.

    ``dice()`` evaluates the supernet as it stands (inputs a connection selection switched off
    stay off) with one candidate's weight set to 0 and the others' softmax(alpha) weights
    kept (of two candidates, the one left runs alone, as in the derived network); ``full_dice``
    is its value with every candidate on, when the caller measured it already. Every
    candidate is measured in that same supernet: fixing choices one by one without
    re-training degrades it (measured on the demo: Dice 0.92 -> 0.25 over 17 choices), so
    later measurements would be made in a broken network. Nothing stays switched off; the
    caller stores the returned scores (``arch.op_selected``), whose argmax derive takes.
    """
    say = progress or (lambda message: None)
    result = OpSelection(dice() if full_dice is None else full_dice, evaluations=1)
    labels = [label for label, names in arch.op_candidates.items() if len(names) > 1]
    say(f"op selection: supernet Dice {result.full_dice:.4f}; measuring the candidates of "
        f"{len(labels)} op choices")
    for label in labels:
        names, alphas = arch.op_candidates[label], arch.op_probs(label).tolist()
        drops = []
        for i in range(len(names)):
            with arch.switched_off([(label, i)], ops=True):
                drops.append(result.full_dice - dice())
            result.evaluations += 1
        result.drops[label] = dict(zip(names, drops))
        best = max(range(len(names)), key=lambda i: (drops[i], alphas[i]))
        result.chosen[label] = names[best]
        if alphas[best] < max(alphas):
            result.alphas_chose[label] = names[alphas.index(max(alphas))]
    say(f"op selection: {len(result.alphas_chose)} of {len(labels)} ops differ from the "
        f"alphas' choice ({result.evaluations} evaluations)")
    return result
