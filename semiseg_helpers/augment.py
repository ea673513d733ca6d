"""Weak and strong views for mean-teacher training, batched on tensors.

Everything here works on whole batches on the inputs' device: images are
float ``(B, 3, H, W)`` in ``[0, 1]``, labels long ``(B, H, W)`` with
:data:`~semiseg_helpers.classes.IGNORE_INDEX` for unlabelled pixels, and
confidences float ``(B, H, W)``. Each sample draws its own parameters, but
no function loops over samples or pixels.

How the views fit together (the paper's Section "Mean teacher framework"):

* :func:`weak_view` — random scale, crop and flip. The teacher predicts on
  this view, so its pseudo-labels live in the weak view's geometry.
* :func:`strong_view` — colour jitter, Gaussian blur, then CutMix, applied
  *on top of* the weak view. No geometry is redone, so the teacher's
  pseudo-labels and confidences line up pixel for pixel with the student's
  strong image; only the CutMix box moves, and it moves image, label and
  confidence together.

Randomness: every function takes an explicit ``torch.Generator`` (or
``None`` for the global one) and draws all of its numbers from it, so a run
seeded once is reproducible and can be resumed from the generator's state.
Numbers are drawn on the generator's own device and then moved, so a CPU
generator can drive a GPU run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from semiseg_helpers._random import rand
from semiseg_helpers.classes import IGNORE_INDEX

__all__ = [
    "CutMixResult",
    "GeometryParams",
    "StrongAugmentConfig",
    "WeakView",
    "colour_jitter",
    "cutmix",
    "gaussian_blur",
    "random_greyscale",
    "strong_view",
    "weak_view",
]

_LUMA = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights, the grey level colour jitter blends towards."""

_RGB_TO_YIQ = torch.tensor([
    [0.299, 0.587, 0.114],
    [0.596, -0.274, -0.322],
    [0.211, -0.523, 0.312],
], dtype=torch.float64)
"""NTSC YIQ: luma plus two chroma axes; a hue shift is a rotation in (I, Q)."""

_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ).float()
_RGB_TO_YIQ = _RGB_TO_YIQ.float()


# --------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------

