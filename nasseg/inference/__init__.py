"""Whole-case inference with networks trained on patches."""
from nasseg.inference.sliding_window import (
    gaussian_importance_map,
    network_predict_fn,
    sliding_window_predict,
    window_batch,
    window_starts,
)

__all__ = ["sliding_window_predict", "gaussian_importance_map", "window_starts", "network_predict_fn",
           "window_batch"]
