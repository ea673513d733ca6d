"""Grad-CAM of a segmentation network's encoder, and two numbers per map.

Figure 11 of the paper shows Grad-CAM maps of the encoder's last stage. Here
they are computed with pytorch-grad-cam (``pytorch_grad_cam``) for one defect
class at a time and turned into numbers:

* **mass inside the ground truth**: the CAM normalised to sum 1 over the
  image, summed over the ground-truth pixels of the class
  (:func:`cam_mass_inside`). A map spread evenly over the image scores the
  class's area share (``gt_share``), the chance level to read it against.
* **ROAD** (Rong et al., 2022, *A Consistent and Efficient Evaluation
  Strategy for Attribution Methods*), from ``pytorch_grad_cam.metrics.road``:
  the pixels the CAM ranks most (MoRF) or least (LeRF) relevant are removed by
  noisy linear imputation and the change of the model's confidence measured;
  the combined score ``(LeRF - MoRF) / 2`` is positive when removing what the
  map points at costs more confidence than removing what it ignores.

Choices, and why:

* **The Grad-CAM target** is the sum of the class logit over the class's
  *ground-truth* pixels (pytorch-grad-cam's ``SemanticSegmentationTarget``),
  not over the pixels a model predicts as the class: both models are then
  asked the same question about the same pixels, so their maps differ only
  because the models do, and a model that misses a defect still gets a map
  (of what drives its logit there) instead of none.
* **The ROAD confidence** is the mean softmax probability of the class over
  the same pixels (:class:`MeanClassProbability`): bounded, independent of
  the defect's area, and the segmentation analogue of the class probability
  ROAD was defined with. A sum of logits would weigh large defects more and
  move when every logit shifts together.
* **Ties in the CAM are broken** by a seeded jitter far below any real
  difference (:func:`break_ties`) before ROAD sees it: ReLU leaves whole
  areas at exactly 0, and the library's percentile threshold (``cam <
  threshold``) would then remove all or none of them, not the stated share.
* **The target layer** is the module that outputs the encoder's deepest
  pyramid level (:func:`encoder_last_stage`), for any timm encoder of
  :class:`~semiseg_helpers.models.encoders.TimmEncoder`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from semiseg_helpers.classes import CLASS_NAMES, overlay
from semiseg_helpers.models.encoders import TimmEncoder

ROAD_PERCENTILES: tuple[int, ...] = (20, 40, 60, 80)
"""ROAD thresholds: at percentile ``p`` MoRF removes the ``100 - p`` % most
relevant pixels and LeRF the ``100 - p`` % least relevant ones, so these remove
80, 60, 40 and 20 % of the image (pytorch-grad-cam's default is 10, ..., 90:
more than twice the imputations for a smoother curve)."""


# --------------------------------------------------------------------------- #
# The model and its target layer


class SegmentationLogits(nn.Module):
    """A segmentation network seen as ``images -> logits (B, C, H, W)``.

    The package's models return a :class:`~semiseg_helpers.models.SegOutput`;
    pytorch-grad-cam wants a tensor. When gradients are being recorded the
    input is made to require a gradient, so that activations carry one even
    in a network whose parameters are frozen (a mean teacher's).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and not x.requires_grad:
            x = x.detach().requires_grad_(True)
        out = self.model(x)
        return out.logits if hasattr(out, "logits") else out


def encoder_last_stage(model: nn.Module) -> nn.Module:
    """The module of ``model.encoder`` whose output is its deepest pyramid level.

    The name comes from timm's ``feature_info`` (``blocks.6`` for
    EfficientNet-Lite0, ``stages.3`` for ConvNeXt). timm's feature wrappers
    may flatten a leading ``stages.3`` into an attribute ``stages_3``; every
    such spelling is tried.

    Raises:
        TypeError: ``model`` has no :class:`TimmEncoder` as ``encoder``.
        LookupError: the feature module cannot be found in the encoder.
    """
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, TimmEncoder):
        raise TypeError(f"{type(model).__name__} has no TimmEncoder 'encoder' (got "
                        f"{type(encoder).__name__}); pass the target layer explicitly")
    name = encoder.model.feature_info.get_dicts()[-1]["module"]
    parts = name.split(".")
    spellings = ["_".join(parts[:k]) + "".join(f".{p}" for p in parts[k:])
                 for k in range(1, len(parts) + 1)]
    for spelling in spellings:
        try:
            return encoder.model.get_submodule(spelling)
        except AttributeError:
            continue
    raise LookupError(f"encoder {encoder.name!r}: feature module {name!r} not found "
                      f"(tried {spellings})")


