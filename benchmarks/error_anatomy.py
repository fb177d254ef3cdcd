"""Where do trained networks go wrong on held-out cases: edges, insides, strays, whole objects?

    python benchmarks/error_anatomy.py UNet=bench/compare/seed7000/UNet \\
        main=bench/compare/seed7000/main --data demo3d --out bench/errors

Each net is a trained run folder (``nasseg train``'s, or a retrain of ``compare_nets.py`` or
``search_quality.py``), scored on the held-out cases those benchmarks score (the last
``--test-fraction`` of ``--data`` and, for a demo set, ``--fresh-test`` new cases of its
generator) after its own post-processing, and its errors sorted by
:func:`nasseg.evaluation.error_anatomy.error_anatomy`: Dice per class pooled over the cases,
the wrong voxels by their distance to the reference boundary, each class's edge misses
against its edge extras (shapes drawn too small or too large), reference objects missed or
given the wrong class, and stray components. Writes ``OUT/error_anatomy.json`` and
``OUT/error_anatomy.md``.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Sequence

from nasseg.artifacts.files import error_line
from nasseg.cli.errors import USER_ERRORS
from nasseg.data import DEMO_SETS
from nasseg.evaluation.error_anatomy import ERROR_PLACES, add_counts, error_anatomy
from compare_nets import named_net
from report import save_report
from search_quality import FRESH_CASES, HeldOut, held_out_labels, held_out_sets


def anatomy_row(label: str, train_dir: Path, tests: Sequence[HeldOut]) -> dict[str, Any]:
    """One net's error counts summed over every held-out case, with its pooled Dice."""
    classes = len(tests[0].class_names)
    total = add_counts(error_anatomy(pred, ref, classes)
                       for _, pred, ref, _ in held_out_labels(train_dir, tests))
    pooled = {name: 2 * total[f"overlap_{k}"] / max(1, total[f"voxels_{k}"]
                                                    + total[f"predicted_{k}"])
              for k, name in enumerate(tests[0].class_names[1:], start=1)}
    return {"net": label, "train_dir": str(train_dir), "pooled_dice": pooled, "counts": total}


def anatomy_table(rows: list[dict[str, Any]], class_names: Sequence[str]) -> str:
    """The Markdown table: one row per net."""
    names = list(class_names[1:])
    head = (["net", *(f"{n} Dice (pooled)" for n in names), "wrong voxels",
             *(f"{p} %" for p in ERROR_PLACES), *(f"{n} edge misses / extras" for n in names),
             "objects missed / wrong class / of", "stray components"])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        c = row["counts"]
        wrong = max(1, c["wrong"])
        cells = [row["net"], *(f"{row['pooled_dice'][n]:.4f}" for n in names), f"{c['wrong']:,}",
                 *(f"{100 * c[p] / wrong:.0f}" for p in ERROR_PLACES),
                 *(f"{c[f'edge_misses_{k}']:,} / {c[f'edge_extras_{k}']:,}"
                   for k in range(1, len(names) + 1)),
                 f"{c['missed']} / {c['wrong_class']} / {c['objects']}", str(c["strays"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nets", nargs="+", type=named_net, metavar="[LABEL=]TRAIN_DIR",
                        help="Trained run folders (each holding model.pt).")
    parser.add_argument("--data", default="demo3d",
                        help="The data set the nets were trained on: a demo set, a data set "
                             "folder or a .npz file [default: %(default)s].")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="The last cases held out for scoring [default: %(default)s].")
    parser.add_argument("--fresh-test", type=int, default=None, metavar="N",
                        help="Also score on N new cases of a demo set's generator [default: "
                             f"{FRESH_CASES} for a demo set, else 0].")
    parser.add_argument("--out", type=Path, default=Path("bench/error_anatomy"),
                        help="Folder of the report [default: %(default)s].")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.fresh_test is None:
        args.fresh_test = FRESH_CASES if args.data in DEMO_SETS else 0
    for _, folder in args.nets:
        if not (folder / "model.pt").is_file():
            raise SystemExit(f"error: {folder}: no model.pt (not a trained run folder)")
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        _, tests = held_out_sets(args.data, args.test_fraction, args.fresh_test, args.out)
        rows = []
        for label, folder in args.nets:
            rows.append(anatomy_row(label, folder, tests))
            logging.info("%s: %s wrong voxels", label, f"{rows[-1]['counts']['wrong']:,}")
    except USER_ERRORS as exc:
        raise SystemExit(f"error: {error_line(exc)}") from None
    save_report(args.out, "error_anatomy", args, rows, anatomy_table(rows, tests[0].class_names))


if __name__ == "__main__":
    main()
