"""``nasseg spaces``: list the registered spaces and, for one, its choices and knobs."""
from __future__ import annotations

import click

from nasseg.cli.errors import user_errors

__all__ = ["spaces"]


@click.command()
@click.argument("name", required=False)
@user_errors
def spaces(name: str | None) -> None:
    """List spaces; with NAME, list that space's op choices, connection choices and knobs."""
    from nasseg.space import create_space, get_space_class, list_spaces
    from nasseg.space.knobs import knob_description

    if name is None:
        for space in list_spaces():
            doc = (get_space_class(space).__doc__ or "").strip().splitlines()
            click.echo(f"{space:16s} {doc[0] if doc else ''}")
        click.echo("next: nasseg spaces NAME   (its choices and knobs)")
        return
    space = create_space(name)
    for label, info in space.choice_infos.items():
        if info.kind == "knob":
            desc = knob_description(space.knob_specs[label])
            click.echo(f"knob        {label:20s} {desc}")
        else:
            where = f" @ {info.node}" if info.node else ""
            click.echo(f"{info.kind:11s} {label:20s} {list(info.candidates)}{where}")
