"""Test helper: ``semiseg train`` on networks whose BatchNorm layers are taken out.

Run as a script (``torchrun ... tests/ddp_no_batchnorm.py train ...``) it is
the command line with that change; :func:`patch` makes the same change in the
test's own process. Without BatchNorm, data-parallel training and one process
compute the same thing, up to the order of floating-point sums, so a test can
hold them to a tight tolerance (with BatchNorm each process normalises over
its own share of the batch, by design).
"""

from __future__ import annotations

import sys
from typing import Callable

from torch import nn


def without_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with each BatchNorm layer replaced by what follows it in the
    layer (timm's BatchNorm + activation keeps its activation), in place."""
    from timm.layers import BatchNormAct2d

    for name, child in module.named_children():
        if isinstance(child, BatchNormAct2d):
            setattr(module, name, nn.Sequential(child.drop, child.act))
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            without_batchnorm(child)
    return module


def patch(set_attribute: Callable = setattr) -> None:
    """Make every method build its networks without BatchNorm."""
    import semiseg_helpers.methods.base as base
    import semiseg_helpers.methods.semisegdefect as semisegdefect
    import semiseg_helpers.methods.supervised as supervised

    build = base.build_network

    def build_without_batchnorm(config, num_classes):
        return without_batchnorm(build(config, num_classes))

    for module in (base, semisegdefect, supervised):
        set_attribute(module, "build_network", build_without_batchnorm)


if __name__ == "__main__":
    import semiseg_helpers  # noqa: F401  (torchvision fix before timm imports)

    patch()
    from semiseg_helpers.cli import main

    sys.exit(main(sys.argv[1:]))
