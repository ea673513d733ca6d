"""Loss functions of Semi-SegDefect, as pure tensor functions.

* :mod:`.consistency` — supervised and pseudo-label cross-entropy, and the
  confidence weight ``w_u``.
* :mod:`.contrastive` — ReCo-style pixel contrastive loss with active query
  and key sampling.
* :mod:`.labels` — bringing labels and confidences to the representation's
  resolution without erasing thin cracks.
"""

from semiseg_helpers.losses.consistency import (
    confidence_fraction,
    pseudo_label_ce,
    supervised_ce,
)
from semiseg_helpers.losses.contrastive import (
    AnchorSelection,
    ContrastiveResult,
    label_class_probability,
    negative_class_probabilities,
    pixel_contrastive_loss,
    select_anchors,
)
from semiseg_helpers.losses.labels import (
    DEFAULT_PRIORITY,
    block_min_of_class,
    count_class_pixels,
    downsample_labels,
    downsample_labels_nearest,
)

__all__ = [
    "DEFAULT_PRIORITY",
    "AnchorSelection",
    "ContrastiveResult",
    "block_min_of_class",
    "confidence_fraction",
    "count_class_pixels",
    "downsample_labels",
    "downsample_labels_nearest",
    "label_class_probability",
    "negative_class_probabilities",
    "pixel_contrastive_loss",
    "pseudo_label_ce",
    "select_anchors",
    "supervised_ce",
]
