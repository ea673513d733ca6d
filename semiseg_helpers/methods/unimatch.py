"""UniMatch (Yang et al., CVPR 2023): FixMatch-style weak-to-strong consistency
with two strong views and a feature-perturbation stream — a Table 9 baseline.

One network, no teacher. Every setting is in ``config.unimatch``
(:class:`~semiseg_helpers.config.UniMatchConfig`). One step, for a labelled
weak view ``(x_l, y_l)`` and *two* unlabelled weak views, ``x_u`` and a
second batch ``x_m`` that supplies the CutMix partners (UniMatch draws it
from a separate "mix" loader; here the loop's second unlabelled stream,
:attr:`UniMatch.unlabelled_streams`):

1. the network, in **eval mode** and without gradient, labels ``x_m``:
   pseudo-labels and confidences of the partners (then it goes back to
   training mode) — as UniMatch's implementation does for its mix batch;
2. the network (training mode) sees ``x_u`` once with ``perturb=True``: one
   encoder pass, decoded twice — clean (``p_w``) and with ``Dropout2d(0.5)``
   on the encoder features (``p_fp``, the feature-perturbation stream);
3. pseudo-labels and confidences of ``x_u`` come from ``p_w``, detached
   (the paper's equations: ``p_w`` and ``p_fp`` share ``E(x_w)``);
4. two strong views, UniMatch's published augmentation, each drawn on its
   own for ``x_u`` and for ``x_m``: colour jitter (brightness, contrast,
   saturation 0.5, hue 0.25) with p 0.8, greyscale with p 0.2, Gaussian
   blur (sigma ~ U(0.1, 2.0)) with p 0.5; then with p 0.5 a CutMix box
   (2–40 % of the crop, height/width 0.3–1/0.3) pastes image ``i`` of the
   strong ``x_m`` into image ``i`` of the strong ``x_u``, and its
   pseudo-labels and confidences into ``x_u``'s;
5. the network sees ``[x_l, strong_1, strong_2]`` in one pass;
6. loss = (sup + 0.25·CE(s1) + 0.25·CE(s2) + 0.5·CE(fp)) / 2, each
   unsupervised CE counting pixels whose confidence is >= 0.95.

This strong augmentation is UniMatch's own, not Semi-SegDefect's shared
strong view (:class:`~semiseg_helpers.augment.StrongAugmentConfig` defaults):
the baseline runs as its authors run it. It is built from the same batched
pieces of :mod:`semiseg_helpers.augment`, with three small differences from
torchvision/PIL: the hue shift is a rotation of the YIQ chroma plane rather
than an HSV shift, the jitter's four operations run in a fixed order
rather than a random one, and the box's aspect ratio is drawn log-uniform
rather than uniform-with-rejection.

Three forward passes per step, as in UniMatch's implementation: the
eval-mode pass on ``x_m``, the perturbed pass (here on the unlabelled
images only) and the pass on labelled and strong images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    feature perturbation needs its ``forward(perturb=True)``). Settings:
    ``config.unimatch``; ``semi`` is Semi-SegDefect's, not UniMatch's."""

    uses_unlabelled = True
    unlabelled_streams = 2
    """The batch it learns from and the batch its CutMix partners come from."""

    def __init__(self, config, num_classes):
        super().__init__(config, num_classes)
        if config.model.arch != "semisegdefect":
            raise ValueError(f"unimatch needs model.arch='semisegdefect' for its feature "
                             f"perturbation stream; got model.arch={config.model.arch!r}")
        u = config.unimatch
        if not 0.0 <= u.fp_dropout < 1.0:
            raise ValueError(f"unimatch.fp_dropout must be in [0, 1), got {u.fp_dropout}")
        if u.loss_divisor <= 0:
            raise ValueError(f"unimatch.loss_divisor must be positive, got {u.loss_divisor}")
        # the representation head serves only Semi-SegDefect's contrastive loss
        self.student = build_network(config, num_classes)
        self.student.fp_dropout = u.fp_dropout
        # each strong view's augmentation
        self.augment = StrongAugmentConfig(
            brightness=u.brightness, contrast=u.contrast, saturation=u.saturation, hue=u.hue,
            jitter_p=u.jitter_p, grey_p=u.grey_p, blur_sigma_range=tuple(u.blur_sigma_range),
            blur_p=u.blur_p, cutmix_p=u.cutmix_p, cutmix_area_range=tuple(u.cutmix_area_range),
            cutmix_aspect_range=tuple(u.cutmix_aspect_range))

    def combine(self, loss_sup: Tensor, loss_s1: Tensor, loss_s2: Tensor,
                loss_fp: Tensor) -> Tensor:
        """``(sup + 0.25·s1 + 0.25·s2 + 0.5·fp) / 2`` (the configured weights):
        supervised and unsupervised halves weigh the same."""
        u = self.config.unimatch
        unsup = u.strong_weight * (loss_s1 + loss_s2) + u.fp_weight * loss_fp
        return (loss_sup + unsup) / u.loss_divisor

    @torch.no_grad()
    def mix_pseudo_labels(self, mix: Batch) -> tuple[Tensor, Tensor]:
        """Pseudo-labels and confidences of the CutMix partners: the network in
        eval mode (BatchNorm's running statistics, no dropout), no gradient;
        the network's mode is restored afterwards."""
        was_training = self.student.training
        self.student.eval()
        try:
            logits = self.student(mix.images, return_rep=False).logits
        finally:
            self.student.train(was_training)
        return pseudo_labels(logits, mix.valid)

    def strong_views(self, images: Tensor, labels: Tensor, confidence: Tensor,
                     mix_images: Tensor, mix_labels: Tensor, mix_confidence: Tensor,
                     generator: torch.Generator) -> tuple[CutMixResult, CutMixResult]:
        """Two strong views of the unlabelled weak view, drawn one after the other
        from ``generator``: each its own photometric noise (for the images and,
        separately, for their partners ``mix_images``) and its own CutMix box,
        whose content, pseudo-labels and confidences come from the partners."""
        def view() -> CutMixResult:
            return strong_view(images, labels, confidence, config=self.augment,
                               partner_images=mix_images, partner_labels=mix_labels,
                               partner_confidences=mix_confidence, generator=generator)

        first = view()
        return first, view()

    def training_step(self, labelled: Batch, unlabelled: tuple[Batch, Batch] | None, step: int,
                      generator: torch.Generator) -> StepOutput:
        if not isinstance(unlabelled, tuple) or len(unlabelled) != 2:
            raise ValueError("unimatch needs two unlabelled batches per step: the batch it "
                             "learns from and the one its CutMix partners come from")
        main, mix = unlabelled
        labels_mix, conf_mix = self.mix_pseudo_labels(mix)
        weak = self.student(main.images, perturb=True, return_rep=False)
        labels_w, conf_w = pseudo_labels(weak.logits, main.valid)
        s1, s2 = self.strong_views(main.images, labels_w, conf_w, mix.images, labels_mix,
                                   conf_mix, generator)

        n_l, n_u = labelled.images.shape[0], main.images.shape[0]
        logits = self.student(torch.cat([labelled.images, s1.images, s2.images]),
                              return_rep=False).logits
        logits_l, logits_s1, logits_s2 = logits.split([n_l, n_u, n_u])

        t = self.config.unimatch.conf_threshold
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

    def inference_model(self) -> nn.Module:
        return self.student
