"""What every training method shares: batches, step output, the EMA teacher.

A method is a small ``nn.Module`` holding its networks (so one
``state_dict`` checkpoints them all) with one ``training_step``. The training
loop (:mod:`semiseg_helpers.train`) owns everything else — data, weak views,
optimiser steps, schedule, validation, checkpoints — so adding a method never
touches the loop, and an ablation is a config value. What a method needs
from the loop beyond one labelled and one unlabelled batch per step — several
labelled streams over parts of the labelled set, several unlabelled batches,
its own optimisers — it declares (:class:`Method`).
"""

from __future__ import annotations

import copy
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence, Union

import torch
from torch import Tensor, nn

from semiseg_helpers.config import TrainConfig, validate_config
from semiseg_helpers.models import create_model


@dataclass
class Batch:
    """A weak view on the training device: images float ``(B, 3, h, w)`` in
    [0, 1], labels long ``(B, h, w)`` (all ignore for unlabelled images), and
    ``valid`` bool ``(B, h, w)``: pixels that come from inside the image;
    ``source`` long ``(B,)``, when the loop knows it: which photo of its
    training list each image was cut from (tiles of one photo share it)."""

    images: Tensor
    labels: Tensor
    valid: Tensor
    source: Tensor | None = None


@dataclass
class StepOutput:
    """The loss to back-propagate and scalars to log (plain floats)."""

    loss: Tensor
    logs: dict[str, float] = field(default_factory=dict)


def build_network(config: TrainConfig, num_classes: int) -> nn.Module:
    """The configured segmentation network (encoder weights loaded if asked).

    Every option of ``config.model`` that is set reaches the network; one the
    architecture lacks is a ``ValueError`` (:meth:`ModelConfig.validate`).
    """
    m = validate_config(config).model
    options = m.options()
    if m.arch == "semisegdefect":
        options["rep_source"] = m.rep_source       # None: no representation head
    return create_model(m.arch, m.encoder, num_classes=num_classes, pretrained=m.pretrained,
                        **options)


