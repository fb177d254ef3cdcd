"""``nasseg derive``: export the pruned architecture of a search run."""
from __future__ import annotations

from pathlib import Path

import click

from nasseg.cli.errors import user_errors

__all__ = ["derive"]


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--tau", type=float, default=None,
              help="Keep connections whose gate sigmoid(beta) >= tau, in (0, 1) "
                   "[default: the space's own].")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Where to write the architecture [default: RUN/arch.json].")
@user_errors
def derive(run: Path, tau: float | None, out: Path | None) -> None:
    """Derive the discrete architecture of the search in RUN."""
    from nasseg.derive import check_tau, derive_run

    if tau is not None:
        check_tau(tau)
    path, arch = derive_run(run, tau, out)
    kept = sum(len(c["kept"]) for c in arch["choices"].values() if c["kind"] == "connection")
    total = sum(len(c["sources"]) for c in arch["choices"].values() if c["kind"] == "connection")
    click.echo(f"derived at tau {arch['tau']}: {path}")
    click.echo(f"  {kept}/{total} connections kept; {arch['params']:,} parameters "
               f"(supernet {arch['supernet_params']:,}); {arch['flops'] / 1e9:.3f} GFLOPs")
    click.echo(f"  picture: {path.with_suffix('.svg')}")
    click.echo(f"next: nasseg train {path}")
