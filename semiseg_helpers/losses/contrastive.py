"""Pixel-level contrastive loss with active query and key sampling (ReCo-style).

Implemented from the descriptions in the ReCo paper (Liu et al., ICLR 2022)
and METHOD.md; no code is taken from ReCo's repository.

The loss pulls hard pixels of each class towards their class's mean
embedding and pushes them away from pixels of other classes:

1. *Valid pixels* have a label (ground truth or pseudo-label) and a
   weak-view confidence above ``weak_threshold`` (1.0 for ground truth).
   The classes with at least one valid pixel form the set C.
2. *Positive key* of class c: the mean embedding of its valid pixels (as
   ReCo describes it: the class's mean representation), compared with the
   queries by cosine similarity like every key.
3. *Queries (anchors)*: up to ``num_anchors`` pixels per class, drawn
   uniformly from the class's valid pixels that the student still finds
   hard (strong-view confidence below ``strong_threshold``; "active
   query") or from all of its valid pixels ("random query"). ReCo draws a
   fixed ``num_anchors`` per class *with* replacement; here they are drawn
   *without* replacement, so a class with fewer hard pixels has fewer
   anchors. The per-class mean below makes both the same estimate of the
   class's expected InfoNCE term (identical once a class has
   ``num_anchors`` hard pixels); without replacement it has the lower
   variance and no duplicated queries.
4. *Negative keys*: ``num_negatives`` per anchor, from valid pixels of other
   classes. Active key: the class of each key is drawn from a softmax over
   the cosine similarity between the anchor class's mean and the other
   classes' means (divided by the temperature), so confusable classes give
   most negatives; then a pixel of that class uniformly. Random key: a
   uniform valid pixel of any other class.
5. InfoNCE: ``-log(exp(q.k+/T) / (exp(q.k+/T) + sum_k exp(q.k-/T)))`` with
   cosine similarities, averaged over the anchors of each class, summed
   over the classes and divided by ``|C|``, the number of valid classes
   (as in ReCo): a class with few hard pixels counts as much as one with
   many, and a valid class with no hard pixel left adds 0, so the term
   shrinks as the student masters the classes.

Keys (positive and negative) are detached: gradients reach the
representation only through the queries.

Cost: the negative logits are read out of one ``(M, V)`` similarity matrix
between the ``M`` anchors and the ``V`` valid pixels, instead of gathering
an ``(M, K, D)`` tensor of keys. For the paper's setting (4 classes x 256
anchors, 4 maps of 128 x 128, 256-d) that is 256 MiB transient against
512 MiB kept for backward, and one matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from semiseg_helpers._random import multinomial, rand, randperm
from semiseg_helpers.classes import IGNORE_INDEX, NUM_CLASSES

__all__ = [
    "AnchorSelection",
    "ContrastiveResult",
    "label_class_probability",
    "negative_class_probabilities",
    "pixel_contrastive_loss",
    "select_anchors",
]


@dataclass(frozen=True)
class AnchorSelection:
    """Anchors drawn by :func:`select_anchors`.

    ``index`` (long ``(M,)``) are flat indices into ``labels.flatten()``
    (``b * h * w + y * w + x``), grouped by class in increasing class order;
    ``classes`` (``(M,)``) is each anchor's class; ``per_class``
    (``(num_classes,)``) the number drawn per class.
    """

    index: Tensor
    classes: Tensor
    per_class: Tensor


@dataclass(frozen=True)
class ContrastiveResult:
    """The loss and what it was computed from (for logging and tests).

    ``loss`` is a scalar on ``rep``'s graph (exactly 0 when fewer than two
    classes are valid or no class has an anchor). ``num_anchors`` and
    ``num_classes`` (``|C|``) are plain ints for logging.
    ``negative_index`` (long ``(M, num_negatives)``) holds flat pixel
    indices like ``anchors.index``.
    """

    loss: Tensor
    num_anchors: int
    num_classes: int
    anchors: AnchorSelection
    negative_index: Tensor


def label_class_probability(logits: Tensor, labels: Tensor) -> Tensor:
    """The student's softmax probability of each pixel's label class, detached.

    This is the ``strong_conf`` to pass to :func:`pixel_contrastive_loss`
    (computed on the strong view, at the representation's resolution). It
    measures "does the student already agree with the label": a pixel the
    student confidently gives to the *wrong* class has a low value and so
    is a hard anchor, whereas its max-softmax confidence would be high and
    would wrongly mark it easy. Ignored pixels get 0.
    """
    if logits.ndim != 4 or labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"labels must be (B, h, w) matching logits (B, C, h, w); got "
                         f"logits {tuple(logits.shape)}, labels {tuple(labels.shape)}")
    known = (labels >= 0) & (labels < logits.shape[1])
    probs = logits.detach().softmax(dim=1)
    picked = probs.gather(1, labels.where(known, 0)[:, None])[:, 0]
    return picked * known


def select_anchors(candidates: Tensor, labels: Tensor, *, num_classes: int = NUM_CLASSES,
                   num_anchors: int = 256,
                   generator: torch.Generator | None = None) -> AnchorSelection:
    """Up to ``num_anchors`` anchors per class, uniformly without replacement.

    ``candidates`` (bool, ``labels``' shape) marks the eligible pixels.
    One random permutation of all pixels followed by a stable sort on the
    class groups the candidates by class in random order; the first
    ``min(count, num_anchors)`` of each group are the anchors. No loop over
    pixels or classes.
    """
    if candidates.shape != labels.shape:
        raise ValueError(f"candidates must have the labels' shape {tuple(labels.shape)}; "
                         f"got {tuple(candidates.shape)}")
    if num_anchors < 1:
        raise ValueError(f"num_anchors must be positive; got {num_anchors}")
    device = labels.device
    flat_labels = labels.flatten()
    eligible = candidates.flatten() & (flat_labels >= 0) & (flat_labels < num_classes)
    group = flat_labels.where(eligible, num_classes)        # non-candidates sort last

    shuffle = randperm(group.numel(), generator, device)
    order = shuffle[torch.argsort(group[shuffle], stable=True)]
    counts = torch.bincount(group, minlength=num_classes + 1)[:num_classes]
    starts = torch.cumsum(counts, 0) - counts
    taken = counts.clamp(max=num_anchors)

    slot = torch.arange(num_anchors, device=device)
    chosen = slot[None, :] < taken[:, None]                  # (C, num_anchors)
    positions = (starts[:, None] + slot[None, :])[chosen]
    classes = torch.arange(num_classes, device=device)[:, None].expand_as(chosen)[chosen]
    return AnchorSelection(index=order[positions], classes=classes, per_class=taken)


def negative_class_probabilities(class_means: Tensor, present: Tensor, counts: Tensor, *,
                                 active: bool, temperature: float) -> Tensor:
    """``(C, C)`` distribution of a negative key's class, per anchor class (row).

    Only present classes other than the row's own get mass. Active: softmax
    of the cosine similarity between class means over ``temperature``, so
    the classes the embedding confuses with the anchor's give most keys.
    Random: proportional to the classes' valid pixel counts, i.e. a uniform
    pixel among all other-class valid pixels. Rows of classes that are
    absent, or that have no other present class, are meaningless (and may be
    NaN); callers only use rows of anchor classes when ``|C| >= 2``.
    """
    num_classes = class_means.shape[0]
    allowed = present[None, :] & ~torch.eye(num_classes, dtype=torch.bool,
                                             device=present.device)
    if active:
        means = F.normalize(class_means, dim=1)
        logits = (means @ means.T) / temperature
        return logits.masked_fill(~allowed, float("-inf")).softmax(dim=1)
    weights = counts[None, :].float() * allowed
    return weights / weights.sum(dim=1, keepdim=True)


def pixel_contrastive_loss(
    rep: Tensor,
    labels: Tensor,
    weak_conf: Tensor,
    strong_conf: Tensor,
    valid: Tensor | None = None,
    *,
    num_anchors: int = 256,
    num_negatives: int = 512,
    temperature: float = 0.5,
    weak_threshold: float = 0.7,
    strong_threshold: float = 0.97,
    active_query: bool = True,
    active_key: bool = True,
    num_classes: int = NUM_CLASSES,
    generator: torch.Generator | None = None,
) -> ContrastiveResult:
    """Pixel contrastive loss of the student's embedding (see module docstring).

    Args:
        rep: ``(B, D, h, w)`` student embedding; gradients flow to it.
        labels: long ``(B, h, w)`` at the same resolution (ground truth for
            labelled images, teacher pseudo-labels for unlabelled ones;
            see :func:`~semiseg_helpers.losses.labels.downsample_labels`).
        weak_conf: ``(B, h, w)`` teacher confidence on the weak view, 1.0 for
            ground-truth pixels; valid pixels need ``> weak_threshold``.
        strong_conf: ``(B, h, w)`` student probability of the label class on
            the strong view (:func:`label_class_probability`); active
            anchors need ``< strong_threshold``.
        valid: optional bool ``(B, h, w)``; ``False`` excludes a pixel
            (padding, outside a weak view's image).
        num_anchors, num_negatives: per class, per anchor.
        active_query, active_key: hard anchors / similarity-weighted keys;
            ``False`` samples them uniformly (the paper's Table 5).
    """
    _check_inputs(rep, labels, weak_conf, strong_conf, valid)
    if num_negatives < 1 or temperature <= 0:
        raise ValueError(f"num_negatives must be positive and temperature > 0; got "
                         f"{num_negatives}, {temperature}")
    dim = rep.shape[1]
    device = rep.device
    flat_labels = labels.flatten()
    is_valid = ((flat_labels != IGNORE_INDEX) & (flat_labels >= 0)
                & (flat_labels < num_classes) & (weak_conf.flatten() > weak_threshold))
    if valid is not None:
        is_valid &= valid.flatten()

    feats = F.normalize(rep.permute(0, 2, 3, 1).reshape(-1, dim), dim=1)   # (N, D)
    keys = feats.detach()
    valid_index = is_valid.nonzero()[:, 0]                                 # (V,)
    valid_labels = flat_labels[valid_index]
    counts = torch.bincount(valid_labels, minlength=num_classes)
    present = counts > 0
    num_present = int(present.sum())

    def nothing_to_contrast(anchors: AnchorSelection) -> ContrastiveResult:
        # Exactly 0 yet on rep's graph, so callers can always add and backward.
        return ContrastiveResult(
            loss=rep.sum() * 0.0, num_anchors=0, num_classes=num_present, anchors=anchors,
            negative_index=torch.empty(0, num_negatives, dtype=torch.long, device=device))

    if num_present < 2:
        no_anchors = torch.empty(0, dtype=torch.long, device=device)
        return nothing_to_contrast(AnchorSelection(
            index=no_anchors, classes=no_anchors,
            per_class=torch.zeros(num_classes, dtype=torch.long, device=device)))

    if active_query:
        candidates = is_valid & (strong_conf.flatten() < strong_threshold)
    else:
        candidates = is_valid
    anchors = select_anchors(candidates.view_as(labels), labels, num_classes=num_classes,
                             num_anchors=num_anchors, generator=generator)
    num_drawn = anchors.index.numel()
    if num_drawn == 0:
        return nothing_to_contrast(anchors)

    # Positive keys: class means of the embeddings over valid pixels.
    sums = torch.zeros(num_classes, dim, device=device, dtype=keys.dtype)
    sums.index_add_(0, valid_labels, rep.detach().permute(0, 2, 3, 1).reshape(-1, dim)[valid_index])
    class_means = sums / counts.clamp(min=1)[:, None]

    # Negative keys: a class per key, then a uniform valid pixel of it.
    # Valid pixels sorted by class make "pixel j of class c" an offset.
    by_class = valid_index[torch.argsort(valid_labels, stable=True)]       # (V,)
    starts = torch.cumsum(counts, 0) - counts
    class_probs = negative_class_probabilities(class_means, present, counts,
                                               active=active_key, temperature=temperature)
    neg_class = multinomial(class_probs[anchors.classes], num_negatives, generator)
    neg_counts = counts[neg_class]
    pick = (rand(tuple(neg_class.shape), generator, device) * neg_counts).long()
    neg_slot = starts[neg_class] + torch.minimum(pick, neg_counts - 1)    # (M, K)
    sorted_keys = keys[by_class]                                          # (V, D)

    queries = feats[anchors.index]                                        # (M, D)
    positive = (queries * F.normalize(class_means, dim=1)[anchors.classes]).sum(dim=1)
    negative = (queries @ sorted_keys.T).gather(1, neg_slot)              # (M, K)
    logits = torch.cat([positive[:, None], negative], dim=1) / temperature
    target = torch.zeros(num_drawn, dtype=torch.long, device=device)
    per_anchor = F.cross_entropy(logits, target, reduction="none")

    per_class_sum = torch.zeros(num_classes, device=device, dtype=per_anchor.dtype)
    per_class_sum = per_class_sum.index_add(0, anchors.classes, per_anchor)
    per_class_mean = per_class_sum / anchors.per_class.clamp(min=1)
    loss = per_class_mean.sum() / num_present

    negative_index = by_class[neg_slot]
    return ContrastiveResult(loss=loss, num_anchors=num_drawn, num_classes=num_present,
                             anchors=anchors, negative_index=negative_index)


def _check_inputs(rep: Tensor, labels: Tensor, weak_conf: Tensor, strong_conf: Tensor,
                  valid: Tensor | None) -> None:
    if rep.ndim != 4:
        raise ValueError(f"rep must be (B, D, h, w); got {tuple(rep.shape)}")
    expected = (rep.shape[0], *rep.shape[2:])
    for name, value in (("labels", labels), ("weak_conf", weak_conf),
                        ("strong_conf", strong_conf), ("valid", valid)):
        if value is not None and tuple(value.shape) != expected:
            raise ValueError(f"{name} must have shape {expected} to match rep "
                             f"{tuple(rep.shape)}; got {tuple(value.shape)}")
    if labels.dtype != torch.long:
        raise ValueError(f"labels must be long; got {labels.dtype}")
