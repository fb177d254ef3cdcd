"""Built-in search spaces; importing this package registers them by name."""
from nasseg.spaces.da_refinenet import DARefineNetSpace
from nasseg.spaces.inter_unet import InterUNetSpace
from nasseg.spaces.msn import MSNSpace
from nasseg.spaces.task_decomp import TaskDecompSpace
from nasseg.spaces.unet import UNetSpace
from nasseg.spaces.uxnet import UXNetSpace

__all__ = ["DARefineNetSpace", "InterUNetSpace", "MSNSpace", "TaskDecompSpace", "UNetSpace",
           "UXNetSpace"]
