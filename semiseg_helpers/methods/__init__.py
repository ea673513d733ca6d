"""Training methods by name: every method, ablation and baseline the loop runs.

A method name picks a :class:`~semiseg_helpers.methods.base.Method` class;
the fully supervised baselines of the paper's Table 9 are the supervised
method on segmentation-models-pytorch networks, so their names also fix
``model.arch``.
"""

from __future__ import annotations

from semiseg_helpers.config import METHOD_ARCH, TrainConfig, resolve_method_config
from semiseg_helpers.methods.base import Batch, Method, StepOutput, ema_decay, ema_update
from semiseg_helpers.methods.duosegnet import DuoSegNet
from semiseg_helpers.methods.semisegdefect import SemiSegDefect
from semiseg_helpers.methods.supervised import Supervised
from semiseg_helpers.methods.unimatch import UniMatch

METHODS: dict[str, type[Method]] = {
    "supervised": Supervised,
    "semisegdefect": SemiSegDefect,
    "fpn": Supervised,
    "deeplabv3plus": Supervised,
    "unimatch": UniMatch,
    "duosegnet": DuoSegNet,
}


def build_method(config: TrainConfig, num_classes: int) -> Method:
    """The method named by ``config.method``, with its networks built."""
    try:
        cls = METHODS[config.method]
    except KeyError:
        raise ValueError(f"unknown method {config.method!r}; choose one of "
                         f"{sorted(METHODS)}") from None
    return cls(resolve_method_config(config), num_classes)


__all__ = ["Batch", "METHODS", "METHOD_ARCH", "Method", "StepOutput", "build_method",
           "ema_decay", "ema_update", "resolve_method_config"]
