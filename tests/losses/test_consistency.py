"""Cross-entropies and the confidence weight w_u on hand-made pixels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import semiseg_helpers  # noqa: F401
from semiseg_helpers.classes import IGNORE_INDEX
from semiseg_helpers.losses.consistency import (
    confidence_fraction,
    pseudo_label_ce,
    supervised_ce,
)


def test_confidence_fraction_counts_pixels_strictly_above_threshold() -> None:
    confidence = torch.tensor([[[0.50, 0.98], [0.97, 0.99]]])
    # 0.97 itself is not above 0.97: 2 of 4 pixels.
    assert confidence_fraction(confidence, 0.97).item() == pytest.approx(0.5)
    valid = torch.tensor([[[True, True], [True, False]]])
    assert confidence_fraction(confidence, 0.97, valid).item() == pytest.approx(1 / 3)


def test_confidence_fraction_is_zero_without_valid_pixels_and_has_no_gradient() -> None:
    confidence = torch.rand(1, 2, 2, requires_grad=True)
    none_valid = torch.zeros(1, 2, 2, dtype=torch.bool)
    weight = confidence_fraction(confidence, 0.5, none_valid)
    assert weight.item() == 0.0
    assert not weight.requires_grad


def _kept_pixels(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Logits of the kept pixels as ``(N, C)``."""
    return logits.permute(0, 2, 3, 1)[keep]


def test_pseudo_label_ce_equals_cross_entropy_on_the_kept_pixels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 3)
    labels = torch.randint(0, 4, (2, 3, 3))
    labels[0, 0, :] = IGNORE_INDEX
    confidence = torch.rand(2, 3, 3)
    keep = (labels != IGNORE_INDEX) & (confidence > 0.4)
    expected = F.cross_entropy(_kept_pixels(logits, keep), labels[keep])
    got = pseudo_label_ce(logits, labels, confidence, threshold=0.4)
    torch.testing.assert_close(got, expected)
    unthresholded = F.cross_entropy(_kept_pixels(logits, labels != IGNORE_INDEX),
                                    labels[labels != IGNORE_INDEX])
    torch.testing.assert_close(pseudo_label_ce(logits, labels), unthresholded)


def test_ignored_pixels_do_not_influence_the_loss_or_get_gradient() -> None:
    logits = torch.randn(1, 4, 2, 2, requires_grad=True)
    labels = torch.tensor([[[1, IGNORE_INDEX], [2, 3]]])
    pseudo_label_ce(logits, labels).backward()
    assert torch.all(logits.grad[0, :, 0, 1] == 0)
    assert torch.all(logits.grad[0, :, 0, 0] != 0)


@pytest.mark.parametrize("case", ["all ignored", "none above threshold"])
def test_no_qualifying_pixel_gives_exact_zero_with_gradient(case: str) -> None:
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    if case == "all ignored":
        labels = torch.full((2, 3, 3), IGNORE_INDEX)
        loss = pseudo_label_ce(logits, labels)
    else:
        labels = torch.zeros(2, 3, 3, dtype=torch.long)
        loss = pseudo_label_ce(logits, labels, torch.full((2, 3, 3), 0.5), threshold=0.97)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_supervised_ce_matches_torch_and_stays_finite_on_an_unlabelled_crop() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 4, 4, requires_grad=True)
    labels = torch.randint(0, 4, (2, 4, 4))
    labels[1, 2:] = IGNORE_INDEX
    expected = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(supervised_ce(logits, labels), expected)
    all_ignored = torch.full((2, 4, 4), IGNORE_INDEX)
    assert torch.isnan(F.cross_entropy(logits, all_ignored, ignore_index=IGNORE_INDEX))
    assert supervised_ce(logits, all_ignored).item() == 0.0


def test_bad_arguments_are_named() -> None:
    logits = torch.randn(1, 4, 2, 2)
    with pytest.raises(ValueError, match="without confidence"):
        pseudo_label_ce(logits, torch.zeros(1, 2, 2, dtype=torch.long), threshold=0.9)
    with pytest.raises(ValueError, match="pseudo_labels"):
        pseudo_label_ce(logits, torch.zeros(1, 3, 2, dtype=torch.long))