def ema_decay(step: int, cap: float) -> float:
    """Mean-teacher decay at ``step`` (0-based): ``min(1 - 1/(step + 1), cap)``.

    0 at the first step (the teacher *is* the student), then a memory that
    lengthens as training goes on, up to ``1 / (1 - cap)`` steps.
    """
    return min(1.0 - 1.0 / (step + 1), cap)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``teacher = decay * teacher + (1 - decay) * student``, parameters and
    float buffers (BatchNorm statistics) alike; integer buffers are copied."""
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    torch._foreach_mul_(t_params, decay)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers()):
        if t.dtype.is_floating_point:
            t.mul_(decay).add_(s, alpha=1.0 - decay)
        else:
            t.copy_(s)


Batches = Union[Batch, tuple[Batch, ...]]
"""What a step gets from one kind of stream: a :class:`Batch`, or one per
stream, in order, when the method declares several."""


def encoder_head_groups(named: Sequence[tuple[str, nn.Parameter]], lr: float,
                        head_lr_scale: float = 1.0) -> list[dict]:
    """Parameter groups for an optimiser: with ``head_lr_scale`` 1, one group of
    every parameter at ``lr``; otherwise the encoder's parameters (those with an
    ``encoder`` module in their dotted name, whatever wraps the network) at
    ``lr`` first, and all others — decoder, classifier, heads — at ``lr ·
    head_lr_scale`` (UniMatch's recipe: 10× for everything its pretrained
    backbone lacks). A scale other than 1 with no parameter on either side is
    a ``ValueError``: the setting would have no effect."""
    if head_lr_scale == 1.0:
        return [{"params": [p for _, p in named], "lr": lr}]
    encoder, head = [], []
    for name, p in named:
        (encoder if "encoder" in name.split(".") else head).append(p)
    if not encoder or not head:
        raise ValueError(f"optim.head_lr_scale={head_lr_scale} needs encoder and non-encoder "
                         f"parameters; found {len(encoder)} and {len(head)}")
    return [{"params": encoder, "lr": lr}, {"params": head, "lr": lr * head_lr_scale}]


class Method(nn.Module, metaclass=ABCMeta):
    """Base class. Subclasses set ``uses_unlabelled`` and implement
    ``training_step`` and ``inference_model``.

    What the loop does for a method, and what a method may change by
    overriding (defaults: one stream of each kind, one AdamW):

    * :meth:`labelled_partition` — the labelled set's division into
      streams; every step the loop draws a full ``data.batch_size`` batch
      from each (Duo-SegNet: one per network, over disjoint halves);
    * :attr:`unlabelled_streams` — unlabelled batches per step, each
      ``data.unlabelled_batch_size`` from its own stream of the whole
      unlabelled set (UniMatch: 2, the second for its CutMix partners);
    * :meth:`optimizers` — the optimisers the loop steps after each
      backward, each under the poly schedule and each in the checkpoint.

    Streams start at any step (resume-exact) and each has its own seed.
    """

    uses_unlabelled: bool = False
    unlabelled_streams: int = 1
    """Unlabelled batches per step (if ``uses_unlabelled``); more than one
    reach :meth:`training_step` as a tuple."""

    def __init__(self, config: TrainConfig, num_classes: int):
        super().__init__()
        self.config = config
        self.num_classes = num_classes

    @abstractmethod
    def training_step(self, labelled: Batches, unlabelled: Batches | None, step: int,
                      generator: torch.Generator) -> StepOutput:
        """Losses for one step; the loop back-propagates ``loss``.

        ``labelled`` is one :class:`Batch`, or a tuple of one per labelled
        stream when :meth:`labelled_partition` gives several; ``unlabelled``
        likewise with :attr:`unlabelled_streams` (``None`` without
        ``uses_unlabelled``)."""

    def labelled_partition(self, sources: Sequence[int]) -> list[list[int]]:
        """Indices into the labelled training list, one list per labelled stream.

        ``sources`` gives each labelled sample's photo (tiles of one photo
        share it; :attr:`~semiseg_helpers.data.dataset.ManifestDataset.sources`).
        Default: one stream over the whole set.
        """
        return [list(range(len(sources)))]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_trainable_parameters()]

    def named_trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(name, p) for name, p in self.named_parameters() if p.requires_grad]

    def network_optimizer(self, named: Sequence[tuple[str, nn.Parameter]]
                          ) -> torch.optim.Optimizer:
        """``config.optim``'s optimiser (AdamW or SGD) over the ``named``
        parameters, in :func:`encoder_head_groups`."""
        o = self.config.optim
        groups = encoder_head_groups(named, o.lr, o.head_lr_scale)
        if o.name == "sgd":
            return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum,
                                   weight_decay=o.weight_decay)
        return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers by name; every trainable parameter in exactly one.

        The loop zeroes all, back-propagates the step's loss once, steps all,
        and runs the poly schedule on each (from each group's own initial
        lr). The first is the one whose lr the log calls ``lr`` (its first
        group's: the encoder's). Default: ``{"main": network_optimizer(every
        trainable parameter)}``.
        """
        return {"main": self.network_optimizer(self.named_trainable_parameters())}

    def after_optimizer_step(self, step: int) -> None:
        """Hook after each optimiser step (the mean teacher's EMA)."""

    @abstractmethod
    def inference_model(self) -> nn.Module:
        """The network validated, tested and saved as ``best.pt``."""


class MeanTeacherMixin:
    """A student and its EMA teacher (a frozen deep copy)."""

    student: nn.Module
    teacher: nn.Module

    def _make_teacher(self) -> None:
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()

    def train(self, mode: bool = True):  # the teacher always predicts in eval mode
        super().train(mode)  # type: ignore[misc]
        self.teacher.eval()
        return self

    def after_optimizer_step(self, step: int) -> None:
        ema_update(self.teacher, self.student, ema_decay(step, self.config.semi.ema_decay))

    def inference_model(self) -> nn.Module:
        """The teacher: the EMA of the student is the better and steadier model."""
        return self.teacher
