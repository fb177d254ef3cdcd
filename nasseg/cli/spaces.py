"""``nasseg spaces``: list the registered spaces and, for one, its choices and knobs."""
from __future__ import annotations

import click

from nasseg.cli.errors import user_errors

__all__ = ["spaces"]


@click.command()
@click.argument("name", required=False)
@user_errors
def spaces(name: str | None) -> None:
    """List spaces; with NAME, list that space's choices, knobs and recipe (inputs, stages,
    metrics, training-only modules)."""
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
            desc = knob_description(space.knob_specs[label], space.knob_conditions.get(label))
            click.echo(f"knob        {label:20s} {desc}")
        else:
            where = f" @ {info.node}" if info.node else ""
            inputs = f" ({info.inputs} inputs)" if info.inputs > 1 else ""
            click.echo(f"{info.kind:11s} {label:20s} {list(info.candidates)}{where}{inputs}")
    view = space.data_view()
    click.echo(f"inputs      {', '.join(view.keys)}"
               + (f" (context x{', x'.join(map(str, view.context))}"
                  + (", with labels)" if view.context_labels else ")") if view.context else "")
               + f"; {'/'.join(map(str, space.supported_dims))}D")
    for stage in space.training_stages():
        d = stage.describe()
        click.echo(f"stage       {stage.name:20s} " + ", ".join(
            f"{k} {v}" for k, v in d.items() if k != "name"))
    click.echo(f"selects by  {space.selection_metric}")
    if space.training_only():
        click.echo(f"train only  {', '.join(space.training_only())}")