def _check_images(images: Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(
            f"images must be a float tensor (B, 3, H, W); got {tuple(images.shape)} "
            f"{images.dtype}")


def _check_map(name: str, value: Tensor | None, images: Tensor) -> None:
    """A per-pixel map (labels, confidences) must match the images' (B, H, W)."""
    expected = (images.shape[0], *images.shape[2:])
    if value is not None and tuple(value.shape) != expected:
        raise ValueError(f"{name} must have shape {expected} to match images; "
                         f"got {tuple(value.shape)}")


def _check_probability(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1]; got {p}")


def _check_range(name: str, bounds: tuple[float, float], low: float = 0.0) -> None:
    lo, hi = bounds
    if not low < lo <= hi:
        raise ValueError(f"{name} must be (lo, hi) with {low} < lo <= hi; got {bounds}")


def _pair(name: str, size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive; got {size}")
    return int(h), int(w)


# --------------------------------------------------------------------------
# weak view: scale, crop, flip
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class GeometryParams:
    """The geometry each sample of a weak view was given.

    ``top_left`` is the crop window's corner ``(y, x)`` in source pixels
    (edge coordinates: pixel ``i`` spans ``[i, i + 1)``); the window spans
    ``crop / scale`` source pixels per axis and may stick out of the image.
    ``theta`` is the ``(B, 2, 3)`` matrix handed to ``affine_grid``.
    """

    scale: Tensor
    top_left: Tensor
    hflip: Tensor
    vflip: Tensor
    theta: Tensor


@dataclass(frozen=True)
class WeakView:
    """A weak view: images ``(B, 3, h, w)``, labels ``(B, h, w)`` or ``None``.

    ``valid`` ``(B, h, w)`` is ``True`` where the output pixel comes from
    inside its source image. Use it to ignore the teacher's predictions on
    the zero padding of unlabelled images, which have no labels to carry
    :data:`IGNORE_INDEX` for them.
    """

    images: Tensor
    labels: Tensor | None
    valid: Tensor
    params: GeometryParams


def weak_view(
    images: Tensor,
    labels: Tensor | None = None,
    *,
    crop_size: int | tuple[int, int],
    scale_range: tuple[float, float] = (0.5, 1.5),
    hflip_p: float = 0.5,
    vflip_p: float = 0.0,
    image_sizes: Tensor | None = None,
    generator: torch.Generator | None = None,
    share: tuple[int, int] = (0, 1),
) -> WeakView:
    """Randomly rescale, crop and flip each sample through one batched affine grid.

    Per sample: a scale ``s ~ U(scale_range)`` resizes the image, a
    ``crop_size`` window is placed uniformly at a whole resized-pixel offset
    (so at ``s = 1`` pixels are copied exactly, not interpolated), then the
    window is flipped with probabilities ``hflip_p`` / ``vflip_p``. If the
    resized image is smaller than the window it lands at a random place
    inside it. All of this is one affine map per sample, so the whole batch
    is one ``affine_grid`` and one ``grid_sample`` each for images and labels.

    Images are sampled bilinearly, labels by nearest neighbour (so they
    stay in the label set). Output pixels outside the source image become
    0 in the image and :data:`IGNORE_INDEX` in the labels.

    Batches collated from images of different sizes are padded to a common
    canvas; pass their true sizes as ``image_sizes`` (long ``(B, 2)``,
    ``(h, w)`` per sample) so that each crop is placed on its own image and
    padding never counts as image. Bilinear sampling is clamped to the true
    image's pixel centres, so padding never bleeds into edge pixels. Without
    ``image_sizes`` the whole canvas is the image; padded pixels whose label
    is already :data:`IGNORE_INDEX` still stay ignored.

    ``share=(k, n)``: the batch is the ``k``-th of ``n`` equal shares of a
    batch ``n`` times larger (one rank's part of a data-parallel batch). The
    random numbers are drawn for the whole batch and this share's rows kept,
    so the ``n`` shares get exactly the views the whole batch would.
    """
    _check_images(images)
    _check_map("labels", labels, images)
    _check_range("scale_range", scale_range)
    _check_probability("hflip_p", hflip_p)
    _check_probability("vflip_p", vflip_p)
    crop_h, crop_w = _pair("crop_size", crop_size)
    batch, _, canvas_h, canvas_w = images.shape
    device = images.device

    if image_sizes is None:
        sizes = torch.tensor([canvas_h, canvas_w], device=device, dtype=torch.float32)
        sizes = sizes.expand(batch, 2)
    else:
        if tuple(image_sizes.shape) != (batch, 2):
            raise ValueError(f"image_sizes must have shape ({batch}, 2); "
                             f"got {tuple(image_sizes.shape)}")
        sizes = image_sizes.to(device=device, dtype=torch.float32)
    crop = torch.tensor([crop_h, crop_w], device=device, dtype=torch.float32)
    canvas = torch.tensor([canvas_h, canvas_w], device=device, dtype=torch.float32)

    part, parts = share
    if not 0 <= part < parts:
        raise ValueError(f"share must be (k, n) with 0 <= k < n, got {share}")
    u = rand((batch * parts, 5), generator, device)[part * batch:(part + 1) * batch]
    lo, hi = scale_range
    scale = lo + (hi - lo) * u[:, 0]
    # Offset of the crop in the resized image, a whole number of pixels
    # anywhere between "window flush with one edge" and "with the other".
    # Truncating u * (slack +- 1) gives every whole offset equal odds when the
    # slack is whole (exactly the pixel grid at s = 1); the clamp keeps the
    # window within its range when it is not.
    slack = sizes * scale[:, None] - crop
    offset = torch.trunc(u[:, 1:3] * (slack + torch.sign(slack)))
    offset = torch.minimum(torch.maximum(offset, slack.clamp(max=0)), slack.clamp(min=0))
    top_left = offset / scale[:, None]                 # (y, x) in source pixels
    window = crop / scale[:, None]                     # (B, 2) source pixels
    hflip = u[:, 3] < hflip_p
    vflip = u[:, 4] < vflip_p

    # align_corners=False: normalised -1/+1 are the outer pixel edges, so
    # x_in = sign * (window / canvas) * x_out + (2 * window_centre / canvas - 1).
    centre = 2.0 * (top_left + window / 2) / canvas - 1.0
    extent = window / canvas
    sign_y = 1.0 - 2.0 * vflip.float()
    sign_x = 1.0 - 2.0 * hflip.float()
    theta = torch.zeros(batch, 2, 3, device=device, dtype=torch.float32)
    theta[:, 0, 0] = sign_x * extent[:, 1]
    theta[:, 0, 2] = centre[:, 1]
    theta[:, 1, 1] = sign_y * extent[:, 0]
    theta[:, 1, 2] = centre[:, 0]
    grid = F.affine_grid(theta, [batch, 1, crop_h, crop_w], align_corners=False)

    # Source position of every output pixel in pixel-edge units, (B, h, w).
    src_x = (grid[..., 0] + 1) / 2 * canvas_w
    src_y = (grid[..., 1] + 1) / 2 * canvas_h
    size_h = sizes[:, 0, None, None]
    size_w = sizes[:, 1, None, None]
    inside = (src_x >= 0) & (src_x < size_w) & (src_y >= 0) & (src_y < size_h)

    # Clamp to the true image's pixel centres: the sample then never reads
    # padding (bilinear or nearest), and `inside` decides what is kept.
    clamped = torch.stack([
        2 * src_x.clamp(min=0.5).minimum(size_w - 0.5) / canvas_w - 1,
        2 * src_y.clamp(min=0.5).minimum(size_h - 0.5) / canvas_h - 1,
    ], dim=-1)

    out = F.grid_sample(images.float(), clamped, mode="bilinear",
                        padding_mode="border", align_corners=False)
    out = (out * inside[:, None]).to(images.dtype)

    out_labels = None
    if labels is not None:
        sampled = F.grid_sample(labels[:, None].float(), clamped, mode="nearest",
                                padding_mode="border", align_corners=False)
        out_labels = sampled[:, 0].round().long()
        out_labels = out_labels.masked_fill(~inside, IGNORE_INDEX)

    params = GeometryParams(scale=scale, top_left=top_left, hflip=hflip,
                            vflip=vflip, theta=theta)
    return WeakView(images=out, labels=out_labels, valid=inside, params=params)


# --------------------------------------------------------------------------
# strong view: photometric
# --------------------------------------------------------------------------

def _grey(images: Tensor) -> Tensor:
    """Luma ``(B, 1, H, W)`` of RGB images."""
    weights = images.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def _hue_rotation(angle: Tensor) -> Tensor:
    """Per-sample ``(B, 3, 3)`` RGB matrices rotating chroma by ``angle`` radians.

    A rotation of the (I, Q) plane of YIQ keeps luma and chroma magnitude and
    turns the hue; it is linear, so it is one batched matrix product instead
    of a round trip through HSV. It is close to, not identical with, an HSV
    hue shift.
    """
    angle = angle.float()
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(angle.shape[0], 3, 3, device=angle.device)
    rotation[:, 0, 0] = 1.0
    rotation[:, 1, 1] = cos
    rotation[:, 1, 2] = -sin
    rotation[:, 2, 1] = sin
    rotation[:, 2, 2] = cos
    return _YIQ_TO_RGB.to(angle.device) @ rotation @ _RGB_TO_YIQ.to(angle.device)


def colour_jitter(
    images: Tensor,
    *,
    brightness: float = 0.25,
    contrast: float = 0.25,
    saturation: float = 0.25,
    hue: float = 0.05,
    p: float = 0.8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample brightness, contrast, saturation and hue jitter.

    With probability ``p`` a sample gets factors ``b, c, s ~ U(1 - x, 1 + x)``
    for the first three and a hue shift ``h ~ U(-hue, hue)`` (in turns of the
    colour wheel); the others get identity factors, so the batch runs as one
    computation. The operations run in a fixed order (brightness, contrast,
    saturation, hue), each clamped to ``[0, 1]``; torchvision's ColorJitter
    shuffles the order, which changes little and would cost four passes.

    Defaults: +-25 % for brightness, contrast and saturation, the range of
    ReCo's strong view, applied with probability 0.8 as in SimCLR-style
    strong augmentation. Hue is kept to +-0.05 turns (+-18 degrees) instead
    of ReCo's +-0.25, because colour is a real cue here: exposed rebar is
    told from spalling largely by its rust-orange, and a quarter-turn would
    make it green or violet while the teacher's pseudo-label still says
    "rebar".
    """
    _check_images(images)
    _check_probability("p", p)
    for name, value, top in (("brightness", brightness, 1.0), ("contrast", contrast, 1.0),
                             ("saturation", saturation, 1.0), ("hue", hue, 0.5)):
        if not 0.0 <= value <= top:
            raise ValueError(f"{name} must be in [0, {top}]; got {value}")
    batch = images.shape[0]
    u = rand((batch, 5), generator, images.device).to(images.dtype)
    apply = (u[:, 0] < p).to(images.dtype)
    b = 1 + apply * brightness * (2 * u[:, 1] - 1)
    c = 1 + apply * contrast * (2 * u[:, 2] - 1)
    s = 1 + apply * saturation * (2 * u[:, 3] - 1)
    h = apply * hue * (2 * u[:, 4] - 1)

    def per_sample(factor: Tensor) -> Tensor:
        return factor.view(batch, 1, 1, 1)

    out = (images * per_sample(b)).clamp(0, 1)
    mean_grey = _grey(out).mean(dim=(2, 3), keepdim=True)
    out = (mean_grey + per_sample(c) * (out - mean_grey)).clamp(0, 1)
    grey = _grey(out)
    out = (grey + per_sample(s) * (out - grey)).clamp(0, 1)
    rotation = _hue_rotation(2 * math.pi * h).to(images.dtype)
    out = torch.einsum("bij,bjhw->bihw", rotation, out).clamp(0, 1)
    # Identity factors are only identity up to rounding; keep skipped samples exact.
    return torch.where(per_sample(apply) > 0, out, images)


def random_greyscale(
    images: Tensor,
    *,
    p: float = 0.2,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Turn each sample grey, with probability ``p``: its luma (BT.601, the
    weights torchvision's ``RandomGrayscale`` uses) in all three channels."""
    _check_images(images)
    _check_probability("p", p)
    apply = rand((images.shape[0],), generator, images.device) < p
    return torch.where(apply.view(-1, 1, 1, 1), _grey(images).expand_as(images), images)


def gaussian_blur(
    images: Tensor,
    *,
    sigma_range: tuple[float, float] = (0.1, 2.0),
    p: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Blur each sample, with probability ``p``, by ``sigma ~ U(sigma_range)`` pixels.

    One separable Gaussian per sample, run for the whole batch as two
    grouped convolutions (one group per sample and channel). The kernel
    radius is ``ceil(3 * max sigma)`` for every sample, enough for the
    widest; samples that are not blurred get a unit impulse. Borders are
    replicated, which keeps flat regions flat and works for any image size.
    """
    _check_images(images)
    _check_probability("p", p)
    _check_range("sigma_range", sigma_range)
    batch, channels, height, width = images.shape
    u = rand((batch, 2), generator, images.device)
    apply = u[:, 0] < p
    lo, hi = sigma_range
    sigma = (lo + (hi - lo) * u[:, 1]).to(images.dtype)

    radius = math.ceil(3 * hi)
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    impulse = (offsets == 0).to(images.dtype).expand_as(kernel)
    kernel = torch.where(apply[:, None], kernel, impulse)          # (B, K)
    kernel = kernel.repeat_interleave(channels, dim=0)             # (B*C, K)

    groups = batch * channels
    flat = images.reshape(1, groups, height, width)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel.view(groups, 1, 1, -1), groups=groups)
    flat = F.conv2d(flat, kernel.view(groups, 1, -1, 1), groups=groups)
    return flat.view(batch, channels, height, width).clamp(0, 1)


# --------------------------------------------------------------------------
# strong view: CutMix
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class CutMixResult:
    """Mixed batch plus what was done to it.

    ``boxes`` is long ``(B, 4)`` = ``(y0, x0, y1, x1)``, half-open, in pixels
    of the output; an empty box (``y0 == y1``) means the sample was left
    alone. Sample ``i``'s box content comes from sample ``partner[i]``.
    """

    images: Tensor
    labels: Tensor | None
    confidences: Tensor | None
    boxes: Tensor
    partner: Tensor


def cutmix(
    images: Tensor,
    labels: Tensor | None = None,
    confidences: Tensor | None = None,
    *,
    p: float = 1.0,
    area_range: tuple[float, float] = (0.25, 0.5),
    aspect_range: tuple[float, float] = (0.5, 2.0),
    partner_images: Tensor | None = None,
    partner_labels: Tensor | None = None,
    partner_confidences: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> CutMixResult:
    """Paste one box from another sample into each sample.

    The partner of sample ``i`` is ``(i + k) % B`` for one random shift
    ``k`` in ``1 .. B-1`` (a roll of the batch), so no sample is mixed with
    itself when ``B >= 2``; with ``B == 1`` the batch is returned unchanged
    in content. Given ``partner_images`` (a second batch of the same shape,
    with ``partner_labels`` / ``partner_confidences`` wherever ``labels`` /
    ``confidences`` are given), sample ``i``'s box comes from sample ``i``
    of that batch instead (``partner`` then indexes the second batch), as
    in UniMatch, which draws its CutMix partners from a second loader. The
    same numbers are drawn either way. With probability ``p`` a sample gets a box whose area is a
    fraction ``~ U(area_range)`` of the image and whose height/width ratio
    is log-uniform in ``aspect_range``, placed uniformly so that it lies
    wholly inside the image. The *same* box is applied to images, labels
    and confidences, so pseudo-labels and their confidences travel with
    the pixels they describe.

    Defaults: boxes of a quarter to a half of the crop, as in semi-supervised
    CutMix (French et al. 2020, used by ReCo, mixes half-area boxes): big
    enough to move whole defects into another context, small enough that
    every image keeps most of its own content.
    """
    _check_images(images)
    _check_map("labels", labels, images)
    _check_map("confidences", confidences, images)
    if partner_images is not None:
        if partner_images.shape != images.shape:
            raise ValueError(f"partner_images must have the images' shape {tuple(images.shape)}; "
                             f"got {tuple(partner_images.shape)}")
        for name, own, theirs in (("labels", labels, partner_labels),
                                  ("confidences", confidences, partner_confidences)):
            if (own is None) != (theirs is None):
                raise ValueError(f"give partner_{name} exactly when {name} are given")
            _check_map(f"partner_{name}", theirs, images)
    elif partner_labels is not None or partner_confidences is not None:
        raise ValueError("partner_labels / partner_confidences need partner_images")
    _check_probability("p", p)
    _check_range("area_range", area_range)
    if not area_range[1] <= 1.0:
        raise ValueError(f"area_range must lie in (0, 1]; got {area_range}")
    _check_range("aspect_range", aspect_range)
    batch, _, height, width = images.shape
    device = images.device

    u = rand((batch, 6), generator, device)
    # A roll by 1 .. B-1 places: a random pairing that never pairs a sample
    # with itself (B == 1 rolls by 0 and so mixes nothing in).
    shift = 1 + torch.floor(u[0, 5] * (batch - 1)).long()
    partner = (torch.arange(batch, device=device) + shift) % batch
    if partner_images is not None:
        partner = torch.arange(batch, device=device)

    area = area_range[0] + (area_range[1] - area_range[0]) * u[:, 0]
    log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])      # height / width
    pixels = area * height * width
    box_h = torch.sqrt(pixels * aspect).round().clamp(1, height)
    box_w = torch.sqrt(pixels / aspect).round().clamp(1, width)
    applied = u[:, 4] < p
    box_h = box_h * applied
    box_w = box_w * applied
    y0 = torch.floor(u[:, 2] * (height - box_h + 1)).clamp(max=height - box_h)
    x0 = torch.floor(u[:, 3] * (width - box_w + 1)).clamp(max=width - box_w)
    boxes = torch.stack([y0, x0, y0 + box_h, x0 + box_w], dim=1).long()

    rows = torch.arange(height, device=device)[None, :, None]
    cols = torch.arange(width, device=device)[None, None, :]
    in_box = ((rows >= boxes[:, 0, None, None]) & (rows < boxes[:, 2, None, None])
              & (cols >= boxes[:, 1, None, None]) & (cols < boxes[:, 3, None, None]))

    def mix(x: Tensor | None, other: Tensor | None) -> Tensor | None:
        if x is None:
            return None
        mask = in_box if x.ndim == 3 else in_box[:, None]
        source = x[partner] if partner_images is None else other
        return torch.where(mask, source, x)

    return CutMixResult(images=mix(images, partner_images),
                        labels=mix(labels, partner_labels),
                        confidences=mix(confidences, partner_confidences), boxes=boxes,
                        partner=partner)


# --------------------------------------------------------------------------
# strong view
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class StrongAugmentConfig:
    """Parameters of :func:`strong_view`; see the functions it calls for why."""

    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.05
    jitter_p: float = 0.8
    grey_p: float = 0.0
    """Random greyscale after the jitter; 0 (the default) draws no number, so
    the strong view's random sequence is the same as without the option."""
    blur_sigma_range: tuple[float, float] = (0.1, 2.0)
    blur_p: float = 0.5
    cutmix_p: float = 1.0
    cutmix_area_range: tuple[float, float] = (0.25, 0.5)
    cutmix_aspect_range: tuple[float, float] = (0.5, 2.0)


def strong_view(
    images: Tensor,
    labels: Tensor | None = None,
    confidences: Tensor | None = None,
    *,
    config: StrongAugmentConfig = StrongAugmentConfig(),
    partner_images: Tensor | None = None,
    partner_labels: Tensor | None = None,
    partner_confidences: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> CutMixResult:
    """Colour jitter, (greyscale,) Gaussian blur, then CutMix: the paper's strong view.

    Takes a *weak view* (and the teacher's pseudo-labels and confidences for
    it) and adds only photometric noise and the CutMix box: geometry is not
    redone, so labels and confidences stay aligned with the image. Labels
    and confidences are touched only by CutMix.

    With ``partner_images`` (a second weak-view batch, and its own
    pseudo-labels and confidences) the CutMix boxes come from that batch
    (:func:`cutmix`), and its images get their own photometric noise first,
    drawn in the same pass (the batch and its partners stacked).
    """
    stacked = images if partner_images is None else torch.cat([images, partner_images])
    out = colour_jitter(stacked, brightness=config.brightness, contrast=config.contrast,
                        saturation=config.saturation, hue=config.hue,
                        p=config.jitter_p, generator=generator)
    if config.grey_p > 0:
        out = random_greyscale(out, p=config.grey_p, generator=generator)
    out = gaussian_blur(out, sigma_range=config.blur_sigma_range, p=config.blur_p,
                        generator=generator)
    partner_out = None
    if partner_images is not None:
        out, partner_out = out.split([images.shape[0], partner_images.shape[0]])
    return cutmix(out, labels, confidences, p=config.cutmix_p,
                  area_range=config.cutmix_area_range,
                  aspect_range=config.cutmix_aspect_range, partner_images=partner_out,
                  partner_labels=partner_labels, partner_confidences=partner_confidences,
                  generator=generator)
