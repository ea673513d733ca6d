"""Label down-sampling that keeps thin cracks, on hand-drawn label maps."""

from __future__ import annotations

import pytest
import torch

import semiseg_helpers  # noqa: F401
from semiseg_helpers.classes import IGNORE_INDEX
from semiseg_helpers.losses.labels import (
    block_min_of_class,
    count_class_pixels,
    downsample_labels,
    downsample_labels_nearest,
)

BG, CRACK, SPALL, REBAR, IGN = 0, 1, 2, 3, IGNORE_INDEX


def test_a_one_pixel_crack_survives_where_nearest_neighbour_erases_it() -> None:
    labels = torch.full((1, 8, 8), BG)
    labels[0, :, 1] = CRACK                   # 1 px wide vertical crack
    nearest = downsample_labels_nearest(labels, (2, 2))
    kept, _ = downsample_labels(labels, (2, 2))
    # Nearest keeps rows/columns 0 and 4 only: the crack at column 1 is gone.
    assert count_class_pixels(labels).tolist() == [56, 8, 0, 0]
    assert count_class_pixels(nearest).tolist() == [4, 0, 0, 0]
    assert count_class_pixels(kept).tolist() == [2, 2, 0, 0]
    assert torch.equal(kept[0], torch.tensor([[CRACK, BG], [CRACK, BG]]))


def test_each_cell_takes_the_highest_priority_class_of_its_block() -> None:
    labels = torch.tensor([[
        [BG, BG, SPALL, SPALL],
        [BG, CRACK, SPALL, REBAR],
        [IGN, IGN, BG, IGN],
        [IGN, IGN, IGN, IGN],
        [SPALL, BG, CRACK, REBAR],
        [BG, BG, SPALL, BG],
    ]])
    low, _ = downsample_labels(labels, (3, 2))
    assert torch.equal(low[0], torch.tensor([[CRACK, REBAR],
                                             [IGN, BG],
                                             [SPALL, CRACK]]))
    background_first, _ = downsample_labels(
        labels, (3, 2), priority=("background", "spalling", "rebar", "crack"))
    assert torch.equal(background_first[0], torch.tensor([[BG, SPALL],
                                                          [IGN, BG],
                                                          [BG, BG]]))


def test_confidence_is_the_least_among_pixels_of_the_chosen_class() -> None:
    """A cell is as reliable as its least reliable pixel of its own label: one
    confident crack pixel must not vouch for a doubtful one beside it."""
    labels = torch.tensor([[[CRACK, BG, CRACK, CRACK],
                            [BG, BG, IGN, BG]]])
    confidence = torch.tensor([[[0.60, 0.99, 0.30, 0.80],
                                [0.95, 0.97, 1.00, 0.99]]])
    low, conf = downsample_labels(labels, (1, 2), confidence=confidence)
    assert torch.equal(low[0], torch.tensor([[CRACK, CRACK]]))
    torch.testing.assert_close(conf[0], torch.tensor([[0.60, 0.30]]))
    ignored, ignored_conf = downsample_labels(torch.full((1, 2, 2), IGN), (1, 1),
                                              confidence=torch.ones(1, 2, 2))
    assert ignored.item() == IGN and ignored_conf.item() == 0.0


@pytest.mark.parametrize("size, corner", [(None, (1, 1)), ((3, 3), (2, 2))])
def test_sizes_not_divisible_by_the_factor_drop_no_pixel(size, corner) -> None:
    labels = torch.full((1, 10, 10), BG)
    labels[0, 9, 9] = CRACK                   # in the rows a strided pick would drop
    low, _ = downsample_labels(labels, size)
    expected_size = (2, 2) if size is None else size     # default: 10 // 4 per axis
    assert tuple(low.shape[1:]) == expected_size
    assert low[0][corner].item() == CRACK
    assert count_class_pixels(low)[CRACK] == 1


def test_priority_must_name_every_class_once() -> None:
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="priority"):
        downsample_labels(labels, priority=("crack", "background"))
    with pytest.raises(ValueError, match="unknown class"):
        downsample_labels(labels, priority=("crack", "rust", "spalling", "background"))


def test_count_class_pixels_skips_ignored() -> None:
    labels = torch.tensor([[[0, 1, 1], [3, IGN, 1]]])
    assert count_class_pixels(labels).tolist() == [1, 3, 0, 1]


def test_block_min_of_class_reads_only_the_cells_own_label() -> None:
    labels = torch.tensor([[[CRACK, BG, BG, BG],
                            [BG, BG, SPALL, SPALL]]])
    values = torch.tensor([[[0.90, 0.10, 0.20, 0.30],
                            [0.05, 0.15, 0.70, 0.40]]])
    low = torch.tensor([[[CRACK, SPALL]]])
    torch.testing.assert_close(block_min_of_class(values, labels, low),
                               torch.tensor([[[0.90, 0.40]]]))
    assert block_min_of_class(values, labels, torch.tensor([[[IGN, BG]]]))[0, 0, 0] == 0.0
