"""Robustness of trained runs: test IoU under image corruptions, and the
single- and coupled-defect pictures of the paper's Figures 9 and 10.

Corruptions
-----------
The paper shows pictures of defects in "complex scenes" (damage-like edges,
illumination, shadows, motion blur). To turn that into a number, each
corruption of :data:`CORRUPTIONS` degrades the test images at five
severities (ImageNet-C's convention: 1 mild … 5 severe, 0 the clean image)
and the runs are scored on them:

* ``brightness`` (illumination): ``kornia.enhance.adjust_brightness``,
  +0.1 … +0.5 added to every channel;
* ``shadow``: a plasma fractal (``kornia.contrib.diamond_square``) cut at its
  median, its edge blurred, the light inside reduced by 20 … 80 %;
* ``motion_blur``: ``kornia.filters.motion_blur``, kernel 5 … 21 px, its
  direction drawn per image;
* ``gaussian_noise``: additive, σ 0.08 … 0.38;
* ``defocus_blur``: a disk kernel of radius 3 … 10 px
  (``kornia.filters.filter2d``), then a σ 0.5 Gaussian;
* ``contrast``: ``kornia.enhance.adjust_contrast_with_mean_subtraction``,
  factor 0.4 … 0.05;
* ``jpeg``: Pillow's JPEG codec, quality 25 … 7.

Levels follow ImageNet-C where it has the corruption (noise, defocus,
contrast, brightness, JPEG); pixel sizes are for a 224 px image and scale
with the shorter side, so a 96 px image is blurred as much relative to its
content (on small images, neighbouring severities of a blur can round to
one kernel). Images are float ``(B, 3, H, W)`` in [0, 1], as the models take them.

**Determinism.** The random draws of one image (noise, shadow shape, motion
direction) come from its own generator, seeded by the seed, the image's
index in the evaluated set and the corruption: results do not depend on the
batch size, and all severities of one image share their draws, so a severity
differs from the one below only in strength.

**Scores.** Per model, corruption and severity, one confusion matrix over
the evaluated images (as :mod:`semiseg_helpers.evaluate` scores a split);
per corruption the *mean IoU over severities*, and *relative robustness* =
that mean / the clean IoU, per class and for MIoU.

Figures 9 and 10
----------------
Images are chosen by a rule, not by hand (:func:`pick_single`,
:func:`pick_coupled`): a defect class is *present* when it covers at least
``min_share`` of the image's labelled pixels; a *single-defect* image has
exactly one class present, a *coupled* one two or more. Among them the most
complex scenes are shown, complexity being the mean Sobel gradient magnitude
over the ground-truth background (:func:`scene_complexity`): edges, texture
and shadow boundaries that are *not* defects, the "damage-like edges" the
paper's figures are about. The rule ignores the models, so it cannot favour one.
"""

from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from semiseg_helpers.classes import CLASS_COLOURS, CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, overlay
from semiseg_helpers.evaluate import confusion_matrix, summarise

REFERENCE_SIZE = 224
"""The image side (px) the spatial levels of :data:`CORRUPTIONS` are given for."""

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
CLEAN = "clean"
MIOU = "MIoU"

Segmenter = Callable[[Tensor], Tensor]
"""``float (B, 3, H, W) in [0, 1] -> (B, H, W)`` class indices."""


# --------------------------------------------------------------------------- #
# Corruptions (one image at a time: (1, 3, H, W) float32 in [0, 1])


def _scaled(level: float, image: Tensor) -> float:
    """A length given for a :data:`REFERENCE_SIZE` px image, at this image's size."""
    return level * min(image.shape[-2:]) / REFERENCE_SIZE


def _brightness(image: Tensor, level: float, generator: torch.Generator) -> Tensor:
    from kornia.enhance import adjust_brightness

    return adjust_brightness(image, float(level))


def _contrast(image: Tensor, level: float, generator: torch.Generator) -> Tensor:
    from kornia.enhance import adjust_contrast_with_mean_subtraction

    return adjust_contrast_with_mean_subtraction(image, float(level))


def _gaussian_noise(image: Tensor, level: float, generator: torch.Generator) -> Tensor:
    noise = torch.randn(image.shape, generator=generator, dtype=image.dtype)
    return (image + level * noise.to(image.device)).clamp(0, 1)


