"""``nasseg search``: differentiable architecture search on a data set."""
from __future__ import annotations

from pathlib import Path

import click

from nasseg.artifacts.run_folder import fresh_run_dir
from nasseg.cli.errors import user_errors
from nasseg.cli.options import (PatchSize, parse_assignments, relaunch_argv,
                                steps_per_epoch_option, time_budget_option)
from nasseg.searches.darts.config import (LR_WARMUP_EPOCHS, OP_SELECTIONS, SEARCH_STEPS_PER_EPOCH,
                                         SELECTIONS)
from nasseg.searches.darts.relaxation import GATE_FORMS, RELAXATIONS
from nasseg.searches.darts.selection import DEFAULT_TOLERANCE

__all__ = ["search"]

DEFAULT_SPACE = "uxnet"
DEFAULT_DATA = "demo3d"


@click.command()
@click.option("--space", default=DEFAULT_SPACE, show_default=True,
              help="Registered space name or module:ClassName (see `nasseg spaces`).")
@click.option("--data", default=DEFAULT_DATA, show_default=True,
              help="demo3d, demo2d, a data set folder (MSD or nnU-Net v2), a .npz file from "
                   "nasseg.data.save_arrays, or a preprocessed .h5 cache.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run folder [default: runs/SPACE-DATA, numbered if taken].")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Search epochs, warm-up included [default: 25; with --resume: the run's own].")
@click.option("--warmup-epochs", type=click.IntRange(min=0), default=5, show_default=True,
              help="Epochs that train weights only before the architecture moves.")
@click.option("--lr-warmup-epochs", type=click.IntRange(min=0), default=LR_WARMUP_EPOCHS,
              show_default=True,
              help="Epochs over which the weight learning rate climbs to its peak (at most a "
                   "fifth of the search; 0: none).")
@click.option("--batch-size", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--order", type=click.Choice(["1", "2"]), default="1", show_default=True,
              help="DARTS first order, or second order (unrolled).")
@click.option("--arch-lr", type=float, default=None,
              help="Adam learning rate of the architecture parameters [default: DARTS's 3e-4, "
                   "raised for short searches to 6 / architecture steps, at most 0.05].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--set", "knob_items", multiple=True, metavar="LABEL=VALUE",
              help="Fix a knob of the space for this run (repeatable).")
@click.option("--space-arg", "arg_items", multiple=True, metavar="NAME=VALUE",
              help="A constructor argument of the space, e.g. features=16 (repeatable).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader worker processes (patch reading and augmentation).")
@click.option("--deterministic", is_flag=True, help="Deterministic kernels (repeatable runs).")
@click.option("--resume", is_flag=True,
              help="Continue the search in --out from its last checkpoint.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes searching together (data parallel; Gloo on CPU, NCCL on GPU). "
                   "The same as running under `torchrun --nproc-per-node N`.")
@click.option("--mode", type=click.Choice(list(RELAXATIONS)), default="full", show_default=True,
              help="Relaxation of the choices: " + ", ".join(
                  f"{name}: {r.title}" for name, r in RELAXATIONS.items()) + ".")
@click.option("--gates", type=click.Choice(list(GATE_FORMS)), default="sigmoid",
              show_default=True,
              help="Connection gates: sigmoid(beta) each, or centred within a node (only "
                   "their ratios are parameters; a node's only input is always on).")
@click.option("--select", type=click.Choice(list(SELECTIONS)), default="removal",
              show_default=True,
              help="How connections are chosen after the search: removal measures the Dice "
                   "the supernet loses without each input (an input costing the tolerance "
                   "scores the space's default tau, so derive's default keeps what the "
                   "selection kept); gates keeps each input whose gate >= tau.")
@click.option("--select-tolerance", type=click.FloatRange(min=0, min_open=True),
              default=DEFAULT_TOLERANCE, show_default=True,
              help="--select removal: an input costing less Dice than this is switched off.")
@click.option("--select-ops", type=click.Choice(list(OP_SELECTIONS)), default="alphas",
              show_default=True,
              help="How ops are chosen after the search: alphas takes each choice's largest "
                   "alpha; removal the candidate whose removal costs the supernet the most Dice "
                   "(modes full and partial).")
@click.option("--path-dropout", type=click.FloatRange(min=0, max=1, max_open=True), default=0.0,
              show_default=True,
              help="Weight steps switch each input of a connection off with this probability "
                   "(linear from 0 in the first epoch; a connection keeps one input).")
@click.option("--extend-unlearned", type=click.IntRange(min=0), default=None, metavar="EPOCHS",
              help="When the supernet has not learned a class (Dice < 0.1 on the architecture "
                   "half) by the last epoch, search this many epochs more before selecting "
                   "(once; 0: never; not with --time-budget) [default: as many as --epochs].")
@click.option("--partial-k", type=click.IntRange(min=1), default=4, show_default=True,
              help="--mode partial: 1/K of the channels go through the candidate ops.")
@click.option("--gumbel-temperature", type=(float, float), default=(5.0, 0.5),
              show_default=True, metavar="START END",
              help="--mode gumbel: temperature at the first and last searching epoch (linear).")
@click.option("--amp", is_flag=True,
              help="Mixed precision: bf16 autocast (fp16 + GradScaler on GPUs without bf16).")
@click.option("--channels-last", is_flag=True,
              help="Channels-last memory format (channels_last_3d in 3D) for weights and inputs.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the network.")
@click.option("--patch-size", type=PatchSize(), default=None,
              help="Training patch size, e.g. 96x96x64 [default: the data set's].")
@click.option("--memory-budget", default=None, metavar="SIZE|auto",
              help="Before searching, pick the largest batch or patch (--fit) whose search steps "
                   "fit this much memory (e.g. 20GB; auto: 90% of the GPU, 80% of free RAM).")
@click.option("--fit", type=click.Choice(["batch", "patch"]), default="batch", show_default=True,
              help="--memory-budget: size the batch (patch kept) or the patch (batch kept).")
@steps_per_epoch_option(SEARCH_STEPS_PER_EPOCH)
@time_budget_option
@user_errors
def search(space: str, data: str, out: Path | None, epochs: int, warmup_epochs: int,
           lr_warmup_epochs: int, batch_size: int, order: str, arch_lr: float | None,
           seed: int, gates: str,
           knob_items: tuple[str, ...], arg_items: tuple[str, ...], device: str, workers: int,
           deterministic: bool, resume: bool, nproc: int, mode: str, partial_k: int,
           gumbel_temperature: tuple[float, float], amp: bool, channels_last: bool,
           compile_: bool, patch_size: tuple[int, ...] | None, memory_budget: str | None,
           fit: str, steps_per_epoch: int | None, time_budget: float | None, select: str,
           select_tolerance: float, select_ops: str, path_dropout: float,
           extend_unlearned: int | None) -> None:
    """Search an architecture of SPACE on DATA; derive it into RUN/arch.json."""
    import subprocess
    import sys

    from nasseg.artifacts.pictures import ARCH_EVOLUTION, PROGRESS
    from nasseg.searches.darts import SearchConfig
    from nasseg.runtime.distributed import (is_main_process, launch_command,
                                            launched_world_size)
    from nasseg.searches.darts.run import resume_search, start_search

    distributed = launched_world_size() > 1
    if (nproc > 1 or distributed) and out is None:
        raise click.UsageError("a search in several processes needs --out RUN (one folder for all)")
    if nproc > 1 and not distributed:
        raise SystemExit(subprocess.call(launch_command(nproc, relaunch_argv(sys.argv[1:]))))

    if epochs is not None and time_budget is not None:
        raise click.UsageError("give --epochs or --time-budget, not both: the budget sets the "
                               "epochs")
    knobs = parse_assignments(knob_items, "--set")
    space_args = parse_assignments(arg_items, "--space-arg")
    if resume:
        if out is None:
            raise click.UsageError("--resume needs --out RUN, the folder of the search to continue")
        result = resume_search(out, epochs=epochs)
    else:
        if out is None:
            out = fresh_run_dir(Path("runs"), f"{space.replace(':', '.')}-{Path(data).stem}")
        epochs = 25 if epochs is None else epochs
        config = SearchConfig(epochs=epochs, warmup_epochs=min(warmup_epochs, epochs),
                              lr_warmup_epochs=lr_warmup_epochs,
                              batch_size=batch_size, order=int(order), arch_lr=arch_lr,
                              seed=seed, deterministic=deterministic, gates=gates,
                              select=select, select_tolerance=select_tolerance,
                              select_ops=select_ops,
                              path_dropout=path_dropout, extend_unlearned=extend_unlearned,
                              device=device, mode=mode, partial_k=partial_k,
                              gumbel_temperature=gumbel_temperature, amp=amp,
                              channels_last=channels_last, compile=compile_,
                              num_workers=workers, patch_size=patch_size,
                              memory_budget=memory_budget, fit=fit,
                              steps_per_epoch=steps_per_epoch, time_budget=time_budget)
        if is_main_process():
            click.echo(f"searching space {space!r} on {data!r} into {out}", err=True)
        result = start_search(out, space, data, knobs, space_args, config)
    if result is None:  # a rank other than 0 of a distributed search: rank 0 reports
        return
    arch = result.arch
    click.echo(f"search finished: {result.folder.path}")
    click.echo(f"  derived architecture (tau {arch['tau']}): {result.arch_path}  "
               f"({arch['params']:,} of {arch['supernet_params']:,} parameters)")
    pictures = [result.arch_path.with_suffix(".svg"),
                *(result.folder.path / name for name in (PROGRESS, ARCH_EVOLUTION))]
    click.echo("  pictures: " + "  ".join(str(p) for p in pictures if p.exists()))
    click.echo(f"  TensorBoard: tensorboard --logdir {result.folder.tensorboard}")
    click.echo(f"next: nasseg train {result.arch_path}   "
               f"(or re-derive: nasseg derive {result.folder.path} --tau 0.6)")
