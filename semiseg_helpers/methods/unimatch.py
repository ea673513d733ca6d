"""UniMatch (Yang et al., CVPR 2023): FixMatch-style weak-to-strong consistency
with two strong views and a feature-perturbation stream — a Table 9 baseline.

One network, no teacher. One step, for a labelled weak view ``(x_l, y_l)``
and an unlabelled weak view ``x_u``:

1. the network sees ``x_u`` once with ``perturb=True``: one encoder pass,
   decoded twice — clean (``p_w``) and with ``Dropout2d(0.5)`` on the encoder
   features (``p_fp``, the paper's feature-perturbation stream);
2. pseudo-labels and confidences come from ``p_w``, with no gradient;
3. two strong views of ``x_u``, each with its own colour jitter, blur and
   CutMix box, move the pseudo-labels and confidences with their box;
4. the network sees ``[x_l, strong_1, strong_2]`` in one pass;
5. loss = (sup + 0.25·CE(s1) + 0.25·CE(s2) + 0.5·CE(fp)) / 2, each
   unsupervised CE counting pixels whose confidence is >= 0.95.

Two forward passes per step, as in UniMatch's own implementation, but the
perturbed pass runs on the unlabelled images only.

Pseudo-labels come from the network in **training mode**, from the same
encoder pass as the perturbed stream. That is what the paper's equations say
(``p_w`` and ``p_fp`` share ``E(x_w)``) and what its implementation does for
the batch's own pseudo-labels; its separate eval-mode, no-grad prediction is
only for the second unlabelled batch it draws CutMix partners from. Here
CutMix partners are other images of the same batch
(:func:`~semiseg_helpers.augment.cutmix` rolls the batch), whose
pseudo-labels are already at hand, so no eval-mode pass is needed and the
network never leaves training mode.

Strong augmentation is the shared :class:`~semiseg_helpers.augment.StrongAugmentConfig`
(the same as Semi-SegDefect's), so Table 9 compares methods, not augmentations.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from semiseg_helpers.augment import CutMixResult, StrongAugmentConfig, strong_view
from semiseg_helpers.classes import IGNORE_INDEX
from semiseg_helpers.losses import supervised_ce
from semiseg_helpers.methods.base import Batch, Method, StepOutput, build_network

__all__ = ["UniMatch", "pseudo_labels", "thresholded_pseudo_ce"]


@torch.no_grad()
def pseudo_labels(logits: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Hard pseudo-labels (argmax) and confidences (max softmax) from ``logits``.

    Pixels outside the image (``valid`` False) get :data:`IGNORE_INDEX` and
    confidence 0, so they never count, whatever CutMix does with them later.
    Computed without gradient: the targets must not be pulled towards the
    prediction they supervise.
    """
    confidence, labels = logits.detach().float().softmax(1).max(1)
    return labels.masked_fill(~valid, IGNORE_INDEX), confidence * valid


def thresholded_pseudo_ce(logits: Tensor, labels: Tensor, confidence: Tensor,
                          threshold: float) -> Tensor:
    """UniMatch's unsupervised CE: confident pixels' CE over *all* valid pixels.

    ``sum over pixels with label != ignore and confidence >= threshold of CE``
    divided by ``the number of pixels with label != ignore``. This is the
    FixMatch objective the paper writes (the indicator ``1(max p_w >= tau)``
    sits inside the mean over pixels) and what UniMatch's implementation
    computes; it is *not* a mean over the confident pixels alone
    (:func:`~semiseg_helpers.losses.pseudo_label_ce` with a threshold), so the
    term grows with the confident fraction and is small while few pixels
    pass. The threshold is inclusive (``>=``), as in UniMatch. A finite 0
    with a gradient path when no pixel is valid.
    """
    if logits.ndim != 4 or labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"labels must be (B, H, W) matching logits (B, C, H, W); got "
                         f"logits {tuple(logits.shape)}, labels {tuple(labels.shape)}")
    if confidence.shape != labels.shape:
        raise ValueError(f"confidence must have the labels' shape {tuple(labels.shape)}; "
                         f"got {tuple(confidence.shape)}")
    valid = labels != IGNORE_INDEX
    keep = valid & (confidence >= threshold)
    targets = labels.masked_fill(~keep, IGNORE_INDEX)
    total = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / valid.sum().clamp(min=1)


