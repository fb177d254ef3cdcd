"""Derive a discrete architecture from a search; the ``arch.json`` helpers
(:mod:`nasseg.artifacts.arch_file`) are re-exported."""
from nasseg.artifacts.arch_file import ARCH_FORMAT, build_derived, read_arch, write_arch
from nasseg.derive.cost import count_flops, count_parameters
from nasseg.derive.derive import (check_tau, derive_architecture, derive_run,
                                  fixed_architecture, sample_scores)
from nasseg.derive.draw import draw_architecture

__all__ = ["ARCH_FORMAT", "read_arch", "write_arch", "build_derived", "count_parameters",
           "count_flops", "draw_architecture", "check_tau", "derive_architecture", "derive_run",
           "sample_scores", "fixed_architecture"]
