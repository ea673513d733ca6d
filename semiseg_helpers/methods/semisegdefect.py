"""Semi-SegDefect: mean teacher + confidence-weighted pseudo-labels + pixel
contrast on hard pixels (the paper's Figure 1; METHOD.md).

One step, for a labelled weak view ``(x_l, y_l)`` and an unlabelled weak view
``x_u``:

1. the teacher (EMA of the student, eval mode) labels ``x_u``: pseudo-label
   = argmax, confidence = max softmax; pixels outside the image are ignored;
2. the strong view of ``x_u`` — colour jitter, blur, CutMix — moves the
   pseudo-labels and confidences with the same CutMix box;
3. the student sees ``[x_l, strong(x_u)]`` in one forward pass;
4. loss = CE(y_l) + w_u · CE(pseudo-labels) + λ_c · contrastive, where w_u is
   the fraction of pseudo-label pixels with confidence > 0.97
   (``semi.unsup_threshold``);
5. the contrastive loss runs on the 1/4-resolution representation over
   labelled pixels (confidence 1) and unlabelled pixels, its anchors the
   reliable-but-hard ones (teacher > 0.7, ``semi.weak_threshold``; student
   on the strong view < 0.97, ``semi.strong_threshold``), each cell judged
   from the full-resolution pixels of its own label.

Every switch of the ablations (Tables 3–8) is a field of
:class:`~semiseg_helpers.config.SemiConfig`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from semiseg_helpers.augment import strong_view
from semiseg_helpers.classes import IGNORE_INDEX
from semiseg_helpers.losses import (
    block_min_of_class,
    confidence_fraction,
    downsample_labels,
    downsample_labels_nearest,
    label_class_probability,
    pixel_contrastive_loss,
    pseudo_label_ce,
    supervised_ce,
)
from semiseg_helpers.methods.base import (
    Batch,
    MeanTeacherMixin,
    Method,
    StepOutput,
    build_network,
)


class SemiSegDefect(MeanTeacherMixin, Method):
    uses_unlabelled = True

    def __init__(self, config, num_classes):
        super().__init__(config, num_classes)
        s = config.semi
        if s.contrastive_loss and (config.model.arch != "semisegdefect"
                                   or config.model.rep_source is None):
            raise ValueError(f"the contrastive loss needs the semisegdefect network's "
                             f"representation; model.arch={config.model.arch!r} with "
                             f"model.rep_source={config.model.rep_source!r} has none "
                             "(set semi.contrastive_loss=false)")
        if s.label_downsampling not in ("priority", "nearest"):
            raise ValueError(f"semi.label_downsampling must be 'priority' or 'nearest', "
                             f"got {s.label_downsampling!r}")
        if not (s.supervised_loss or s.unsupervised_loss or s.contrastive_loss):
            raise ValueError("semi: every loss branch is switched off")
        self.student = build_network(config, num_classes)
        self._make_teacher()

    @torch.no_grad()
    def pseudo_label(self, unlabelled: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher's pseudo-labels and confidences on the weak view."""
        probs = self.teacher(unlabelled.images, return_rep=False).logits.float().softmax(1)
        confidence, labels = probs.max(1)
        labels = labels.masked_fill(~unlabelled.valid, IGNORE_INDEX)
        return labels, confidence * unlabelled.valid

    def training_step(self, labelled: Batch, unlabelled: Batch | None, step: int,
                      generator: torch.Generator) -> StepOutput:
        s = self.config.semi
        pseudo, confidence = self.pseudo_label(unlabelled)
        strong = strong_view(unlabelled.images, pseudo, confidence, generator=generator)
        n_l = labelled.images.shape[0]
        out = self.student(torch.cat([labelled.images, strong.images]),
                           return_rep=s.contrastive_loss)
        logits_l, logits_u = out.logits[:n_l], out.logits[n_l:]
        pseudo_s, conf_s = strong.labels, strong.confidences

        zero = out.logits.sum() * 0.0
        loss_sup = supervised_ce(logits_l, labelled.labels) if s.supervised_loss else zero
        w_u = (confidence_fraction(conf_s, s.unsup_threshold, valid=pseudo_s != IGNORE_INDEX)
               if s.unsup_weight == "confidence" else torch.tensor(float(s.unsup_weight)))
        loss_unsup = pseudo_label_ce(logits_u, pseudo_s) if s.unsupervised_loss else zero
        logs = {}
        loss_con = zero
        if s.contrastive_loss:
            result = self.contrastive(out.rep, out.logits, labelled.labels, pseudo_s, conf_s,
                                      generator)
            loss_con = result.loss
            logs.update(anchors=float(result.num_anchors),
                        contrast_classes=float(result.num_classes))
        loss = loss_sup + w_u * loss_unsup + s.contrastive_weight * loss_con
        logs.update(loss_sup=loss_sup.item(), loss_unsup=loss_unsup.item(),
                    loss_contrast=loss_con.item(), w_u=float(w_u),
                    pseudo_conf=float(confidence[unlabelled.valid].mean())
                    if unlabelled.valid.any() else 0.0)
        return StepOutput(loss, logs)

    def contrastive(self, rep, logits, labels_l, pseudo_s, conf_s, generator):
        """The contrastive term on the representation's grid.

        Labels reach the 1/4 grid by class-priority pooling (a block with any
        crack pixel is crack) unless ``label_downsampling="nearest"``: nearest
        sampling keeps one pixel in sixteen and erases 1–3 px cracks.

        Each cell is judged from full-resolution evidence about its own label
        (:func:`~semiseg_helpers.losses.block_min_of_class`): it is reliable if
        the teacher is confident on every pixel of that label in the block,
        and hard if the student's probability of that label, on the strong
        view, is below ``strong_threshold`` on any of them. Judged from
        logits averaged over the block, every cell of a 1–2 px crack looked
        hard even to a perfectly confident student (the crack pixels are a
        minority of their block), so crack anchors were drawn at random.
        """
        s = self.config.semi
        size = tuple(rep.shape[-2:])
        labels = torch.cat([labels_l, pseudo_s])
        conf = torch.cat([torch.ones_like(labels_l, dtype=conf_s.dtype)
                          .masked_fill(labels_l == IGNORE_INDEX, 0), conf_s])
        student = label_class_probability(logits.detach().float(), labels)
        if s.label_downsampling == "priority":
            labels_lo, conf_lo = downsample_labels(labels, size, confidence=conf)
            strong_lo = block_min_of_class(student, labels, labels_lo)
        else:
            labels_lo = downsample_labels_nearest(labels, size)
            conf_lo, strong_lo = (
                F.interpolate(x[:, None].float(), size=size, mode="nearest")[:, 0]
                for x in (conf, student))
        return pixel_contrastive_loss(
            rep.float(), labels_lo, conf_lo, strong_lo, num_anchors=s.num_anchors,
            num_negatives=s.num_negatives, temperature=s.temperature,
            weak_threshold=s.weak_threshold, strong_threshold=s.strong_threshold,
            active_query=s.active_query, active_key=s.active_key,
            num_classes=self.num_classes, generator=generator)