def channels_first(encoder: TimmEncoder) -> Callable[[Tensor], Tensor] | None:
    """pytorch-grad-cam's ``reshape_transform`` for an encoder whose stages
    output channels-last maps (``None``: they are already ``(B, C, H, W)``)."""
    if getattr(encoder.model, "output_fmt", "NCHW") == "NHWC":
        return lambda t: t.permute(0, 3, 1, 2)
    return None


# --------------------------------------------------------------------------- #
# Targets


class MeanClassProbability:
    """Mean softmax probability of ``category`` over the pixels of ``mask``.

    A target in pytorch-grad-cam's sense: called with one image's logits
    ``(C, H, W)``, returns a scalar tensor.
    """

    def __init__(self, category: int, mask: np.ndarray) -> None:
        region = torch.from_numpy(np.asarray(mask, dtype=bool))
        if not region.any():
            raise ValueError(f"class {category}: empty mask, no pixel to average over")
        self.category = category
        self.mask = region

    def __call__(self, model_output: Tensor) -> Tensor:
        prob = model_output.float().softmax(0)[self.category]
        return prob[self.mask.to(prob.device)].mean()


def logit_sum_target(category: int, mask: np.ndarray) -> Callable[[Tensor], Tensor]:
    """pytorch-grad-cam's ``SemanticSegmentationTarget``: the sum of the
    class logit over ``mask``'s pixels (the Grad-CAM target used here)."""
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    return SemanticSegmentationTarget(category, np.asarray(mask, dtype=np.float32))


# --------------------------------------------------------------------------- #
# Maps and numbers


def grad_cam(model: nn.Module, images: Tensor, targets: Sequence[Callable],
             layer: nn.Module | None = None) -> np.ndarray:
    """Grad-CAM maps ``(B, H, W)`` in [0, 1], one per image and target.

    ``images`` are float in [0, 1], ``(B, 3, H, W)``; ``layer`` defaults to
    :func:`encoder_last_stage`. Each map is scaled by pytorch-grad-cam to a
    maximum of 1 (all zero where the class's weighted activations are nowhere
    positive).
    """
    from pytorch_grad_cam import GradCAM

    if images.ndim != 4 or len(targets) != images.shape[0]:
        raise ValueError(f"need (B, 3, H, W) images and B targets, got {tuple(images.shape)} "
                         f"and {len(targets)}")
    reshape = None
    if layer is None:
        layer = encoder_last_stage(model)
        reshape = channels_first(model.encoder)
    cam = GradCAM(model=SegmentationLogits(model), target_layers=[layer],
                  reshape_transform=reshape)
    try:  # not ``with``: its __exit__ would swallow an IndexError
        return cam(input_tensor=images, targets=list(targets))
    finally:
        cam.activations_and_grads.release()


def cam_mass_inside(cam: np.ndarray, region: np.ndarray) -> float:
    """Share of the CAM's total (the map normalised to sum 1) inside ``region``.

    ``nan`` for an all-zero map, which points nowhere.

    Raises:
        ValueError: shapes differ, or the map has negative values.
    """
    cam = np.asarray(cam, dtype=np.float64)
    region = np.asarray(region, dtype=bool)
    if cam.shape != region.shape:
        raise ValueError(f"CAM {cam.shape} and region {region.shape} differ in shape")
    if (cam < 0).any():
        raise ValueError("a CAM for mass shares must be non-negative")
    total = cam.sum()
    return float(cam[region].sum() / total) if total > 0 else math.nan


def break_ties(cam: np.ndarray, seed: int = 0, scale: float = 1e-9) -> np.ndarray:
    """``cam`` in float64 plus a seeded jitter in ``[0, scale)``.

    Values further apart than ``scale`` keep their order; equal values (the
    zeros ReLU leaves) get a random order, so a percentile threshold splits
    the pixels at the share it names.
    """
    rng = np.random.default_rng(seed)
    return np.asarray(cam, dtype=np.float64) + scale * rng.random(np.shape(cam))


@dataclass(frozen=True)
class RoadScore:
    """ROAD's confidence changes, averaged over the percentiles (probability units)."""

    morf: float      # after removing the most relevant pixels (negative: confidence lost)
    lerf: float      # after removing the least relevant ones
    combined: float  # (lerf - morf) / 2, pytorch-grad-cam's ROADCombined


