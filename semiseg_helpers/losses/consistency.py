"""Cross-entropy on labels and pseudo-labels, and the confidence weight w_u.

The total loss of Semi-SegDefect is ``sup + w_u * unsup + lambda_c * contrastive``
(METHOD.md, "Training"). These functions are the first two terms and the
weight. All of them return a finite scalar even when nothing qualifies: with
batch 2, an unlabelled image whose pseudo-labels are all below threshold is
an ordinary event, and a NaN there would poison the optimiser state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from semiseg_helpers.classes import IGNORE_INDEX

__all__ = ["confidence_fraction", "pseudo_label_ce", "supervised_ce"]


def _check_pair(logits: Tensor, targets: Tensor, name: str) -> None:
    if logits.ndim != 4 or targets.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"{name} must be (B, H, W) matching logits (B, C, H, W); got "
                         f"logits {tuple(logits.shape)}, {name} {tuple(targets.shape)}")


def confidence_fraction(confidence: Tensor, threshold: float = 0.97,
                        valid: Tensor | None = None) -> Tensor:
    """w_u: the fraction of (``valid``) pixels whose confidence exceeds ``threshold``.

    The unsupervised loss is scaled by how much of the teacher's output is
    already trustworthy, so it starts near zero and grows as the teacher
    improves (the paper's Table 4 turns this off). ``valid`` (bool, same
    shape) restricts the count to pixels that exist, e.g. excluding padding
    and the area outside a weak view's image. Carries no gradient; 0 when no
    pixel is valid.
    """
    if valid is not None and valid.shape != confidence.shape:
        raise ValueError(f"valid must have the confidence's shape {tuple(confidence.shape)}; "
                         f"got {tuple(valid.shape)}")
    confidence = confidence.detach()
    valid = torch.ones_like(confidence, dtype=torch.bool) if valid is None else valid
    above = (confidence > threshold) & valid
    return above.sum().float() / valid.sum().clamp(min=1).float()


def pseudo_label_ce(logits: Tensor, pseudo_labels: Tensor,
                    confidence: Tensor | None = None,
                    threshold: float | None = None) -> Tensor:
    """Mean cross-entropy over pixels with a usable (pseudo-)label.

    A pixel counts if its label is not :data:`IGNORE_INDEX` and, when
    ``threshold`` is given, its ``confidence`` exceeds it. The mean is over
    the counted pixels of the whole batch, so every kept pixel weighs the
    same. With no pixel counted the result is an exact 0 that still belongs
    to ``logits``' graph (``backward`` works, gradients are zero), never NaN.
    """
    _check_pair(logits, pseudo_labels, "pseudo_labels")
    keep = pseudo_labels != IGNORE_INDEX
    if threshold is not None:
        if confidence is None:
            raise ValueError("pseudo_label_ce: threshold given without confidence")
        _check_pair(logits, confidence, "confidence")
        keep = keep & (confidence > threshold)
    targets = pseudo_labels.masked_fill(~keep, IGNORE_INDEX)
    # in fp32 whatever the autocast dtype of the logits
    total = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / keep.sum().clamp(min=1)


def supervised_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over labelled pixels (:data:`IGNORE_INDEX` skipped).

    Same zero rule as :func:`pseudo_label_ce`: a crop that is all ignore
    gives an exact 0 with a gradient path, not NaN (``F.cross_entropy``'s own
    ``mean`` divides by zero there).
    """
    return pseudo_label_ce(logits, labels)