def shadow_mask(height: int, width: int, generator: torch.Generator) -> Tensor:
    """A soft-edged shadow covering about half of an image: ``(1, 1, H, W)`` in [0, 1].

    A plasma fractal (diamond-square, the map kornia's ``RandomPlasmaShadow``
    thresholds) normalised to [0, 1] and cut at its median, so the shadow's
    outline is an irregular, natural-looking boundary; the cut is then
    blurred over about 2 % of the shorter side, a penumbra instead of a step.
    """
    from kornia.contrib import diamond_square
    from kornia.filters import gaussian_blur2d

    plasma = diamond_square((1, 1, height, width), roughness=0.6,
                            random_fn=partial(torch.rand, generator=generator),
                            normalize_range=(0.0, 1.0), dtype=torch.float32)
    hard = (plasma < plasma.median()).float()
    sigma = max(0.02 * min(height, width), 0.5)
    size = 2 * math.ceil(3 * sigma) + 1
    if size >= min(height, width):   # reflect padding needs the kernel inside the image
        return hard
    return gaussian_blur2d(hard, (size, size), (sigma, sigma))


def _shadow(image: Tensor, level: float, generator: torch.Generator) -> Tensor:
    shade = shadow_mask(*image.shape[-2:], generator).to(image.device, image.dtype)
    return image * (1 - level * shade)


def _motion_blur(image: Tensor, level: float, generator: torch.Generator) -> Tensor:
    from kornia.filters import motion_blur

    angle = float(torch.rand((), generator=generator)) * 180.0
    kernel = max(3, 2 * int(_scaled(level, image) // 2) + 1)   # odd, at least 3
    return motion_blur(image, kernel, angle, 0.0, border_type="reflect")


def disk_kernel(radius: float) -> Tensor:
    """A defocus (pillbox) kernel: the pixels within ``radius`` of the centre,
    equally weighted, summing to 1; ``(2k + 1, 2k + 1)`` with ``k = ceil(radius)``."""
    if radius <= 0:
        raise ValueError(f"disk radius must be positive, got {radius}")
    k = math.ceil(radius)
    offsets = torch.arange(-k, k + 1, dtype=torch.float32)
    inside = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2).float()
    return inside / inside.sum()


def _defocus_blur(image: Tensor, level: float, generator: torch.Generator) -> Tensor:
    from kornia.filters import filter2d, gaussian_blur2d

    kernel = disk_kernel(max(_scaled(level, image), 1.0)).to(image.device, image.dtype)
    if kernel.shape[-1] // 2 >= min(image.shape[-2:]):
        raise ValueError(f"defocus radius {kernel.shape[-1] // 2} px does not fit a "
                         f"{tuple(image.shape[-2:])} image")
    blurred = filter2d(image, kernel[None], border_type="reflect")
    return gaussian_blur2d(blurred, (3, 3), (0.5, 0.5))   # ImageNet-C's anti-aliasing


def _jpeg(image: Tensor, level: float, generator: torch.Generator) -> Tensor:
    from PIL import Image

    rgb = image[0].mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=int(level))
    with Image.open(buffer) as decoded:
        back = torch.from_numpy(np.array(decoded.convert("RGB")))
    return back.permute(2, 0, 1)[None].to(image.device, image.dtype).div(255)


@dataclass(frozen=True)
class Corruption:
    """One corruption: how it is computed and its level at each severity."""

    name: str
    label: str
    implementation: str
    parameter: str
    levels: tuple[float, ...]
    apply: Callable[[Tensor, float, torch.Generator], Tensor]
    """``(image (1, 3, H, W) float in [0, 1], level, generator) -> image``."""


CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("brightness", "illumination (brightness)", "kornia.enhance.adjust_brightness",
               "added to every channel", (0.1, 0.2, 0.3, 0.4, 0.5), _brightness),
    Corruption("shadow", "shadow", "kornia.contrib.diamond_square plasma, soft edge",
               "share of light removed in the shadow", (0.2, 0.35, 0.5, 0.65, 0.8), _shadow),
    Corruption("motion_blur", "motion blur", "kornia.filters.motion_blur",
               "kernel length (px at 224 px)", (5, 9, 13, 17, 21), _motion_blur),
    Corruption("gaussian_noise", "Gaussian noise", "torch.randn",
               "noise std", (0.08, 0.12, 0.18, 0.26, 0.38), _gaussian_noise),
    Corruption("defocus_blur", "defocus blur", "disk kernel, kornia.filters.filter2d",
               "disk radius (px at 224 px)", (3, 4, 6, 8, 10), _defocus_blur),
    Corruption("contrast", "contrast loss",
               "kornia.enhance.adjust_contrast_with_mean_subtraction",
               "contrast factor", (0.4, 0.3, 0.2, 0.1, 0.05), _contrast),
    Corruption("jpeg", "JPEG compression", "Pillow JPEG codec",
               "JPEG quality", (25, 18, 15, 10, 7), _jpeg),
)}
"""The corruptions by name, in the order tables and figures show them."""


