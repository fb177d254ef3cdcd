"""``nasseg derive``: export the pruned architecture of a search run."""
from __future__ import annotations

from pathlib import Path

import click

from nasseg.cli.errors import user_errors
from nasseg.cli.options import parse_assignments

__all__ = ["derive"]


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--tau", type=float, default=None,
              help="Keep connections whose score (the gate sigmoid(beta), or after a "
                   "selection by removal its measured score) >= tau, in (0, 1) "
                   "[default: the space's own].")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Where to write the architecture [default: RUN/arch.json].")
@click.option("--space-arg", "arg_items", multiple=True, metavar="NAME=VALUE",
              help="Build the derived network with this constructor argument instead of the "
                   "search's, e.g. features=16 to train it wider than it was searched "
                   "(repeatable).")
@user_errors
def derive(run: Path, tau: float | None, out: Path | None, arg_items: tuple[str, ...]) -> None:
    """Derive the discrete architecture of the search in RUN."""
    from nasseg.derive import check_tau, derive_run

    if tau is not None:
        check_tau(tau)
    path, arch = derive_run(run, tau, out, parse_assignments(arg_items, "--space-arg"))
    kept = sum(len(c["kept"]) for c in arch["choices"].values() if c["kind"] == "connection")
    total = sum(len(c["sources"]) for c in arch["choices"].values() if c["kind"] == "connection")
    click.echo(f"derived at tau {arch['tau']}: {path}")
    click.echo(f"  {kept}/{total} connections kept; {arch['params']:,} parameters "
               f"(supernet {arch['supernet_params']:,}); {arch['flops'] / 1e9:.3f} GFLOPs")
    click.echo(f"  picture: {path.with_suffix('.svg')}")
    click.echo(f"next: nasseg train {path}")
