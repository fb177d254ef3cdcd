"""Built-in search spaces; importing this package registers them by name."""
from nasseg.spaces.unet import UNetSpace

__all__ = ["UNetSpace"]
