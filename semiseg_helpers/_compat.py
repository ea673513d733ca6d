"""Make torchvision importable next to a CPU-only torch build.

The only torchvision release matching torch 2.13 is a CUDA build whose
compiled ``_C.so`` cannot load next to the CPU torch; importing it then fails
with ``operator torchvision::nms does not exist`` while registering fake
kernels. timm, segmentation-models-pytorch and pytorch-grad-cam all import
torchvision, so this must be fixed before any of them is imported.

:func:`ensure_torchvision` first tries to load the compiled ops as usual. Only
if that fails does it declare the two operator schemas that torchvision's
Python side registers kernels for (``nms`` and ``qnms``), so the import
succeeds. The image transforms and model definitions then work; the compiled
ops (``torchvision.ops.nms``, ``torchvision.io``) remain unavailable, and the
package never uses them. Where torchvision matches torch, this does nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
_LIBRARY = None  # the torch.library.Library object must outlive the import
_STATE: str | None = None


def ensure_torchvision() -> str:
    """Prepare torchvision's import; idempotent.

    Returns how it went: ``"native"`` (ops loaded or already importable),
    ``"shimmed"`` (schemas declared; compiled ops unavailable) or
    ``"absent"`` (torchvision is not installed).
    """
    global _LIBRARY, _STATE
    if _STATE is not None:
        return _STATE
    if "torchvision" in sys.modules:
        _STATE = "native"
        return _STATE
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        _STATE = "absent"
        return _STATE

    import torch

    if _op_defined("nms"):
        _STATE = "native"
        return _STATE
    libs = sorted(Path(spec.origin).parent.glob("_C*.so")) + sorted(
        Path(spec.origin).parent.glob("_C*.pyd"))
    for lib in libs:
        try:
            torch.ops.load_library(str(lib))
        except (OSError, RuntimeError):
            continue
        if _op_defined("nms"):
            _STATE = "native"
            return _STATE

    _LIBRARY = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        if not _op_defined(op):
            _LIBRARY.define(f"{op}{_SCHEMA}")
    _STATE = "shimmed"
    return _STATE


def _op_defined(name: str) -> bool:
    import torch

    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True
