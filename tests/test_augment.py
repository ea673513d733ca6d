"""Weak / strong views: geometry, photometric ops and CutMix on tiny batches."""

from __future__ import annotations

import math

import pytest
import torch

import semiseg_helpers  # noqa: F401  (torchvision shim before anything else)
from semiseg_helpers.augment import (
    StrongAugmentConfig,
    colour_jitter,
    cutmix,
    gaussian_blur,
    strong_view,
    weak_view,
)
from semiseg_helpers.classes import IGNORE_INDEX


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ramp_batch(batch: int = 2, height: int = 8, width: int = 8) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
    """Images whose every pixel is distinct, labels 0..3 in a known pattern."""
    values = torch.arange(batch * 3 * height * width, dtype=torch.float32)
    images = values.view(batch, 3, height, width) / values.numel()
    labels = (torch.arange(height * width).view(height, width) % 4).expand(batch, -1, -1)
    return images, labels.clone()


# ---------------------------------------------------------------- weak view

def test_weak_view_at_unit_scale_copies_a_window_exactly() -> None:
    images, labels = _ramp_batch()
    view = weak_view(images, labels, crop_size=4, scale_range=(1.0, 1.0), hflip_p=0.0,
                     generator=_gen(3))
    for i in range(images.shape[0]):
        y, x = (int(v) for v in view.params.top_left[i])
        assert view.params.top_left[i].tolist() == [float(y), float(x)]
        torch.testing.assert_close(view.images[i], images[i, :, y:y + 4, x:x + 4],
                                   atol=1e-6, rtol=0)
        assert torch.equal(view.labels[i], labels[i, y:y + 4, x:x + 4])
    assert view.valid.all()


@pytest.mark.parametrize("flip, dim", [("hflip_p", -1), ("vflip_p", -2)])
def test_weak_view_flip_mirrors_a_known_pattern(flip: str, dim: int) -> None:
    images, labels = _ramp_batch()
    view = weak_view(images, labels, crop_size=8, scale_range=(1.0, 1.0),
                     **{"hflip_p": 0.0, "vflip_p": 0.0, flip: 1.0}, generator=_gen())
    torch.testing.assert_close(view.images, images.flip(dim), atol=1e-6, rtol=0)
    assert torch.equal(view.labels, labels.flip(dim))


def test_weak_view_pixels_outside_the_image_are_zero_and_ignored() -> None:
    images = torch.full((1, 3, 8, 8), 0.5)
    labels = torch.ones(1, 8, 8, dtype=torch.long)
    # Scale 0.5 shrinks the image to 4 x 4 inside an 8 x 8 crop.
    view = weak_view(images, labels, crop_size=8, scale_range=(0.5, 0.5), hflip_p=0.0,
                     generator=_gen(1))
    inside = view.labels != IGNORE_INDEX
    assert inside.sum() == 16
    assert torch.equal(inside, view.valid)
    assert torch.all(view.labels[inside] == 1)
    assert torch.all(view.images[:, :, ~inside[0]] == 0)
    torch.testing.assert_close(view.images[:, :, inside[0]],
                               torch.full((1, 3, 16), 0.5))


def test_weak_view_labels_stay_in_the_label_set() -> None:
    torch.manual_seed(0)
    images = torch.rand(4, 3, 16, 16)
    labels = torch.tensor([0, 1, 3, IGNORE_INDEX])[torch.randint(0, 4, (4, 16, 16))]
    view = weak_view(images, labels, crop_size=12, scale_range=(0.6, 1.7), hflip_p=0.5,
                     vflip_p=0.5, generator=_gen(2))
    assert set(view.labels.unique().tolist()) <= {0, 1, 3, IGNORE_INDEX}
    assert view.images.shape == (4, 3, 12, 12)
    assert view.images.min() >= 0 and view.images.max() <= 1


