"""The differentiable (DARTS-style) engine: relaxation, bi-level search loop and its settings."""
from nasseg.searches.darts import modes  # noqa: F401  registers partial, gumbel and binary
from nasseg.searches.darts.config import SearchConfig
from nasseg.searches.darts.engine import DartsSearch, EpochSummary
from nasseg.searches.darts.relaxation import (RELAXATIONS, ArchParameters, GatedSum, MixedOp,
                                              Relaxation, get_relaxation, register_relaxation,
                                              relax)

__all__ = ["SearchConfig", "DartsSearch", "EpochSummary", "ArchParameters", "MixedOp", "GatedSum",
           "Relaxation", "RELAXATIONS", "register_relaxation", "get_relaxation", "relax"]
