"""A whole search run: folder, description, seeded supernet, engine, and the derived arch.json."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from nasseg import __version__
from nasseg.artifacts.files import read_json, write_json
from nasseg.artifacts.run_folder import RunFolder
from nasseg.data import (CaseSet, DataError, load_data, locate_data_spec, record_data_spec,
                         resolve_data_spec)
from nasseg.derive import derive_run
from nasseg.runtime.distributed import is_main_process, launched_world_size
from nasseg.runtime.seeding import seed_everything, set_deterministic
from nasseg.searches.darts.budget import fit_memory
from nasseg.searches.darts.config import SearchConfig
from nasseg.searches.darts.engine import DartsSearch
from nasseg.space import SearchSpace, create_space, space_name

__all__ = ["SearchRun", "start_search", "resume_search"]


@dataclass
class SearchRun:
    """A finished search: its folder and the derived architecture."""

    folder: RunFolder
    arch_path: Path
    arch: dict[str, Any]


def _execute(run: RunFolder, description: dict[str, Any], resume: bool,
             show_progress: bool | None,
             on_epoch: Callable[[int, float], None] | None = None) -> SearchRun | None:
    config = SearchConfig.from_dict(description["search"])
    data = load_data(locate_data_spec(description["data"], run.path))
    seed_everything(config.seed)
    set_deterministic(config.deterministic)
    space = create_space(description["space"], knobs=description["knobs"],
                         **description["space_args"])
    engine = DartsSearch(space, data, run, config, show_progress, on_epoch)
    if resume:
        engine.resume()
    engine.run()
    if not is_main_process():
        return None
    arch_path, arch = derive_run(run.path)
    return SearchRun(run, arch_path, arch)


def _description(space: SearchSpace, data: str, dataset: CaseSet, config: SearchConfig
                 ) -> dict[str, Any]:
    """What ``run.json`` records: enough to resume and to derive."""
    return {
        "kind": "search", "nasseg_version": __version__,
        "space": space_name(space), "space_args": space.init_arguments,
        "knobs": dict(space.knob_values), "data": data, "class_names": dataset.class_names,
        "view": space.data_view().to_dict(),
        "input_shape": [dataset.in_channels, *(config.patch_size or dataset.patch_size)],
        "search": config.to_dict(),
    }


def start_search(run_dir: Path, space: str, data: str, knobs: Mapping[str, Any],
                 space_args: Mapping[str, Any], config: SearchConfig,
                 show_progress: bool | None = None,
                 on_epoch: Callable[[int, float], None] | None = None) -> SearchRun | None:
    """Search ``space`` on ``data`` into a new ``run_dir`` (refused if it already holds a run).

    ``on_epoch(epoch, val_dice)`` is called after every search epoch (see :class:`DartsSearch`).

    Under ``torchrun`` every process calls this; rank 0 returns the result, the others None.
    """
    if config.memory_budget is not None and launched_world_size() > 1:
        raise ValueError("--memory-budget probes in one process; fit the batch or patch there, "
                         "then search in several with --batch-size / --patch-size")
    run = RunFolder(Path(run_dir))
    data = resolve_data_spec(data)
    dataset = load_data(data)
    args = {"in_channels": dataset.in_channels, "num_classes": dataset.num_classes,
            "spatial_dims": dataset.spatial_dims, **space_args}
    built = create_space(space, knobs=knobs, **args)  # fail on bad names before writing anything
    if config.patch_size is not None and len(config.patch_size) != dataset.spatial_dims:
        raise DataError(f"{data}: patch size {config.patch_size} does not fit its "
                        f"{dataset.spatial_dims}D cases (need {dataset.spatial_dims} sizes)")
    if not is_main_process():  # rank 0 owns the folder; the others only search
        return _execute(run, _description(built, record_data_spec(data, run.path), dataset,
                                          config), False, show_progress)
    run.ensure_new()
    memory_fit = None
    if config.memory_budget is not None:
        config, memory_fit = fit_memory(lambda: create_space(space, knobs=knobs, **args),
                                        dataset, config)
    description = _description(built, record_data_spec(data, run.path), dataset, config)
    if memory_fit is not None:
        description["memory_fit"] = memory_fit
    write_json(run.config, description)
    return _execute(run, description, resume=False, show_progress=show_progress,
                    on_epoch=on_epoch)


def resume_search(run_dir: Path, epochs: int | None = None,
                  show_progress: bool | None = None) -> SearchRun | None:
    """Continue the search in ``run_dir`` from its last checkpoint (optionally to more epochs)."""
    run = RunFolder(Path(run_dir))
    run.require(run.config, run.checkpoint)
    description = read_json(run.config, "run description")
    if epochs is not None and epochs != description["search"]["epochs"]:
        description["search"]["epochs"] = epochs
        SearchConfig.from_dict(description["search"])
        if is_main_process():
            write_json(run.config, description)
    return _execute(run, description, resume=True, show_progress=show_progress)
