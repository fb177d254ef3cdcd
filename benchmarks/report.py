"""How every benchmark saves what it measured: ``NAME.json`` (settings and rows) and ``NAME.md``
(the Markdown table), both in its output folder, and the table printed."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nasseg.artifacts.files import write_json

__all__ = ["save_report"]


def save_report(out: Path, name: str, args: argparse.Namespace, rows: list[dict[str, Any]],
                table: str) -> None:
    """Write ``out/NAME.json`` and ``out/NAME.md``; print the table and where the JSON is."""
    write_json(out / f"{name}.json", {"settings": {k: str(v) for k, v in vars(args).items()},
                                      "rows": rows})
    (out / f"{name}.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    print(json.dumps({"written": str(out / f"{name}.json")}))