class UniMatch(Method):
    """UniMatch on the configured network (which must be ``semisegdefect``:
    feature perturbation needs its ``forward(perturb=True)``).

    The constants are UniMatch's published values; they are class attributes
    rather than :class:`~semiseg_helpers.config.SemiConfig` fields because
    ``semi.strong_threshold`` (0.97) is Semi-SegDefect's, not UniMatch's.
    """

    uses_unlabelled = True

    CONF_THRESHOLD: ClassVar[float] = 0.95
    """Pseudo-label confidence a pixel needs (inclusive) to count in s1, s2 and fp."""
    STRONG_WEIGHT: ClassVar[float] = 0.25
    """Weight of each strong view's CE (two views: 0.5 in all)."""
    FP_WEIGHT: ClassVar[float] = 0.5
    """Weight of the feature-perturbation stream's CE."""
    LOSS_DIVISOR: ClassVar[float] = 2.0
    """The sum of supervised (weight 1) and unsupervised (weights 0.5 + 0.5 = 1) terms is halved."""
    STRONG_AUGMENT: ClassVar[StrongAugmentConfig] = StrongAugmentConfig()
    """Each strong view's colour jitter, blur and CutMix (shared with Semi-SegDefect)."""

    def __init__(self, config, num_classes):
        super().__init__(config, num_classes)
        if config.model.arch != "semisegdefect":
            raise ValueError(f"unimatch needs model.arch='semisegdefect' for its feature "
                             f"perturbation stream; got model.arch={config.model.arch!r}")
        self.student = build_network(config, num_classes)

    @classmethod
    def combine(cls, loss_sup: Tensor, loss_s1: Tensor, loss_s2: Tensor,
                loss_fp: Tensor) -> Tensor:
        """``(sup + 0.25·s1 + 0.25·s2 + 0.5·fp) / 2``: supervised and unsupervised
        halves weigh the same."""
        unsup = cls.STRONG_WEIGHT * (loss_s1 + loss_s2) + cls.FP_WEIGHT * loss_fp
        return (loss_sup + unsup) / cls.LOSS_DIVISOR

    def strong_views(self, images: Tensor, labels: Tensor, confidence: Tensor,
                     generator: torch.Generator) -> tuple[CutMixResult, CutMixResult]:
        """Two strong views of the unlabelled weak view, drawn one after the other
        from ``generator``: each its own jitter, blur and CutMix box."""
        first = strong_view(images, labels, confidence, config=self.STRONG_AUGMENT,
                            generator=generator)
        second = strong_view(images, labels, confidence, config=self.STRONG_AUGMENT,
                             generator=generator)
        return first, second

    def training_step(self, labelled: Batch, unlabelled: Batch | None, step: int,
                      generator: torch.Generator) -> StepOutput:
        if unlabelled is None:
            raise ValueError("unimatch needs an unlabelled batch")
        weak = self.student(unlabelled.images, perturb=True, return_rep=False)
        labels_w, conf_w = pseudo_labels(weak.logits, unlabelled.valid)
        s1, s2 = self.strong_views(unlabelled.images, labels_w, conf_w, generator)

        n_l, n_u = labelled.images.shape[0], unlabelled.images.shape[0]
        logits = self.student(torch.cat([labelled.images, s1.images, s2.images]),
                              return_rep=False).logits
        logits_l, logits_s1, logits_s2 = logits.split([n_l, n_u, n_u])

        t = self.CONF_THRESHOLD
        loss_sup = supervised_ce(logits_l, labelled.labels)
        loss_s1 = thresholded_pseudo_ce(logits_s1, s1.labels, s1.confidences, t)
        loss_s2 = thresholded_pseudo_ce(logits_s2, s2.labels, s2.confidences, t)
        loss_fp = thresholded_pseudo_ce(weak.logits_fp, labels_w, conf_w, t)
        loss = self.combine(loss_sup, loss_s1, loss_s2, loss_fp)

        valid = labels_w != IGNORE_INDEX
        mask_ratio = ((conf_w >= t) & valid).sum() / valid.sum().clamp(min=1)
        return StepOutput(loss, {"loss_sup": loss_sup.item(), "loss_s1": loss_s1.item(),
                                 "loss_s2": loss_s2.item(), "loss_fp": loss_fp.item(),
                                 "mask_ratio": mask_ratio.item()})

    def inference_model(self):
        """The one network (UniMatch keeps no EMA teacher)."""
        return self.student
