"""What search and retrain share at run time: device and placement, precision, stages, seeding,
loaders, guards, logs, cost card."""
from nasseg.runtime.cost import CostCard, peak_rss_mb, saved_activation_bytes
from nasseg.runtime.device import resolve_device
from nasseg.runtime.distributed import (
    DistContext,
    is_main_process,
    launch_command,
    launched_world_size,
    shard,
)
from nasseg.runtime.fastconv import speed_up_convs
from nasseg.runtime.guards import NonFiniteLossError, check_finite
from nasseg.runtime.loaders import EpochLoader
from nasseg.runtime.placement import place_batch, prepare_model
from nasseg.runtime.precision import Precision
from nasseg.runtime.runlog import RunLog, logger
from nasseg.runtime.seeding import (
    epoch_seed,
    rng_state,
    seed_everything,
    set_deterministic,
    set_rng_state,
)
from nasseg.runtime.settings import RunSettings, cosine_lr

__all__ = ["CostCard", "peak_rss_mb", "saved_activation_bytes", "resolve_device", "DistContext",
           "shard", "is_main_process", "launched_world_size", "launch_command", "speed_up_convs",
           "NonFiniteLossError", "check_finite", "EpochLoader", "place_batch",
           "prepare_model", "Precision", "RunLog", "logger",
           "seed_everything", "set_deterministic", "epoch_seed", "rng_state", "set_rng_state",
           "RunSettings", "cosine_lr"]
