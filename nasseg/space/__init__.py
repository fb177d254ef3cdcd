"""The space language: the base class, choices, knobs, the node graph and the registry."""
from nasseg.space.base import GATE_REG, ChoiceInfo, Connection, SampleError, SearchSpace
from nasseg.space.graph import SpaceGraph
from nasseg.space.knobs import KnobError, fixed_knobs
from nasseg.space.recipe import (BatchMetric, TrainingStage, final_stage_epochs,
                                 schedule_in_passes, stage_schedule)
from nasseg.space.registry import (UnknownSpaceError, create_space, get_space_class, list_spaces,
                                   register_space, space_name)

__all__ = ["GATE_REG", "SearchSpace", "Connection", "TrainingStage", "ChoiceInfo", "SampleError", "SpaceGraph",
           "BatchMetric", "stage_schedule", "schedule_in_passes", "final_stage_epochs",
           "KnobError", "fixed_knobs", "register_space", "create_space", "get_space_class",
           "list_spaces", "space_name", "UnknownSpaceError"]
