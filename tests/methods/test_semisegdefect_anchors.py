"""Semi-SegDefect's contrastive anchors on thin cracks: hardness and reliability
are judged per cell from the full-resolution pixels of the cell's own label."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import semiseg_helpers  # noqa: F401
from semiseg_helpers.classes import IGNORE_INDEX, class_index
from semiseg_helpers.config import make_config
from semiseg_helpers.methods import build_method

CRACK, SPALL = class_index("crack"), class_index("spalling")


def _method(**semi):
    overrides = {"model.pretrained": None, "model.encoder": "convnext_zepto_rms",
                 "semi.num_anchors": 512, **{f"semi.{k}": v for k, v in semi.items()}}
    return build_method(make_config("smoke", overrides, method="semisegdefect"), 4)


def _thin_cracks() -> torch.Tensor:
    """Two 64 px images: a 1 px and a 2 px vertical crack, and a spalled patch."""
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[0, :, 9] = CRACK                  # 1 px, inside a 4x4 block (columns 8-11)
    labels[1, :, 29:31] = CRACK              # 2 px (columns 28-31)
    labels[:, 40:56, 40:56] = SPALL
    return labels


def _crack_anchors(method, student_logit: float) -> tuple[int, int]:
    """Crack anchors drawn and crack cells, for a student whose logit of each
    pixel's true class is ``student_logit`` above the others."""
    labels = _thin_cracks()
    logits = student_logit * F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    rep = torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    unlabelled = torch.full((0, 64, 64), IGNORE_INDEX)
    result = method.contrastive(rep, logits, labels, unlabelled, torch.zeros(0, 64, 64),
                                torch.Generator().manual_seed(0))
    crack_cells = 16 + 16                    # one column of cells per crack
    return int(result.anchors.per_class[CRACK]), crack_cells


def test_a_confident_student_has_no_hard_cells_on_thin_cracks() -> None:
    """p(label) = 0.9999 on every pixel: nothing is hard. Judged from logits
    averaged over the 4x4 block, every 1-2 px crack cell looked hard."""
    anchors, _ = _crack_anchors(_method(), student_logit=10.0)
    assert anchors == 0


def test_an_uncertain_student_makes_every_thin_crack_cell_hard() -> None:
    anchors, cells = _crack_anchors(_method(), student_logit=0.5)   # p(label) = 0.35
    assert anchors == cells


def test_one_doubtful_crack_pixel_makes_its_cell_hard() -> None:
    labels = _thin_cracks()
    logits = 10.0 * F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    logits[1, :, 20, 29] = 0.0               # one pixel of the 2 px crack: p = 0.25
    rep = torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    result = _method().contrastive(rep, logits, labels, torch.full((0, 64, 64), IGNORE_INDEX),
                                   torch.zeros(0, 64, 64), torch.Generator().manual_seed(0))
    crack = result.anchors.index[result.anchors.classes == CRACK]
    assert crack.tolist() == [1 * 256 + (20 // 4) * 16 + 29 // 4]


def test_hardness_and_the_unsupervised_weight_have_their_own_thresholds() -> None:
    """``strong_threshold`` decides hardness, ``unsup_threshold`` w_u: sweeping one
    leaves the other alone."""
    assert _crack_anchors(_method(unsup_threshold=0.0), 10.0)[0] == 0
    anchors, cells = _crack_anchors(_method(strong_threshold=1.0), 10.0)
    assert anchors == cells

    from semiseg_helpers.methods import Batch

    method = _method(unsup_threshold=0.0, contrastive_loss=False)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 64, 64, generator=g)
    labels = _thin_cracks().repeat(2, 1, 1)
    valid = torch.ones(4, 64, 64, dtype=torch.bool)
    out = method.training_step(Batch(images, labels, valid), Batch(images, labels, valid), 0, g)
    assert out.logs["w_u"] == pytest.approx(1.0)      # every confidence is > 0
    method = _method(unsup_threshold=1.0, contrastive_loss=False)
    out = method.training_step(Batch(images, labels, valid), Batch(images, labels, valid), 0,
                               torch.Generator().manual_seed(0))
    assert out.logs["w_u"] == 0.0