def road(model: nn.Module, image: Tensor, cam: np.ndarray, target: Callable,
         percentiles: Sequence[int] = ROAD_PERCENTILES, seed: int = 0) -> RoadScore:
    """ROAD of one map for one image ``(1, 3, H, W)`` and one target.

    Computed with pytorch-grad-cam's ``ROADLeastRelevantFirstAverage`` then
    ``ROADMostRelevantFirstAverage`` (the order ``ROADCombined`` calls them
    in, so ``combined`` equals its result). The imputation noise comes from
    torch's global generator seeded with ``seed`` inside a fork, so its state
    outside is left as it was.
    """
    from pytorch_grad_cam.metrics.road import (ROADLeastRelevantFirstAverage,
                                               ROADMostRelevantFirstAverage)

    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"road takes one image (1, 3, H, W), got {tuple(image.shape)}")
    logits = SegmentationLogits(model).eval()
    cams = break_ties(cam, seed)[None]
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # the metric turns 0-d tensors into numpy scalars the way NumPy 2 deprecates
        warnings.filterwarnings("ignore", message="__array_wrap__", category=DeprecationWarning)
        torch.manual_seed(seed)
        lerf = ROADLeastRelevantFirstAverage(list(percentiles))(image, cams, [target], logits)
        morf = ROADMostRelevantFirstAverage(list(percentiles))(image, cams, [target], logits)
    lerf_v, morf_v = float(lerf[0]), float(morf[0])
    return RoadScore(morf=morf_v, lerf=lerf_v, combined=(lerf_v - morf_v) / 2)


# --------------------------------------------------------------------------- #
# Test images, one defect class at a time


@dataclass(frozen=True)
class CamCase:
    """One test image and the defect class its maps explain."""

    name: str
    class_name: str
    image: np.ndarray  # uint8 (H, W, 3)
    mask: np.ndarray   # uint8 (H, W), class indices of the whole schema

    @property
    def category(self) -> int:
        return CLASS_NAMES.index(self.class_name)

    @property
    def region(self) -> np.ndarray:
        return self.mask == self.category

    def tensor(self, device: torch.device | str = "cpu") -> Tensor:
        """The image as ``(1, 3, H, W)`` float in [0, 1]."""
        return torch.from_numpy(self.image).permute(2, 0, 1)[None].float().div(255).to(device)


def evenly_spaced(items: Sequence, n: int) -> list:
    """``n`` items at evenly spaced ranks, the first always included (all if fewer)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def select_images(manifest: dict, classes: Sequence[str], per_class: int,
                  min_share: float = 0.01, split: str = "test") -> list[tuple[str, dict]]:
    """The ``(class, sample)`` pairs Grad-CAM explains, by a fixed rule.

    Per class: the ``split``'s labelled samples where the class covers at
    least ``min_share`` of the labelled pixels, ranked by that share (largest
    first, then by name), and ``per_class`` of them at evenly spaced ranks —
    the largest defect, the smallest eligible one and those between, not only
    the easiest. Classes with no eligible image are left out.
    """
    chosen = []
    for c in classes:
        eligible = []
        for s in manifest["samples"]:
            if s["split"] != split or s["mask"] is None:
                continue
            labelled = sum(v for k, v in s["pixels"].items() if k != "ignore")
            share = s["pixels"].get(c, 0) / labelled if labelled else 0.0
            if share >= min_share and share > 0:
                eligible.append((-share, s["name"], s))
        eligible.sort(key=lambda t: t[:2])
        chosen += [(c, s) for _, _, s in evenly_spaced(eligible, per_class)]
    return chosen


def load_cases(manifest: dict, selection: Sequence[tuple[str, dict]]) -> list[CamCase]:
    """Read the images and masks of :func:`select_images`'s pairs."""
    from semiseg_helpers.data.dataset import ManifestDataset

    data = ManifestDataset(manifest["root"], [s for _, s in selection])
    cases = []
    for i, (c, s) in enumerate(selection):
        item = data[i]
        cases.append(CamCase(s["name"], c, item["image"].permute(1, 2, 0).numpy(),
                             item["mask"].numpy()))
    return cases


@dataclass(frozen=True)
class CamResult:
    """One model's map of one case and its numbers."""

    cam: np.ndarray           # float32 (H, W) in [0, 1]
    mass_in_gt: float         # share of the normalised map inside the class's pixels
    gt_share: float           # the class's share of the image (a uniform map's mass)
    probability: float        # mean probability of the class over its pixels, as given
    road: RoadScore | None


