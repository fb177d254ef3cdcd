"""NNI's own search strategies run on nasseg spaces. NNI is imported lazily, inside the functions."""
from nasseg.searches.nni.darts import run_nni_darts

__all__ = ["run_nni_darts"]
