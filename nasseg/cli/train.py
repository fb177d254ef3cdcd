"""``nasseg train``: retrain a derived architecture from scratch."""
from __future__ import annotations

from pathlib import Path

import click

from nasseg.cli.errors import user_errors
from nasseg.cli.options import PatchSize

__all__ = ["train"]


@click.command()
@click.argument("arch", type=click.Path(path_type=Path))
@click.option("--data", default=None, help="Data set [default: the one the search used].")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Training folder [default: runs/train-<arch folder>, numbered if taken].")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader worker processes (patch reading and augmentation).")
@click.option("--deterministic", is_flag=True)
@click.option("--patch-size", type=PatchSize(), default=None,
              help="Training patch size, e.g. 96x96x64 [default: the data set's].")
@user_errors
def train(arch: Path, data: str | None, out: Path | None, epochs: int, batch_size: int,
          lr: float, seed: int, device: str, workers: int, deterministic: bool,
          patch_size: tuple[int, ...] | None) -> None:
    """Train the architecture in ARCH (an arch.json) and write metrics.json."""
    from nasseg.artifacts.run_folder import fresh_run_dir
    from nasseg.training.trainer import TrainConfig, train_architecture

    if out is None:
        out = fresh_run_dir(Path("runs"), f"train-{arch.resolve().parent.name}")
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                         deterministic=deterministic, device=device, num_workers=workers,
                         patch_size=patch_size)
    click.echo(f"training {arch} into {out}", err=True)
    metrics = train_architecture(arch, out, data, config)
    per_class = ", ".join(f"{k} {v:.3f}" if v is not None and v == v else f"{k} n/a"
                          for k, v in metrics["dice_per_class"].items())
    click.echo(f"training finished: {out}")
    click.echo(f"  validation Dice {metrics['dice_mean']:.3f} ({per_class}); chance "
               f"{metrics['chance_dice']:.3f}; best epoch {metrics['best_epoch']}")
    click.echo(f"  metrics: {out / 'metrics.json'}   model: {out / 'model.pt'}")
    click.echo(f"next: tensorboard --logdir {out / 'tensorboard'}")
