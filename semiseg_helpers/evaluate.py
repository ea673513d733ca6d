"""IoU from a confusion matrix over a whole evaluation set; sliding windows.

The paper's metric: per-class IoU = TP / (TP + FP + FN), accumulated over
every pixel of the evaluation set (one confusion matrix, not a mean of
per-image IoUs), and MIoU = the mean over the defect classes the dataset has
that occur in the evaluated split's ground truth. Ignored pixels count nowhere.

The inference helpers every caller shares (training's validation, scoring a
run, segmenting photos, Figure 8) live here too: :func:`defect_classes`,
:func:`eval_window` and :func:`logits_fn`.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from semiseg_helpers.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES


def defect_classes(manifest: dict) -> list[str]:
    """The classes MIoU is averaged over: the defect classes the source has."""
    return [c for c in manifest["source_classes"] if c != "background"]


def eval_window(config) -> int:
    """The sliding-window size a run is evaluated with: ``data.eval_size``,
    or the training crop when none is set."""
    return config.data.eval_size or config.data.crop_size


def logits_fn(model: torch.nn.Module, autocast_dtype: torch.dtype | None = None,
              channels_last: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> float32 class logits`` of a segmentation network (no
    representation head): the ``forward`` of :func:`sliding_window_logits`.

    ``autocast_dtype`` (bf16) and ``channels_last``: compute as a run of
    that precision trained (:mod:`semiseg_helpers.precision`), so a run's own
    test score and a later ``semiseg evaluate`` agree.
    """
    def forward(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            return model(x, return_rep=False).logits.float()
    return forward


def run_logits_fn(model: torch.nn.Module, config, device: torch.device
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    """:func:`logits_fn` at the precision and memory format a run of ``config``
    computes in on ``device`` (its ``precision`` and ``channels_last`` settings)."""
    from semiseg_helpers.precision import autocast_dtype, use_channels_last

    dtype = autocast_dtype(config.precision, device)
    return logits_fn(model, dtype, use_channels_last(config.channels_last, device, dtype))


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor,
                     num_classes: int = NUM_CLASSES,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``(C, C)`` int64 counts, rows = ground truth, columns = prediction."""
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = target != ignore_index
    index = target[keep] * num_classes + pred[keep]
    return torch.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_per_class(cm: torch.Tensor | np.ndarray) -> np.ndarray:
    """IoU of each class; NaN for a class absent from both truth and prediction."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def summarise(cm: torch.Tensor | np.ndarray, classes: Sequence[str]) -> dict:
    """``{"miou", "iou": {class: IoU}, "miou_classes"}`` over ``classes`` (the
    defect classes of the dataset), plus background IoU and pixel accuracy.

    Which classes MIoU averages is settled by the ground truth alone: those of
    ``classes`` with at least one pixel in the evaluated split
    (``miou_classes``). A class the split lacks has no IoU (NaN) whatever the
    model predicts, so every model scored on one split is averaged over the
    same classes; pixels predicted as an absent class still count, as misses
    of the classes truly there.
    """
    cm = np.asarray(cm, dtype=np.float64)
    iou = iou_per_class(cm)
    in_truth = cm.sum(1) > 0
    per_class = {c: float(iou[CLASS_NAMES.index(c)]) if in_truth[CLASS_NAMES.index(c)]
                 else math.nan for c in classes}
    counted = [c for c in classes if in_truth[CLASS_NAMES.index(c)]]
    return {
        "miou": float(np.mean([per_class[c] for c in counted])) if counted else math.nan,
        "iou": per_class,
        "miou_classes": counted,
        "background_iou": float(iou[0]),
        "pixel_accuracy": float(np.diag(cm).sum() / max(cm.sum(), 1)),
    }


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)


@torch.no_grad()
def sliding_window_logits(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                          window: int, num_classes: int, overlap: float = 1 / 3,
                          multiple: int = 32) -> torch.Tensor:
    """Class logits for images of any size, averaged over overlapping windows.

    ``forward`` maps a ``(B, 3, h, w)`` float batch in [0, 1] to logits of the
    same size. Images no larger than ``window`` are predicted in one pass
    (padded to a ``multiple`` of the encoder's stride); larger ones with
    windows whose stride is ``window * (1 - overlap)``, the last row/column
    aligned to the border, logits averaged where windows overlap.
    """
    b, _, h, w = images.shape
    if h <= window and w <= window:
        padded, (h0, w0) = _pad_to_multiple(images, multiple)
        return forward(padded)[..., :h0, :w0]
    stride = max(1, int(window * (1 - overlap)))

    def starts(side: int) -> list[int]:
        if side <= window:
            return [0]
        s = list(range(0, side - window, stride))
        return s + [side - window]

    out = images.new_zeros((b, num_classes, h, w), dtype=torch.float32)
    count = images.new_zeros((1, 1, h, w), dtype=torch.float32)
    for y in starts(h):
        for x in starts(w):
            tile = images[..., y:y + window, x:x + window]
            padded, (th, tw) = _pad_to_multiple(tile, multiple)
            out[..., y:y + th, x:x + tw] += forward(padded)[..., :th, :tw].float()
            count[..., y:y + th, x:x + tw] += 1
    return out / count


@torch.no_grad()
def evaluate(forward: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[dict],
             classes: Sequence[str], device: torch.device | str, window: int,
             num_classes: int = NUM_CLASSES) -> dict:
    """Score ``forward`` on every batch (``{"image": uint8, "mask": uint8, "size"}``);
    ``forward`` owns its precision (:func:`logits_fn`).

    Returns :func:`summarise`'s dict plus the confusion matrix as a nested list.
    """
    device = torch.device(device)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    for batch in batches:
        images = batch["image"].to(device, non_blocking=True).float().div_(255)
        masks = batch["mask"].to(device, non_blocking=True)
        logits = sliding_window_logits(forward, images, window, num_classes)
        cm += confusion_matrix(logits.argmax(1), masks, num_classes)
    result = summarise(cm.cpu(), classes)
    result["confusion"] = cm.cpu().tolist()
    return result
