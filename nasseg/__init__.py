"""nasseg: neural architecture search for medical image segmentation."""
import warnings

# NNI 3.0 predates this torch and warns once per new torch.nn class it meets while importing;
# the warning is noise for nasseg (it never hands those classes to NNI). Real errors still show.
warnings.filterwarnings("ignore", message=r".*is found to be not a nn\.Module, which is unexpected",
                        category=RuntimeWarning, module=r"nni\.")

__version__ = "0.1.0"
__all__ = ["__version__"]
