"""The ``nasseg`` command line: one module per verb."""
from __future__ import annotations

import logging
import sys

import click

from nasseg import __version__
from nasseg.cli.data_verbs import evaluate, predict, verify
from nasseg.cli.derive import derive
from nasseg.cli.export import export
from nasseg.cli.search import search
from nasseg.cli.spaces import spaces
from nasseg.cli.train import train
from nasseg.cli.tune import tune

__all__ = ["cli", "main"]


@click.group()
@click.version_option(__version__, prog_name="nasseg")
def cli() -> None:
    """nasseg: neural architecture search for medical image segmentation.

    Workflow: search -> derive -> train.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)


cli.add_command(search)
cli.add_command(derive)
cli.add_command(train)
cli.add_command(spaces)
cli.add_command(export)
cli.add_command(verify)
cli.add_command(predict)
cli.add_command(evaluate)
cli.add_command(tune)


def main() -> None:
    """Console-script entry point."""
    cli()
