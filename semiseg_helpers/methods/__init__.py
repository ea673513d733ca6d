"""Training methods by name: every method, ablation and baseline the loop runs."""

from __future__ import annotations

from semiseg_helpers.config import TrainConfig
from semiseg_helpers.methods.base import Batch, Method, StepOutput, ema_decay, ema_update
from semiseg_helpers.methods.semisegdefect import SemiSegDefect
from semiseg_helpers.methods.supervised import Supervised

METHODS: dict[str, type[Method]] = {
    "supervised": Supervised,
    "semisegdefect": SemiSegDefect,
}


def build_method(config: TrainConfig, num_classes: int) -> Method:
    """The method named by ``config.method``, with its networks built."""
    try:
        cls = METHODS[config.method]
    except KeyError:
        raise ValueError(f"unknown method {config.method!r}; choose one of "
                         f"{sorted(METHODS)}") from None
    return cls(config, num_classes)


__all__ = ["Batch", "METHODS", "Method", "StepOutput", "build_method", "ema_decay", "ema_update"]
