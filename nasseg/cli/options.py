"""Option parsing shared by several verbs."""
from __future__ import annotations

from typing import Any, Sequence

import click

from nasseg.space.knobs import parse_knob_value

__all__ = ["parse_assignments"]


def parse_assignments(items: Sequence[str], option: str) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``; a malformed item is a usage error."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected LABEL=VALUE, got {item!r}", param_hint=option)
        values[key.strip()] = parse_knob_value(text.strip())
    return values
