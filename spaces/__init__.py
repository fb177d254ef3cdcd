"""Built-in search spaces; importing this package registers them by name."""
from nasseg.spaces.unet import UNetSpace
from nasseg.spaces.uxnet import UXNetSpace

__all__ = ["UNetSpace", "UXNetSpace"]