def test_weak_view_never_reads_padding_of_a_smaller_image() -> None:
    # A 4 x 4 image (value 1, class 2) collated onto an 8 x 8 canvas whose
    # padding is 0.5 / ignored. Up-scaling interpolates, yet no output
    # pixel may mix in padding, and no padding may appear as image.
    images = torch.full((1, 3, 8, 8), 0.5)
    images[:, :, :4, :4] = 1.0
    labels = torch.full((1, 8, 8), IGNORE_INDEX)
    labels[:, :4, :4] = 2
    sizes = torch.tensor([[4, 4]])
    exact = weak_view(images, labels, crop_size=4, scale_range=(1.0, 1.0),
                      image_sizes=sizes, generator=_gen())
    assert torch.equal(exact.labels, torch.full((1, 4, 4), 2))
    torch.testing.assert_close(exact.images, torch.ones(1, 3, 4, 4))
    for seed in range(5):
        view = weak_view(images, labels, crop_size=6, scale_range=(0.7, 1.5),
                         image_sizes=sizes, generator=_gen(seed))
        assert torch.all(view.labels[view.valid] == 2)
        assert torch.all(view.labels[~view.valid] == IGNORE_INDEX)
        torch.testing.assert_close(view.images[:, :, view.valid[0]],
                                   torch.ones(1, 3, int(view.valid.sum())))


def test_weak_view_is_reproducible_from_the_generator() -> None:
    images, labels = _ramp_batch(batch=3, height=10, width=12)
    first = weak_view(images, labels, crop_size=6, generator=_gen(7))
    again = weak_view(images, labels, crop_size=6, generator=_gen(7))
    other = weak_view(images, labels, crop_size=6, generator=_gen(8))
    assert torch.equal(first.images, again.images)
    assert torch.equal(first.labels, again.labels)
    assert not torch.equal(first.images, other.images)


def test_weak_view_rejects_bad_arguments() -> None:
    images, labels = _ramp_batch()
    with pytest.raises(ValueError, match="labels"):
        weak_view(images, labels[:, :4], crop_size=4)
    with pytest.raises(ValueError, match="scale_range"):
        weak_view(images, labels, crop_size=4, scale_range=(1.5, 0.5))
    with pytest.raises(ValueError, match="image_sizes"):
        weak_view(images, labels, crop_size=4, image_sizes=torch.tensor([[8, 8]]))


# ---------------------------------------------------------------- photometric

def test_colour_jitter_keeps_shape_and_range() -> None:
    images = torch.rand(4, 3, 6, 5)
    images[0] = 1.0
    images[1] = 0.0
    out = colour_jitter(images, brightness=0.9, contrast=0.9, saturation=0.9, hue=0.5,
                        p=1.0, generator=_gen())
    assert out.shape == images.shape
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(colour_jitter(images, p=0.0, generator=_gen()), images)


def test_colour_jitter_brightness_scales_each_sample_by_one_factor() -> None:
    images = 0.1 + 0.6 * torch.rand(3, 3, 4, 4)          # * [0.75, 1.25] stays <= 1
    out = colour_jitter(images, brightness=0.25, contrast=0.0, saturation=0.0, hue=0.0,
                        p=1.0, generator=_gen(4))
    ratio = out / images
    per_sample = ratio.flatten(1)
    torch.testing.assert_close(per_sample, per_sample[:, :1].expand_as(per_sample))
    assert torch.all((per_sample >= 0.75) & (per_sample <= 1.25))
    assert per_sample[:, 0].unique().numel() == 3      # factors drawn per sample


def test_colour_jitter_hue_turns_chroma_but_keeps_grey_and_luma() -> None:
    images = torch.tensor([0.5, 0.4, 0.45]).view(1, 3, 1, 1).repeat(2, 1, 2, 2)
    images[:, :, 0, 0] = 0.3                             # a grey pixel
    out = colour_jitter(images, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.5,
                        p=1.0, generator=_gen(5))
    torch.testing.assert_close(out[:, :, 0, 0], torch.full((2, 3), 0.3))
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    torch.testing.assert_close((out * luma).sum(1), (images * luma).sum(1))
    assert not torch.allclose(out[:, :, 1, 1], images[:, :, 1, 1], atol=1e-3)


def test_gaussian_blur_of_an_impulse_is_the_gaussian_kernel() -> None:
    images = torch.zeros(1, 3, 9, 9)
    images[:, :, 4, 4] = 1.0
    out = gaussian_blur(images, sigma_range=(1.0, 1.0), p=1.0, generator=_gen())
    taps = torch.tensor([math.exp(-0.5 * i * i) for i in range(-3, 4)])
    taps = taps / taps.sum()
    expected = torch.zeros(9, 9)
    expected[1:8, 1:8] = torch.outer(taps, taps)
    for channel in range(3):
        torch.testing.assert_close(out[0, channel], expected)


