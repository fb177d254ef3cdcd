"""Evaluation: per-case metrics, label-folder evaluation and the validation of a network."""
from nasseg.evaluation.folders import (
    LABEL_SUFFIXES,
    EvaluationError,
    evaluate_folders,
    summarize_cases,
    write_evaluation,
)
from nasseg.evaluation.metrics import (
    DiceAccumulator,
    case_metrics,
    chance_dice,
    dice_per_class,
    hd95_per_class,
    iou_per_class,
    pixel_accuracy,
)
from nasseg.evaluation.validation import Validation, validate

__all__ = ["EvaluationError", "LABEL_SUFFIXES", "evaluate_folders", "summarize_cases",
           "write_evaluation", "DiceAccumulator", "chance_dice", "dice_per_class", "iou_per_class",
           "hd95_per_class", "pixel_accuracy", "case_metrics", "Validation",
           "validate"]