def explain(model: nn.Module, cases: Sequence[CamCase],
            percentiles: Sequence[int] | None = ROAD_PERCENTILES, seed: int = 0,
            layer: nn.Module | None = None) -> list[CamResult]:
    """Grad-CAM, mass inside the ground truth and ROAD for every case.

    The ROAD noise of case ``i`` is seeded with ``seed + i``, so two models
    explained on the same cases see the same imputations. ``percentiles=None``
    skips ROAD (the slow part: a sparse linear solve per percentile).
    """
    device = next(model.parameters()).device
    model.eval()
    results = []
    for i, case in enumerate(cases):
        x = case.tensor(device)
        cam = grad_cam(model, x, [logit_sum_target(case.category, case.region)], layer)[0]
        target = MeanClassProbability(case.category, case.region)
        with torch.no_grad():
            probability = float(target(SegmentationLogits(model)(x)[0]))
        results.append(CamResult(
            cam=cam, mass_in_gt=cam_mass_inside(cam, case.region),
            gt_share=float(case.region.mean()), probability=probability,
            road=None if percentiles is None else road(model, x, cam, target, percentiles,
                                                       seed + i)))
    return results


# --------------------------------------------------------------------------- #
# Tables and statements


def per_image_table(cases: Sequence[CamCase],
                    results: Mapping[str, Sequence[CamResult]]) -> pd.DataFrame:
    """One row per model and case (model label → its results, in case order)."""
    rows = []
    for model, model_results in results.items():
        if len(model_results) != len(cases):
            raise ValueError(f"{model}: {len(model_results)} results for {len(cases)} cases")
        for case, r in zip(cases, model_results):
            rows.append({"model": model, "class": case.class_name, "image": case.name,
                         "gt_share": r.gt_share, "cam_mass_in_gt": r.mass_in_gt,
                         "probability": r.probability,
                         "road_morf": r.road.morf if r.road else math.nan,
                         "road_lerf": r.road.lerf if r.road else math.nan,
                         "road_combined": r.road.combined if r.road else math.nan})
    return pd.DataFrame(rows)


SCORE_COLUMNS: tuple[str, ...] = ("gt_share", "cam_mass_in_gt", "probability", "road_morf",
                                  "road_lerf", "road_combined")


def _standard_error(values: pd.Series) -> float:
    """Standard error of the mean of the non-missing values (``nan`` below two)."""
    values = values.dropna()
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan


def score_table(per_image: pd.DataFrame) -> pd.DataFrame:
    """Means over the images per model and class, shares in %.

    ``n_images`` counts the cases, ``n_zero_cams`` the all-zero maps left out
    of ``cam_mass_in_gt`` (they point nowhere); ``*_se`` are standard errors
    of the two headline means over the images. ROAD stays in probability
    units (its combined score lies in [-0.5, 0.5]).
    """
    rows = []
    for (model, cls), g in per_image.groupby(["model", "class"], sort=False):
        row = {"model": model, "class": cls, "n_images": len(g),
               "n_zero_cams": int(g["cam_mass_in_gt"].isna().sum())}
        for col in SCORE_COLUMNS:
            mean = g[col].mean()
            row[col] = 100 * mean if col in ("gt_share", "cam_mass_in_gt", "probability") else mean
        row["cam_mass_in_gt_se"] = 100 * _standard_error(g["cam_mass_in_gt"])
        row["road_combined_se"] = _standard_error(g["road_combined"])
        rows.append(row)
    return pd.DataFrame(rows).rename(columns={"gt_share": "gt_share_%",
                                              "cam_mass_in_gt": "cam_mass_in_gt_%",
                                              "cam_mass_in_gt_se": "cam_mass_in_gt_%_se",
                                              "probability": "probability_%"})


def paired_differences(per_image: pd.DataFrame, first: str, second: str) -> pd.DataFrame:
    """``first`` minus ``second`` per class, image by image (both models
    explain the same images): mean and standard error of the differences in
    mass inside the ground truth (points of %) and in ROAD combined. Images
    where either map is all zero are left out of the mass difference
    (``n_mass_pairs`` counts those left in)."""
    keys = ["class", "image"]
    a = per_image[per_image["model"] == first].set_index(keys)
    b = per_image[per_image["model"] == second].set_index(keys)
    common = a.index.intersection(b.index)
    diff = (a.loc[common, ["cam_mass_in_gt", "road_combined"]]
            - b.loc[common, ["cam_mass_in_gt", "road_combined"]]).reset_index()
    rows = []
    for cls, g in diff.groupby("class", sort=False):
        rows.append({"class": cls, "n_pairs": len(g),
                     "n_mass_pairs": int(g["cam_mass_in_gt"].notna().sum()),
                     "mass_diff_points": 100 * g["cam_mass_in_gt"].mean(),
                     "mass_diff_se": 100 * _standard_error(g["cam_mass_in_gt"]),
                     "road_diff": g["road_combined"].mean(),
                     "road_diff_se": _standard_error(g["road_combined"])})
    return pd.DataFrame(rows, columns=["class", "n_pairs", "n_mass_pairs", "mass_diff_points",
                                       "mass_diff_se", "road_diff", "road_diff_se"])


