"""``nasseg export``: the trained network as one TorchScript or ONNX file."""
from __future__ import annotations

from pathlib import Path

import click

from nasseg.cli.errors import user_errors

__all__ = ["export"]


@click.command()
@click.argument("trained", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["torchscript", "onnx"]), default="torchscript",
              show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output file [default: TRAINED/model.ts or TRAINED/model.onnx].")
@user_errors
def export(trained: Path, fmt: str, out: Path | None) -> None:
    """Export the network trained in TRAINED (a `nasseg train` folder)."""
    from nasseg.export import export_trained

    path = export_trained(trained, fmt, out)
    click.echo(f"exported: {path}")
    loader = ("torch.jit.load(path)" if fmt == "torchscript"
              else "onnxruntime.InferenceSession(path)")
    click.echo(f"next: load it with {loader}; input (N, C, *patch) as in arch.json input_shape")