def corruption_table() -> pd.DataFrame:
    """What each corruption is and its level at each severity (for the notebook)."""
    return pd.DataFrame([{"corruption": c.name, "what": c.label,
                          "implementation": c.implementation, "level": c.parameter,
                          **{f"severity {s}": lvl for s, lvl in zip(SEVERITIES, c.levels)}}
                         for c in CORRUPTIONS.values()])


def image_generator(seed: int, index: int, corruption: str) -> torch.Generator:
    """The CPU generator of one image's draws for one corruption."""
    state = np.random.SeedSequence([seed, index, zlib.crc32(corruption.encode())])
    return torch.Generator().manual_seed(int(state.generate_state(1, np.uint64)[0] >> 1))


def _corruption(name: str) -> Corruption:
    try:
        return CORRUPTIONS[name]
    except KeyError:
        raise ValueError(f"unknown corruption {name!r}; choose from {list(CORRUPTIONS)}") from None


def corrupt(images: Tensor, name: str, severity: int, seed: int = 0,
            first_index: int = 0) -> Tensor:
    """``images`` (float ``(B, 3, H, W)`` in [0, 1]) corrupted by ``name`` at
    ``severity`` (0: the images themselves, unchanged; 1 … 5).

    Image ``b`` of the batch draws from :func:`image_generator` with index
    ``first_index + b``, so a set corrupted in batches is the same set
    whatever the batching. Shape, dtype and device are kept; values stay in [0, 1].
    """
    corruption = _corruption(name)
    if not (images.ndim == 4 and images.shape[1] == 3 and images.is_floating_point()):
        raise ValueError(f"corrupt expects float images (B, 3, H, W), got "
                         f"{images.dtype} {tuple(images.shape)}")
    if severity not in (0, *SEVERITIES):
        raise ValueError(f"severity must be 0 (clean) or one of {SEVERITIES}, got {severity!r}")
    if severity == 0:
        return images
    level = corruption.levels[severity - 1]
    out = [corruption.apply(images[b:b + 1].float(), level,
                            image_generator(seed, first_index + b, name))
           for b in range(images.shape[0])]
    return torch.cat(out).clamp_(0, 1).to(images.dtype)