def statements(table: pd.DataFrame, differences: pd.DataFrame, first: str,
               second: str) -> list[str]:
    """Sentences comparing models ``first`` and ``second`` class by class
    (``table`` from :func:`score_table`, ``differences`` from
    :func:`paired_differences`), and one counting the classes where ``first``
    is ahead on each number, and where by more than two standard errors."""
    lines = []
    ahead = {"mass": [0, 0], "road": [0, 0]}   # ahead, ahead beyond 2 SE
    compared = 0
    for d in differences.to_dict(orient="records"):
        rows = table[table["class"] == d["class"]].set_index("model")
        a, b = rows.loc[first], rows.loc[second]
        lines.append(
            f"{d['class']}: {first} puts {a['cam_mass_in_gt_%']:.1f} % of its Grad-CAM mass "
            f"inside the ground truth, {second} {b['cam_mass_in_gt_%']:.1f} % (a uniform map: "
            f"{a['gt_share_%']:.1f} %; paired difference {d['mass_diff_points']:+.1f} ± "
            f"{d['mass_diff_se']:.1f} points, n = {d['n_mass_pairs']}); ROAD combined "
            f"{a['road_combined']:+.3f} against {b['road_combined']:+.3f} (difference "
            f"{d['road_diff']:+.3f} ± {d['road_diff_se']:.3f}, n = {d['n_pairs']}; "
            f"± one standard error over the images).")
        compared += 1
        for key, mean, se in (("mass", d["mass_diff_points"], d["mass_diff_se"]),
                              ("road", d["road_diff"], d["road_diff_se"])):
            ahead[key][0] += bool(mean > 0)
            ahead[key][1] += bool(mean > 2 * se)       # False where se is nan
    if compared:
        lines.append(
            f"{first}'s maps are the more concentrated on the defect in {ahead['mass'][0]} of "
            f"{compared} classes ({ahead['mass'][1]} by more than two standard errors) and the "
            f"more faithful by ROAD in {ahead['road'][0]} of {compared} "
            f"({ahead['road'][1]} by more than two standard errors).")
    return lines


# --------------------------------------------------------------------------- #
# Figure 11


def figure11(cases: Sequence[CamCase], results: Mapping[str, Sequence[CamResult]],
             rows: Sequence[int] | None = None, alpha: float = 0.5):
    """Rows = cases; columns = image, ground truth, and each model's CAM of
    the row's class over the image, the class's ground truth outlined in white,
    its mass inside the ground truth in the panel's title."""
    import matplotlib.pyplot as plt

    rows = list(range(len(cases))) if rows is None else list(rows)
    models = list(results)
    ncols = 2 + len(models)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.1 * ncols, 2.2 * len(rows)),
                             squeeze=False)
    for r, i in enumerate(rows):
        case = cases[i]
        axes[r, 0].imshow(case.image)
        axes[r, 0].set_title(f"{case.name}", fontsize=7)
        axes[r, 0].set_ylabel(case.class_name, fontsize=9)
        axes[r, 1].imshow(overlay(case.image, case.mask))
        axes[r, 1].set_title("ground truth", fontsize=8)
        for k, model in enumerate(models):
            res = results[model][i]
            ax = axes[r, 2 + k]
            ax.imshow(case.image)
            ax.imshow(res.cam, cmap="jet", alpha=alpha, vmin=0, vmax=1)
            ax.contour(case.region.astype(float), levels=[0.5], colors="white", linewidths=0.8)
            mass = ("zero map" if math.isnan(res.mass_in_gt)
                    else f"in GT {100 * res.mass_in_gt:.0f} %")
            ax.set_title(f"{model}: {case.class_name}\n{mass}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.suptitle("Grad-CAM of the encoder's last stage, per defect class", y=1.0)
    fig.tight_layout()
    return fig


def model_label(run_dir: str | Path, method: str) -> str:
    """A model's name in tables and figures: the method's label (Table 9's)."""
    from semiseg_helpers.comparison import METHOD_LABELS

    return METHOD_LABELS.get(method, f"{method} ({Path(run_dir).name})")


__all__ = ["CamCase", "CamResult", "MeanClassProbability", "ROAD_PERCENTILES", "RoadScore",
           "SCORE_COLUMNS", "SegmentationLogits", "break_ties", "cam_mass_inside",
           "channels_first", "encoder_last_stage", "evenly_spaced", "explain", "figure11",
           "grad_cam", "load_cases", "logit_sum_target", "model_label", "paired_differences",
           "per_image_table", "road", "score_table", "select_images", "statements"]
