"""Bringing labels to the representation's resolution without losing cracks.

The contrastive loss works on the decoder's embedding at 1/4 of the input
resolution, so labels (and the teacher's confidences) must be brought down
4x. Nearest-neighbour down-sampling keeps one pixel in every 4x4 block and
drops the other fifteen: a crack 1-3 px wide survives only where it happens
to cross a kept pixel, so most thin cracks vanish and the contrastive loss
never sees the class that needs it most (METHOD.md, "Known pitfalls").

:func:`downsample_labels` instead gives each low-resolution cell the
*highest-priority* class present anywhere in its block, cracks first. Thin
structures therefore survive as a chain of cells, and a cell that contains
any crack is a crack-boundary cell, exactly the mixed, hard region the
contrastive loss is meant to sharpen. The price is that thin classes grow
to whole cells (a 1 px crack becomes 4 px wide at full resolution), so the
low-resolution map over-represents them; that is acceptable here because
it only decides which embedding cells are anchors and keys, not what the
segmentation head is trained on.

Cost: one ``(B, C, H, W)`` float buffer and one adaptive max-pool, where
``C`` is the number of classes, e.g. 4 x 4 x 512 x 512 x 4 B = 16 MiB for a
batch of four 512 px crops.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from semiseg_helpers.classes import CLASS_NAMES, IGNORE_INDEX, class_index

__all__ = [
    "DEFAULT_PRIORITY",
    "block_min_of_class",
    "count_class_pixels",
    "downsample_labels",
    "downsample_labels_nearest",
]

DEFAULT_PRIORITY: tuple[str, ...] = ("crack", "rebar", "spalling", "background")
"""Thinnest and rarest first: cracks are 1-3 px, exposed rebar is a few bars
inside a spalled area, spalling is a region, background is everything else."""


def _check_labels(labels: Tensor) -> None:
    if labels.ndim != 3 or labels.dtype != torch.long:
        raise ValueError(f"labels must be a long tensor (B, H, W); got "
                         f"{tuple(labels.shape)} {labels.dtype}")


def _priority_indices(priority: Sequence[str]) -> list[int]:
    """Class indices in priority order; ``priority`` must list every class once."""
    indices = [class_index(name) for name in priority]
    if sorted(indices) != list(range(len(CLASS_NAMES))):
        raise ValueError(f"priority must list every class of {list(CLASS_NAMES)} "
                         f"exactly once; got {list(priority)}")
    return indices


def downsample_labels(
    labels: Tensor,
    size: tuple[int, int] | None = None,
    *,
    factor: int = 4,
    confidence: Tensor | None = None,
    priority: Sequence[str] = DEFAULT_PRIORITY,
) -> tuple[Tensor, Tensor | None]:
    """Down-sample labels so that every class present in a block keeps a say.

    Each output cell takes the highest-``priority`` class among the labelled
    pixels of its block; it is :data:`IGNORE_INDEX` only if the whole block
    is. If ``confidence`` ``(B, H, W)`` (values in ``[0, 1]``) is given, the
    cell's confidence is the *smallest* confidence among the block's pixels
    of the chosen class (:func:`block_min_of_class`): a cell is as reliable
    as its least reliable pixel of its own label, so one confident crack
    pixel cannot vouch for a whole cell of doubtful ones.

    ``size`` is the target ``(h, w)``: pass the representation's own size,
    since encoders differ in rounding. Without it the size is
    ``(H // factor, W // factor)``, what a stride-4 patchify stem without
    padding gives. Blocks are the adaptive-pooling bins, so when ``H`` is not
    a multiple of ``h`` they overlap by a pixel and no input row is dropped.

    Returns ``(labels_lo, conf_lo)``: long ``(B, h, w)`` and float
    ``(B, h, w)`` (``conf_lo`` is ``None`` without ``confidence``; it is 0
    in ignored cells).
    """
    _check_labels(labels)
    if confidence is not None and confidence.shape != labels.shape:
        raise ValueError(f"confidence must have the labels' shape {tuple(labels.shape)}; "
                         f"got {tuple(confidence.shape)}")
    if size is None:
        if factor < 1:
            raise ValueError(f"factor must be a positive integer; got {factor}")
        size = (max(labels.shape[1] // factor, 1), max(labels.shape[2] // factor, 1))
    order = torch.tensor(_priority_indices(priority), device=labels.device)

    # Channel k marks the k-th class in priority order; one max-pool then says
    # per cell and class whether the class is present.
    is_class = (labels[:, None] == order[None, :, None, None]).float()   # (B, C, H, W)
    present = F.adaptive_max_pool2d(is_class, size) > 0                # (B, C, h, w)
    # First present channel = highest priority; argmax returns the first
    # maximum, and a cell with nothing present is handled below.
    labels_lo = order[present.int().argmax(dim=1)]
    labels_lo = labels_lo.masked_fill(~present.any(dim=1), IGNORE_INDEX)
    if confidence is None:
        return labels_lo, None
    return labels_lo, block_min_of_class(confidence, labels, labels_lo)


def block_min_of_class(values: Tensor, labels: Tensor, labels_lo: Tensor) -> Tensor:
    """Per low-resolution cell, the smallest of ``values`` over the pixels of its
    block that carry the cell's own label.

    ``values`` and ``labels`` are ``(B, H, W)`` at full resolution, ``labels_lo``
    ``(B, h, w)`` (e.g. from :func:`downsample_labels`); blocks are the
    adaptive-pooling bins of ``(H, W)`` onto ``(h, w)``. This is how a cell is
    judged from full-resolution evidence: for a 1-2 px crack the crack pixels
    are a minority of their 4x4 block, so anything averaged over the block
    (logits, probabilities) speaks mostly for the background around it, while
    the minimum over the crack's own pixels is high exactly when every crack
    pixel of the cell is. Cells labelled :data:`IGNORE_INDEX` (or whose label
    no pixel of the block has, which :func:`downsample_labels` never gives)
    get 0.
    """
    _check_labels(labels)
    _check_labels(labels_lo)
    if values.shape != labels.shape:
        raise ValueError(f"values must have the labels' shape {tuple(labels.shape)}; "
                         f"got {tuple(values.shape)}")
    classes = len(CLASS_NAMES)
    onehot = labels[:, None] == torch.arange(classes, device=labels.device)[None, :, None, None]
    # min = -max(-x); pixels of other classes carry -inf after the negation.
    negated = torch.where(onehot, -values.float()[:, None], float("-inf"))
    block_min = -F.adaptive_max_pool2d(negated, tuple(labels_lo.shape[-2:]))   # (B, C, h, w)
    known = (labels_lo >= 0) & (labels_lo < classes)
    picked = block_min.gather(1, labels_lo.where(known, 0)[:, None])[:, 0]
    picked = torch.where(known & torch.isfinite(picked), picked, 0.0)
    return picked.to(values.dtype)


def downsample_labels_nearest(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour down-sampling (``F.interpolate``), the lossy baseline.

    Kept for comparison: report what it loses against :func:`downsample_labels`.
    """
    _check_labels(labels)
    sampled = F.interpolate(labels[:, None].float(), size=size, mode="nearest")
    return sampled[:, 0].long()


def count_class_pixels(labels: Tensor, num_classes: int = len(CLASS_NAMES)) -> Tensor:
    """Pixels per class, long ``(num_classes,)``; ignored and unknown values skipped.

    Compare ``count_class_pixels(downsample_labels(y, size)[0])`` with
    ``count_class_pixels(downsample_labels_nearest(y, size))`` to see how many
    crack cells reach the contrastive loss with and without the priority rule.
    """
    flat = labels.flatten()
    flat = flat[(flat >= 0) & (flat < num_classes)]
    return torch.bincount(flat, minlength=num_classes)