def psnr(reference: Tensor, image: Tensor) -> float:
    """Peak signal-to-noise ratio (dB) of ``image`` against ``reference``, both in [0, 1]."""
    mse = float(torch.mean((reference.double() - image.double()) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


# --------------------------------------------------------------------------- #
# Data and models


@dataclass(frozen=True)
class LabelledImage:
    """One test image: RGB ``(H, W, 3) uint8`` and its mask of schema indices."""

    name: str
    image: np.ndarray
    mask: np.ndarray


def systematic_subset(samples: Sequence[dict], n: int | None) -> list[dict]:
    """``n`` samples evenly spaced through ``samples`` in name order (all when
    ``n`` is None or not smaller): a deterministic subset with no say in which
    images are easy."""
    ordered = sorted(samples, key=lambda s: s["name"])
    if n is None or n >= len(ordered):
        return ordered
    if n <= 0:
        raise ValueError(f"n_images must be positive, got {n}")
    return [ordered[i * len(ordered) // n] for i in range(n)]


def load_split(manifest: dict, samples: Sequence[dict]) -> list[LabelledImage]:
    """The prepared ``samples`` of ``manifest`` as :class:`LabelledImage` s."""
    from PIL import Image

    root = Path(manifest["root"])
    out = []
    for s in samples:
        with Image.open(root / s["image"]) as im:
            image = np.array(im.convert("RGB"))
        with Image.open(root / s["mask"]) as im:
            mask = np.array(im)
        out.append(LabelledImage(s["name"], image, mask))
    return out


def load_photos(folder: str | Path, dataset: str = "mdmcs") -> list[LabelledImage]:
    """The labelled photos of a source folder (``dataset``: its reader, see
    :mod:`semiseg_helpers.data.readers`) at full resolution, masks on the schema."""
    from semiseg_helpers.data.readers import DataError, open_source

    reader = open_source(dataset, folder)
    labelled = [s for s in reader.samples() if s.mask is not None]
    if not labelled:
        raise DataError(f"{folder}: no labelled photo ({dataset} layout)")
    return [LabelledImage(s.name, *reader.load(s)) for s in labelled]


def restrict_classes(mask: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """``mask`` with every defect class outside ``classes`` set to ignore: a
    model cannot be scored on a class it was never taught (MDMCS's rebar, for
    a model trained on crack and spalling)."""
    keep = np.zeros(256, dtype=bool)
    keep[[CLASS_NAMES.index(c) for c in ("background", *classes)]] = True
    keep[IGNORE_INDEX] = True
    return np.where(keep[mask], mask, IGNORE_INDEX).astype(np.uint8)


def run_classes(run_dir: str | Path) -> list[str]:
    """The defect classes a finished run was trained and scored on (its summary)."""
    from semiseg_helpers.runs import RunDir

    return list(RunDir(run_dir).read_summary()["classes"])


def load_segmenter(run_dir: str | Path, device: str = "auto") -> Segmenter:
    """A run's best weights as a :data:`Segmenter`: sliding-window inference
    at the run's evaluation window and precision, as its test score was made."""
    from semiseg_helpers.evaluate import eval_window, run_logits_fn, sliding_window_logits
    from semiseg_helpers.predict import load_run_model

    model, config = load_run_model(run_dir, device)
    dev = next(model.parameters()).device
    forward = run_logits_fn(model, config, dev)
    window = eval_window(config)

    @torch.no_grad()
    def segment(images: Tensor) -> Tensor:
        logits = sliding_window_logits(forward, images.to(dev), window, NUM_CLASSES)
        return logits.argmax(1).cpu()
    return segment


def predict(segment: Segmenter, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Class-index masks (``uint8``) of RGB ``images``, one image at a time."""
    out = []
    for image in images:
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
        out.append(segment(x)[0].to(torch.uint8).numpy())
    return out


# --------------------------------------------------------------------------- #
# Scoring under corruptions


def _batches(images: Sequence[LabelledImage], batch_size: int
             ) -> Iterator[tuple[int, Tensor, Tensor]]:
    """``(first index, images uint8 (B, 3, H, W), masks (B, H, W))``: runs of
    consecutive images of one size, at most ``batch_size`` long."""
    start = 0
    while start < len(images):
        shape = images[start].image.shape
        stop = start + 1
        while stop < len(images) and stop - start < batch_size and images[stop].image.shape == shape:
            stop += 1
        chunk = images[start:stop]
        x = torch.from_numpy(np.stack([c.image for c in chunk])).permute(0, 3, 1, 2)
        y = torch.from_numpy(np.stack([c.mask for c in chunk]))
        yield start, x, y
        start = stop


def corruption_confusions(segmenters: Mapping[str, Segmenter],
                          images: Sequence[LabelledImage],
                          corruptions: Sequence[str] = tuple(CORRUPTIONS),
                          severities: Sequence[int] = SEVERITIES, seed: int = 0,
                          batch_size: int = 16, progress: bool = True
                          ) -> dict[tuple[str, str, int], np.ndarray]:
    """Confusion matrices ``{(model, corruption, severity): (C, C)}`` of every
    model on ``images``, clean (``("clean", 0)``) and under every corruption
    and severity. Each corrupted batch is made once and fed to every model."""
    from tqdm.auto import tqdm

    for name in corruptions:
        _corruption(name)
    if not set(severities) <= set(SEVERITIES):
        raise ValueError(f"severities must be among {SEVERITIES}, got {list(severities)}")
    if not images:
        raise ValueError("no image to score")
    conditions = [(CLEAN, 0)] + [(c, s) for c in corruptions for s in severities]
    out = {(m, c, s): np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
           for m in segmenters for c, s in conditions}
    batches = list(_batches(images, batch_size))
    with tqdm(total=len(conditions) * len(images), desc="corruptions",
              disable=not progress) as bar:
        for corruption, severity in conditions:
            for first, x, y in batches:
                x = x.float() / 255
                xc = x if corruption == CLEAN else corrupt(x, corruption, severity, seed, first)
                for model, segment in segmenters.items():
                    out[model, corruption, severity] += confusion_matrix(
                        segment(xc), y, NUM_CLASSES).numpy()
                bar.update(len(x))
    return out


def scores_frame(confusions: Mapping[tuple[str, str, int], np.ndarray],
                 classes: Sequence[str]) -> pd.DataFrame:
    """One row per model, corruption, severity and class (``classes`` and
    ``"MIoU"``): its IoU (fraction), from :func:`corruption_confusions`."""
    rows = []
    for (model, corruption, severity), cm in confusions.items():
        scores = summarise(cm, classes)
        for c in classes:
            rows.append((model, corruption, severity, c, scores["iou"][c]))
        rows.append((model, corruption, severity, MIOU, scores["miou"]))
    return pd.DataFrame(rows, columns=["model", "corruption", "severity", "class", "iou"])


def robustness_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per model, corruption and class: the clean IoU, the mean IoU over the
    severities scored and the relative robustness ``mean / clean`` (NaN
    where the clean IoU is 0 or undefined). Model, corruption and class keep
    the order they have in ``scores``."""
    clean = scores[scores["corruption"] == CLEAN].set_index(["model", "class"])["iou"]
    corrupted = scores[scores["corruption"] != CLEAN]
    if corrupted.empty:
        raise ValueError("scores hold no corrupted condition")
    mean = (corrupted.groupby(["model", "corruption", "class"], sort=False)["iou"].mean()
            .rename("mean").reset_index())
    mean["clean"] = [clean.get((m, c), math.nan) for m, c in zip(mean["model"], mean["class"])]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean["relative"] = np.where(mean["clean"] > 0, mean["mean"] / mean["clean"], math.nan)
    return mean[["model", "corruption", "class", "clean", "mean", "relative"]]


def robustness_display(table: pd.DataFrame, labels: Mapping[str, str] | None = None
                       ) -> pd.DataFrame:
    """:func:`robustness_table` as one row per model and corruption: per
    class and MIoU the mean IoU over severities (%) and the relative
    robustness; a ``clean`` row first and an ``all corruptions`` row (means
    over the corruptions) last, per model."""
    labels = labels or {}
    classes = list(dict.fromkeys(table["class"]))

    def cells(iou: pd.Series, relative: pd.Series | float) -> dict[str, float]:
        out = {}
        for c in classes:
            out[c if c == MIOU else f"{c} IoU"] = 100 * iou[c]
            out[f"{c} rel."] = relative if isinstance(relative, float) else relative[c]
        return out

    rows = []
    for model, part in table.groupby("model", sort=False):
        name = labels.get(model, model)
        first = part[part["corruption"] == part["corruption"].iloc[0]].set_index("class")
        rows.append({"model": name, "corruption": CLEAN, **cells(first["clean"], 1.0)})
        for corruption, rows_c in part.groupby("corruption", sort=False):
            by_class = rows_c.set_index("class")
            rows.append({"model": name, "corruption": corruption,
                         **cells(by_class["mean"], by_class["relative"])})
        average = part.groupby("class", sort=False)[["mean", "relative"]].mean()
        rows.append({"model": name, "corruption": "all corruptions",
                     **cells(average["mean"], average["relative"])})
    return pd.DataFrame(rows)


def fragility(table: pd.DataFrame) -> pd.DataFrame:
    """Per model and defect class (MIoU left out): the relative robustness
    averaged over corruptions, and the corruption that hurts the class most.
    Rows of a model are sorted most fragile first."""
    classes = table[table["class"] != MIOU]
    rows = []
    for (model, cls), part in classes.groupby(["model", "class"], sort=False):
        valid = part.dropna(subset=["relative"])
        worst = valid.loc[valid["relative"].idxmin()] if len(valid) else None
        rows.append({"model": model, "class": cls,
                     "mean relative": valid["relative"].mean() if len(valid) else math.nan,
                     "worst corruption": worst["corruption"] if worst is not None else "",
                     "worst relative": worst["relative"] if worst is not None else math.nan})
    out = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(dict.fromkeys(table["model"]))}
    return (out.assign(_m=out["model"].map(order))
            .sort_values(["_m", "mean relative"], na_position="last")
            .drop(columns="_m").reset_index(drop=True))


def most_fragile(table: pd.DataFrame) -> dict[str, str]:
    """``{model: class}``: each model's class with the lowest relative
    robustness averaged over corruptions (models with none defined left out)."""
    frag = fragility(table).dropna(subset=["mean relative"])
    return {m: str(part.iloc[0]["class"]) for m, part in frag.groupby("model", sort=False)}


def _label(corruption: str) -> str:
    return CORRUPTIONS[corruption].label if corruption in CORRUPTIONS else corruption


def fragility_statements(table: pd.DataFrame, labels: Mapping[str, str] | None = None,
                         paper_class: str = "crack") -> list[str]:
    """What the numbers say, in words: per model the most fragile class (by
    relative robustness), the share of clean IoU every class and MIoU keep,
    the corruption that hurts that class most and the classes' IoU under
    corruption in absolute terms; then whether the most fragile class is the
    paper's (``paper_class``)."""
    labels = labels or {}
    frag = fragility(table)
    fragile = most_fragile(table)
    lines = []
    for model, part in frag.groupby("model", sort=False):
        name = labels.get(model, model)
        part = part.dropna(subset=["mean relative"])
        if part.empty:
            lines.append(f"{name}: no class has a clean IoU above 0, "
                         "so relative robustness is undefined.")
            continue
        top = part.iloc[0]
        rows = table[table["model"] == model]
        miou = rows[rows["class"] == MIOU]["relative"].mean()
        kept = ", ".join(f"{r['class']} {100 * r['mean relative']:.0f} %"
                         for _, r in part.iterrows())
        absolute = (rows[rows["class"] != MIOU].groupby("class", sort=False)[["mean", "clean"]]
                    .mean().sort_values("mean"))
        levels = ", ".join(f"{c} {100 * r['mean']:.0f} % (clean {100 * r['clean']:.0f} %)"
                           for c, r in absolute.iterrows())
        lines.append(f"{name}: relative to its clean IoU, {top['class']} is the most fragile "
                     f"class (share kept, mean over corruptions: {kept}; MIoU {100 * miou:.0f} %);"
                     f" {_label(top['worst corruption'])} hurts it most "
                     f"({100 * top['worst relative']:.0f} % kept). Mean IoU under corruption, "
                     f"lowest first: {levels}.")
    if fragile:
        if all(c == paper_class for c in fragile.values()):
            lines.append(f"As the paper says, {paper_class} is the most fragile class "
                         "for every model scored.")
        else:
            by_class: dict[str, list[str]] = {}
            for model, cls in fragile.items():
                by_class.setdefault(cls, []).append(labels.get(model, model))
            found = "; ".join(f"{cls} for {' and '.join(models)}"
                              for cls, models in by_class.items())
            lines.append(f"The paper names {paper_class} as the most fragile class; relative "
                         f"to clean IoU the most fragile here is {found}.")
    return lines


# --------------------------------------------------------------------------- #
# Choosing the images of Figures 9 and 10


@dataclass(frozen=True)
class Scene:
    """A labelled image described for Figures 9–10."""

    source: str
    name: str
    image: np.ndarray
    mask: np.ndarray
    defects: tuple[str, ...]
    """Classes present (at least ``min_share`` of the labelled pixels), in schema order."""
    complexity: float


def present_defects(mask: np.ndarray, classes: Sequence[str], min_share: float) -> tuple[str, ...]:
    """The classes of ``classes`` covering at least ``min_share`` of the
    labelled (not ignored) pixels of ``mask``, in schema order."""
    counts = np.bincount(np.asarray(mask).ravel(), minlength=256)
    labelled = counts.sum() - counts[IGNORE_INDEX]
    if labelled == 0:
        return ()
    return tuple(c for c in CLASS_NAMES[1:] if c in classes
                 and counts[CLASS_NAMES.index(c)] >= min_share * labelled)


def scene_complexity(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean Sobel gradient magnitude of the grey image (in [0, 1] units) over
    the ground-truth background: edges that are not defects. 0 without background."""
    from kornia.color import rgb_to_grayscale
    from kornia.filters import sobel

    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    magnitude = sobel(rgb_to_grayscale(x))[0, 0].numpy()
    background = np.asarray(mask) == 0
    return float(magnitude[background].mean()) if background.any() else 0.0


def describe_scenes(images: Iterable[LabelledImage], source: str, classes: Sequence[str],
                    min_share: float = 0.001) -> list[Scene]:
    """:class:`Scene` s of ``images``: defects present among ``classes`` and complexity."""
    return [Scene(source, im.name, im.image, im.mask,
                  present_defects(im.mask, classes, min_share),
                  scene_complexity(im.image, im.mask)) for im in images]


def most_complex(scenes: Iterable[Scene]) -> list[Scene]:
    """``scenes`` by complexity, highest first (ties by name)."""
    return sorted(scenes, key=lambda s: (-s.complexity, s.name))


def pick_single(scenes: Sequence[Scene], classes: Sequence[str], per_class: int = 1
                ) -> list[Scene]:
    """Figure 9's rule: for each class of ``classes``, the ``per_class`` most
    complex images where it is the only class present."""
    return [s for c in classes
            for s in most_complex(s for s in scenes if s.defects == (c,))[:per_class]]


def pick_coupled(scenes: Sequence[Scene], n: int = 2) -> list[Scene]:
    """Figure 10's rule: the ``n`` most complex images with two or more classes present."""
    return most_complex(s for s in scenes if len(s.defects) >= 2)[:n]


def scenes_table(scenes: Sequence[Scene], figure: str) -> pd.DataFrame:
    """The chosen images, for the record: source, name, classes, complexity."""
    return pd.DataFrame([{"figure": figure, "source": s.source, "image": s.name,
                          "size": f"{s.image.shape[1]}x{s.image.shape[0]}",
                          "defects": " + ".join(s.defects), "complexity": s.complexity}
                         for s in scenes])


# --------------------------------------------------------------------------- #
# Error maps and figures

ERROR_COLOURS: dict[str, tuple[int, int, int]] = {
    "defect found": (40, 180, 60),
    "false alarm": (230, 40, 200),
    "missed": (255, 140, 0),
    "wrong defect class": (255, 230, 0),
    "not scored": (255, 255, 255),
}
"""Error-map colours; correctly found background shows the photo, dimmed and grey."""


def error_map(truth: np.ndarray, prediction: np.ndarray, image: np.ndarray | None = None
              ) -> np.ndarray:
    """RGB ``(H, W, 3) uint8``: each pixel coloured by :data:`ERROR_COLOURS`
    (a defect found, a false alarm on background, a missed defect, a defect of
    the wrong class, an ignored pixel); correct background is the dimmed grey
    ``image`` (black without one)."""
    truth, prediction = np.asarray(truth), np.asarray(prediction)
    if truth.shape != prediction.shape:
        raise ValueError(f"truth {truth.shape} and prediction {prediction.shape} differ in shape")
    out = np.zeros((*truth.shape, 3), dtype=np.uint8)
    if image is not None:
        grey = np.asarray(image, dtype=np.float32).mean(axis=2)
        out[:] = (0.45 * grey).astype(np.uint8)[..., None]
    scored = truth != IGNORE_INDEX
    defect_t, defect_p = scored & (truth > 0), prediction > 0
    regions = {"defect found": defect_t & (prediction == truth),
               "false alarm": scored & (truth == 0) & defect_p,
               "missed": defect_t & ~defect_p,
               "wrong defect class": defect_t & defect_p & (prediction != truth),
               "not scored": ~scored}
    for name, where in regions.items():
        out[where] = ERROR_COLOURS[name]
    return out


def image_miou(truth: np.ndarray, prediction: np.ndarray, classes: Sequence[str]) -> float:
    """MIoU of one image over the classes of ``classes`` its truth contains (NaN if none)."""
    cm = confusion_matrix(torch.from_numpy(np.asarray(prediction)),
                          torch.from_numpy(np.asarray(truth)), NUM_CLASSES)
    return summarise(cm.numpy(), classes)["miou"]


def prediction_figure(scenes: Sequence[Scene], predictions: Mapping[str, Sequence[np.ndarray]],
                      classes: Sequence[str], title: str, alpha: float = 0.55):
    """Rows of image, ground truth, and per model its prediction and error map.

    ``predictions`` maps a model label to one mask per scene; ``classes``
    are those the models know: other defect classes of the truth are drawn
    in the ground truth but not scored (white in the error maps). Each
    prediction is titled with the image's MIoU over the classes it contains.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if not scenes:
        raise ValueError(f"{title}: no image meets the rule")
    columns = ["image", "ground truth"] + [f"{m}: {k}" for m in predictions
                                          for k in ("prediction", "errors")]
    fig, axes = plt.subplots(len(scenes), len(columns), squeeze=False,
                             figsize=(2.3 * len(columns), 2.3 * len(scenes) + 0.9))
    for i, scene in enumerate(scenes):
        truth = restrict_classes(scene.mask, classes)
        unscored = [c for c in CLASS_NAMES[1:] if c not in classes
                    and (np.asarray(scene.mask) == CLASS_NAMES.index(c)).any()]
        panels = [(scene.image, f"{scene.source} · {scene.name}"),
                  (overlay(scene.image, scene.mask, alpha), " + ".join(scene.defects)
                   + "".join(f" ({c}: not scored)" for c in unscored))]
        for model, masks in predictions.items():
            miou = image_miou(truth, masks[i], classes)
            panels += [(overlay(scene.image, masks[i], alpha), f"image MIoU {100 * miou:.0f} %"),
                       (error_map(truth, masks[i], scene.image), "")]
        for ax, (panel, caption) in zip(axes[i], panels):
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(caption, fontsize=7)
    for ax, name in zip(axes[0], columns):
        ax.set_title(name, fontsize=8)
    shown = [c for c in CLASS_NAMES[1:] if any(c in s.defects or
                                               (np.asarray(s.mask) == CLASS_NAMES.index(c)).any()
                                               for s in scenes)]
    handles = [Patch(color=np.array(CLASS_COLOURS[c]) / 255, label=c) for c in shown]
    handles += [Patch(facecolor=np.array(v) / 255, edgecolor="grey", label=k)
                for k, v in ERROR_COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=7,
               frameon=False, bbox_to_anchor=(0.5, -0.01))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def severity_figure(scores: pd.DataFrame, labels: Mapping[str, str] | None = None):
    """IoU (%) against severity (0 = clean), one panel per corruption, a
    colour per class (black: MIoU) and a line style per model."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    labels = labels or {}
    corruptions = [c for c in dict.fromkeys(scores["corruption"]) if c != CLEAN]
    models = list(dict.fromkeys(scores["model"]))
    classes = list(dict.fromkeys(scores["class"]))
    cols = min(4, len(corruptions))
    rows = math.ceil(len(corruptions) / cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, sharey=True,
                             figsize=(3.0 * cols, 2.6 * rows + 0.5))
    styles = ["-", "--", ":", "-."]
    for ax, corruption in zip(axes.ravel(), corruptions):
        for k, model in enumerate(models):
            for c in classes:
                rows_c = scores[(scores["model"] == model) & (scores["class"] == c)
                                & scores["corruption"].isin([CLEAN, corruption])]
                rows_c = rows_c.sort_values("severity")
                colour = "black" if c == MIOU else np.array(CLASS_COLOURS[c]) / 255
                ax.plot(rows_c["severity"], 100 * rows_c["iou"], marker="o", ms=3,
                        ls=styles[k % len(styles)], color=colour)
        ax.set_title(CORRUPTIONS[corruption].label, fontsize=9)
        ax.set_xlabel("severity (0 = clean)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("test IoU (%)", fontsize=8)
    for ax in axes.ravel()[len(corruptions):]:
        ax.set_axis_off()
    handles = [Line2D([], [], color="black" if c == MIOU else np.array(CLASS_COLOURS[c]) / 255,
                      label=c) for c in classes]
    handles += [Line2D([], [], color="grey", ls=styles[k % len(styles)],
                       label=labels.get(m, m)) for k, m in enumerate(models)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
               frameon=False, bbox_to_anchor=(0.5, -0.01))
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def corruption_gallery(image: np.ndarray, corruptions: Sequence[str] = tuple(CORRUPTIONS),
                       severities: Sequence[int] = SEVERITIES, seed: int = 0):
    """One image under every corruption (rows) and severity (columns)."""
    import matplotlib.pyplot as plt

    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    fig, axes = plt.subplots(len(corruptions), len(severities) + 1, squeeze=False,
                             figsize=(1.6 * (len(severities) + 1), 1.6 * len(corruptions)))
    for r, name in enumerate(corruptions):
        for k, severity in enumerate((0, *severities)):
            shown = corrupt(x, name, severity, seed)[0].permute(1, 2, 0).numpy()
            axes[r, k].imshow(shown)
            axes[r, k].set_xticks([])
            axes[r, k].set_yticks([])
            if r == 0:
                axes[r, k].set_title("clean" if severity == 0 else f"severity {severity}",
                                     fontsize=8)
        axes[r, 0].set_ylabel(CORRUPTIONS[name].label, fontsize=8)
    fig.tight_layout()
    return fig


__all__ = ["CLEAN", "CORRUPTIONS", "Corruption", "ERROR_COLOURS", "LabelledImage", "MIOU",
           "REFERENCE_SIZE", "SEVERITIES", "Scene", "Segmenter", "corrupt",
           "corruption_confusions", "corruption_gallery", "corruption_table",
           "describe_scenes", "disk_kernel", "error_map", "fragility", "fragility_statements",
           "image_generator", "image_miou", "load_photos", "load_segmenter", "load_split",
           "most_complex", "most_fragile",
           "pick_coupled", "pick_single", "predict", "prediction_figure", "present_defects",
           "psnr", "restrict_classes", "robustness_display", "robustness_table", "run_classes",
           "scene_complexity", "scenes_table", "scores_frame", "severity_figure", "shadow_mask",
           "systematic_subset"]
