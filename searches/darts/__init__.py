"""The differentiable (DARTS-style) engine: relaxation, bi-level search loop and its settings."""
from nasseg.searches.darts.config import SearchConfig
from nasseg.searches.darts.engine import DartsSearch, EpochSummary
from nasseg.searches.darts.relaxation import ArchParameters, GatedSum, MixedOp, relax

__all__ = ["SearchConfig", "DartsSearch", "EpochSummary", "ArchParameters", "MixedOp", "GatedSum",
           "relax"]
