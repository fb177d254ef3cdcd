"""``nasseg train``: retrain a derived architecture from scratch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from nasseg.cli.errors import user_errors
from nasseg.cli.options import (PatchSize, relaunch_argv, steps_per_epoch_option,
                                time_budget_option)
from nasseg.training.trainer import TRAIN_EPOCHS, TRAIN_STEPS_PER_EPOCH

__all__ = ["train"]


@click.command()
@click.argument("arch", type=click.Path(path_type=Path), required=False)
@click.option("--data", default=None, help="Data set [default: the one the search used].")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Training folder [default: runs/train-<arch folder>, numbered if taken].")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help=f"[default: {TRAIN_EPOCHS}]")
@time_budget_option
@click.option("--batch-size", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader worker processes (patch reading and augmentation).")
@click.option("--deterministic", is_flag=True)
@click.option("--patch-size", type=PatchSize(), default=None,
              help="Training patch size, e.g. 96x96x64 [default: the data set's].")
@steps_per_epoch_option(TRAIN_STEPS_PER_EPOCH)
@click.option("--amp", is_flag=True,
              help="Mixed precision: bf16 autocast (fp16 + GradScaler on GPUs without bf16).")
@click.option("--channels-last", is_flag=True,
              help="Channels-last memory format (channels_last_3d in 3D) for weights and inputs.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the network.")
@click.option("--no-postprocess", is_flag=True,
              help="Keep every predicted component: do not decide on the validation cases "
                   "which small components of each class prediction removes.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes training together (data parallel; Gloo on CPU, NCCL on GPU). "
                   "The same as running under `torchrun --nproc-per-node N`.")
@click.option("--resume", is_flag=True,
              help="Continue the training in --out from its last checkpoint, with its settings.")
@user_errors
def train(arch: Path | None, data: str | None, out: Path | None, epochs: int | None,
          time_budget: float | None, batch_size: int,
          lr: float, seed: int, device: str, workers: int, deterministic: bool,
          patch_size: tuple[int, ...] | None, steps_per_epoch: int | None, amp: bool,
          channels_last: bool, compile_: bool, no_postprocess: bool, nproc: int,
          resume: bool) -> None:
    """Train the architecture in ARCH (an arch.json) and write metrics.json."""
    from nasseg.artifacts.pictures import PROGRESS
    from nasseg.artifacts.run_folder import fresh_run_dir
    from nasseg.runtime.distributed import is_main_process, launch_command, launched_world_size
    from nasseg.training.trainer import TrainConfig, resume_training, train_architecture

    if epochs is not None and time_budget is not None:
        raise click.UsageError("give --epochs or --time-budget, not both: the budget sets the "
                               "epochs")
    distributed = launched_world_size() > 1
    if (nproc > 1 or distributed or resume) and out is None:
        raise click.UsageError("--resume and several processes need --out TRAINING_FOLDER")
    if nproc > 1 and not distributed:
        raise SystemExit(subprocess.call(launch_command(nproc, relaunch_argv(sys.argv[1:]))))
    if resume:
        metrics = resume_training(out)
    else:
        if arch is None:
            raise click.UsageError("give the ARCH file to train (or --resume --out FOLDER)")
        if out is None:
            out = fresh_run_dir(Path("runs"), f"train-{arch.resolve().parent.name}")
        config = TrainConfig(epochs=epochs or TRAIN_EPOCHS, time_budget=time_budget,
                             batch_size=batch_size, lr=lr, seed=seed,
                             deterministic=deterministic, device=device, num_workers=workers,
                             patch_size=patch_size, steps_per_epoch=steps_per_epoch, amp=amp,
                             channels_last=channels_last, compile=compile_,
                             postprocess=not no_postprocess)
        if is_main_process():
            click.echo(f"training {arch} into {out}", err=True)
        metrics = train_architecture(arch, out, data, config)
    if metrics is None:  # a rank other than 0 of a distributed run: rank 0 reports
        return
    per_class = ", ".join(f"{k} {v:.3f}" if v is not None and v == v else f"{k} n/a"
                          for k, v in metrics["dice_per_class"].items())
    click.echo(f"training finished: {out}")
    click.echo(f"  validation Dice {metrics['dice_mean']:.3f}, whole cases by sliding window, mean "
               f"of {metrics['num_val_cases']} ({per_class}); chance "
               f"{metrics['chance_dice']:.3f}; best epoch {metrics['best_epoch']} by "
               f"{metrics['selection_metric']}")
    extra = {k: v for k, v in metrics["validation"].items() if k != "dice_mean"}
    if extra:
        click.echo("  " + ", ".join(f"{k} {v:.3f}" for k, v in extra.items()))
    post = metrics.get("postprocessing")
    if post and post["min_component_voxels"]:
        removed = ", ".join(f"{name} < {n} voxels"
                            for name, n in post["min_component_voxels"].items())
        click.echo(f"  post-processing: removes components of {removed} (validation Dice "
                   f"{post['dice_mean_before']:.3f} -> {post['dice_mean_after']:.3f})")
    click.echo(f"  metrics: {out / 'metrics.json'}   model: {out / 'model.pt'}")
    if (out / PROGRESS).exists():
        click.echo(f"  picture: {out / PROGRESS}")
    click.echo(f"next: nasseg predict {out} --input IMAGES --output PREDICTIONS   "
               f"(TensorBoard: tensorboard --logdir {out / 'tensorboard'})")
