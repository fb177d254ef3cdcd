"""Bridges to other NAS tools. Each bridge imports its tool lazily, inside its functions."""
from nasseg.interop.nni_darts import run_nni_darts

__all__ = ["run_nni_darts"]
