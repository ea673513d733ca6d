"""Semi-SegDefect: semi-supervised segmentation of concrete defects.

Importing this package first makes torchvision (and so timm,
segmentation-models-pytorch and pytorch-grad-cam) importable next to a
CPU-only torch; import it before anything that imports torchvision.
"""

from semiseg_helpers._compat import ensure_torchvision as _ensure_torchvision

TORCHVISION_STATE = _ensure_torchvision()

from semiseg_helpers.classes import (  # noqa: E402
    CLASS_NAMES,
    DEFECT_CLASSES,
    IGNORE_INDEX,
    NUM_CLASSES,
)

__version__ = "0.1.0"

__all__ = ["CLASS_NAMES", "DEFECT_CLASSES", "IGNORE_INDEX", "NUM_CLASSES",
           "TORCHVISION_STATE", "__version__"]