def test_gaussian_blur_draws_sigma_per_sample_and_keeps_flat_images_flat() -> None:
    images = torch.zeros(2, 3, 15, 15)
    images[:, :, 7, 7] = 1.0
    out = gaussian_blur(images, sigma_range=(0.3, 2.0), p=1.0, generator=_gen(1))
    torch.testing.assert_close(out.sum(dim=(2, 3)), torch.ones(2, 3))
    assert not torch.allclose(out[0], out[1])
    flat = torch.full((2, 3, 5, 6), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, p=1.0, generator=_gen()), flat)
    assert torch.equal(gaussian_blur(images, p=0.0, generator=_gen()), images)


# ---------------------------------------------------------------- CutMix

def _box_mask(box: torch.Tensor, height: int, width: int) -> torch.Tensor:
    y0, x0, y1, x1 = box.tolist()
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_cutmix_pastes_one_box_identically_into_image_label_and_confidence() -> None:
    torch.manual_seed(0)
    images = torch.rand(3, 3, 10, 12)
    labels = torch.randint(0, 4, (3, 10, 12))
    confidences = torch.rand(3, 10, 12)
    mixed = cutmix(images, labels, confidences, area_range=(0.2, 0.5), generator=_gen(9))
    assert torch.all(mixed.partner != torch.arange(3))
    for i in range(3):
        box = _box_mask(mixed.boxes[i], 10, 12)
        j = int(mixed.partner[i])
        assert 0.15 <= box.float().mean() <= 0.55
        assert torch.equal(mixed.images[i][:, box], images[j][:, box])
        assert torch.equal(mixed.images[i][:, ~box], images[i][:, ~box])
        assert torch.equal(mixed.labels[i][box], labels[j][box])
        assert torch.equal(mixed.labels[i][~box], labels[i][~box])
        assert torch.equal(mixed.confidences[i][box], confidences[j][box])
        assert torch.equal(mixed.confidences[i][~box], confidences[i][~box])


def test_cutmix_with_p_zero_or_a_single_sample_changes_nothing() -> None:
    images = torch.rand(2, 3, 6, 6)
    labels = torch.randint(0, 4, (2, 6, 6))
    untouched = cutmix(images, labels, p=0.0, generator=_gen())
    assert torch.equal(untouched.images, images)
    assert torch.equal(untouched.labels, labels)
    assert torch.all(untouched.boxes[:, 0] == untouched.boxes[:, 2])
    alone = cutmix(images[:1], labels[:1], generator=_gen())
    assert torch.equal(alone.images, images[:1])


# ---------------------------------------------------------------- strong view

def test_strong_view_runs_cutmix_last_and_keeps_geometry() -> None:
    # Flat images of 0.2 and 0.8: blurring after CutMix would smear the box
    # edge into in-between values; blur first leaves exactly two values.
    images = torch.stack([torch.full((3, 12, 12), 0.2), torch.full((3, 12, 12), 0.8)])
    labels = torch.stack([torch.zeros(12, 12, dtype=torch.long),
                          torch.ones(12, 12, dtype=torch.long)])
    config = StrongAugmentConfig(jitter_p=0.0, blur_p=1.0, blur_sigma_range=(1.5, 2.0))
    view = strong_view(images, labels, config=config, generator=_gen(2))
    is_dark = torch.isclose(view.images, torch.tensor(0.2))
    is_light = torch.isclose(view.images, torch.tensor(0.8))
    assert torch.all(is_dark | is_light)
    for i in range(2):
        box = _box_mask(view.boxes[i], 12, 12)
        assert torch.all(view.labels[i][box] == 1 - i)
        assert torch.all(view.labels[i][~box] == i)
        assert torch.allclose(view.images[i][:, ~box], images[i][:, ~box])


def test_strong_view_labels_move_only_with_the_box_and_are_reproducible() -> None:
    torch.manual_seed(1)
    images = torch.rand(2, 3, 8, 8)
    labels = torch.randint(0, 4, (2, 8, 8))
    confidences = torch.rand(2, 8, 8)
    first = strong_view(images, labels, confidences, generator=_gen(3))
    again = strong_view(images, labels, confidences, generator=_gen(3))
    assert torch.equal(first.images, again.images)
    assert first.images.min() >= 0 and first.images.max() <= 1
    for i in range(2):
        box = _box_mask(first.boxes[i], 8, 8)
        assert torch.equal(first.labels[i][~box], labels[i][~box])
        assert torch.equal(first.confidences[i][~box], confidences[i][~box])
