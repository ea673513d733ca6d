"""The paper's tables and figures, drawn from prepared data and run folders.

Each maker returns a pandas ``DataFrame`` or a matplotlib ``Figure`` and
never writes on its own; :func:`save_table` and :func:`save_figure` write
them under the paper's file names (``table1.csv``/``.md``, ``figure4.png``,
...), so that a notebook decides where results go.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from semiseg_helpers.classes import CLASS_NAMES, overlay

SPLIT_ORDER = ("train", "val", "test")


# --------------------------------------------------------------------------- #
# Writing


def markdown_table(df: pd.DataFrame, floatfmt: str = ".2f") -> str:
    """A GitHub-flavoured Markdown table (no dependency on tabulate)."""
    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else format(v, floatfmt)
        return str(v)

    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(df[c]) else "---"
                          for c in df.columns) + "|"
    rows = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def save_table(df: pd.DataFrame, out_dir: str | Path, name: str, floatfmt: str = ".2f") -> Path:
    """Write ``name.csv`` and ``name.md``; returns the CSV path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_dir / f"{name}.csv", index=False)
    (out_dir / f"{name}.md").write_text(markdown_table(df, floatfmt))
    return out_dir / f"{name}.csv"


def save_figure(fig, out_dir: str | Path, name: str, dpi: int = 150) -> Path:
    """Write ``name.png``; returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


# --------------------------------------------------------------------------- #
# Table 1: the dataset after partition


def table1(manifest: dict) -> pd.DataFrame:
    """Per split: images, and per defect class the images containing it and
    its share of the split's labelled pixels (in %).

    Classes are those the source can contain (``manifest["source_classes"]``).
    Unlabelled images are counted in ``images`` and ``unlabelled`` only.
    """
    classes = [c for c in manifest["source_classes"] if c != "background"]
    rows = []
    for split in (*SPLIT_ORDER, "total"):
        samples = [s for s in manifest["samples"] if split == "total" or s["split"] == split]
        labelled = [s for s in samples if s["mask"] is not None]
        labelled_px = sum(sum(v for k, v in s["pixels"].items() if k != "ignore") for s in labelled)
        row = {"split": split, "images": len(samples), "unlabelled": len(samples) - len(labelled)}
        for c in classes:
            row[f"{c} images"] = sum(s["pixels"].get(c, 0) > 0 for s in labelled)
            px = sum(s["pixels"].get(c, 0) for s in labelled)
            row[f"{c} pixel %"] = 100.0 * px / labelled_px if labelled_px else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- #
# Figure 4: samples with masks; Figure 5: CutMix schematic


def _read_rgb(root: Path, rel: str) -> np.ndarray:
    from PIL import Image

    with Image.open(root / rel) as im:
        return np.asarray(im.convert("RGB"))


def _read_mask(root: Path, rel: str) -> np.ndarray:
    from PIL import Image

    with Image.open(root / rel) as im:
        return np.asarray(im)


def pick_examples(manifest: dict, n: int, seed: int = 0,
                  split: str | None = None) -> list[dict]:
    """``n`` labelled samples that together show every defect class.

    One sample per class first (the one with most pixels of it among a
    seeded shuffle), then random ones, so a small grid is still informative.
    """
    rng = np.random.default_rng(seed)
    pool = [s for s in manifest["samples"] if s["mask"] is not None
            and (split is None or s["split"] == split)]
    pool = [pool[i] for i in rng.permutation(len(pool))]
    chosen: list[dict] = []
    for c in manifest["source_classes"]:
        if c == "background" or len(chosen) >= n:
            continue
        with_c = [s for s in pool[:200] if s["pixels"].get(c, 0) > 0 and s not in chosen]
        if with_c:
            chosen.append(max(with_c, key=lambda s: s["pixels"][c]))
    chosen += [s for s in pool if s not in chosen][: n - len(chosen)]
    return chosen[:n]


def figure4(manifest: dict, n: int = 8, seed: int = 0, alpha: float = 0.55):
    """Sample images (top row) with their mask overlays (bottom row)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from semiseg_helpers.classes import CLASS_COLOURS

    root = Path(manifest["root"])
    samples = pick_examples(manifest, n, seed)
    fig, axes = plt.subplots(2, len(samples), figsize=(2.0 * len(samples), 4.3), squeeze=False)
    for j, s in enumerate(samples):
        image, mask = _read_rgb(root, s["image"]), _read_mask(root, s["mask"])
        axes[0, j].imshow(image)
        axes[1, j].imshow(overlay(image, mask, alpha))
        axes[0, j].set_title(s["name"], fontsize=7)
    for ax in axes.flat:
        ax.set_axis_off()
    present = [c for c in manifest["source_classes"] if c != "background"]
    fig.legend(handles=[Patch(color=np.array(CLASS_COLOURS[c]) / 255, label=c) for c in present],
               loc="lower center", ncol=len(present), frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(f"{manifest['dataset']}: samples and masks", y=1.0)
    fig.tight_layout()
    return fig


def figure5(manifest: dict, seed: int = 0, crop: int | None = None):
    """CutMix schematic from two real samples: two images and masks, the
    box, and the mixed image and mask, made by the training code's
    :func:`semiseg_helpers.augment.cutmix`.
    """
    import matplotlib.pyplot as plt
    import torch
    from matplotlib.patches import Rectangle

    from semiseg_helpers.augment import cutmix
    from semiseg_helpers.classes import colourise

    root = Path(manifest["root"])
    a, b = pick_examples(manifest, 2, seed)
    images = [_read_rgb(root, s["image"]) for s in (a, b)]
    masks = [_read_mask(root, s["mask"]) for s in (a, b)]
    h = min(i.shape[0] for i in images) if crop is None else crop
    w = min(i.shape[1] for i in images) if crop is None else crop
    img_t = torch.stack([torch.from_numpy(i[:h, :w]).permute(2, 0, 1) for i in images]).float() / 255
    lab_t = torch.stack([torch.from_numpy(m[:h, :w].astype(np.int64)) for m in masks])
    conf_t = torch.ones(lab_t.shape)
    gen = torch.Generator().manual_seed(seed)
    mixed = cutmix(img_t, lab_t, conf_t, generator=gen)
    mixed_img = (mixed.images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    mixed_lab = mixed.labels[0].numpy().astype(np.uint8)
    y0, x0, y1, x1 = (int(v) for v in mixed.boxes[0])

    fig, axes = plt.subplots(2, 3, figsize=(8, 5.6))
    panels = [(images[0], "image A"), (images[1][:h, :w], "image B"), (mixed_img, "mixed image"),
              (colourise(masks[0]), "mask A"), (colourise(masks[1][:h, :w]), "mask B"),
              (colourise(mixed_lab), "mixed mask")]
    for ax, (im, title) in zip(axes.flat, panels):
        ax.imshow(im)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    for ax in (axes[0, 1], axes[1, 1], axes[0, 2], axes[1, 2]):
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                               edgecolor="yellow", linewidth=1.5, linestyle="--"))
    fig.suptitle("CutMix: the box from B replaces the same box in A, in image and mask alike")
    fig.tight_layout()
    return fig


def class_names_present(manifest: dict) -> Sequence[str]:
    """Defect classes with at least one labelled pixel in the dataset."""
    return [c for c in CLASS_NAMES[1:]
            if any(s["pixels"].get(c, 0) > 0 for s in manifest["samples"])]


# --------------------------------------------------------------------------- #
# Figures 6 and 7: learning rate and validation MIoU during training


def _series(metrics: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [(m["step"], m[key]) for m in metrics if key in m]
    if not rows:
        return np.array([]), np.array([])
    steps, values = zip(*rows)
    return np.asarray(steps), np.asarray(values, dtype=float)


def figure6(metrics: list[dict]):
    """The learning rate at each logged step (poly schedule, power 0.95)."""
    import matplotlib.pyplot as plt

    steps, lr = _series(metrics, "lr")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(steps, lr, color="tab:blue")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning rate (poly, power 0.95)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def figure7(metrics: list[dict], classes: Sequence[str] | None = None,
            others: dict[str, list[dict]] | None = None):
    """Validation MIoU (and per-class IoU) against the training step; the
    validation MIoU of ``others`` (label → metrics) as dashed lines, for
    comparing runs step for step."""
    import matplotlib.pyplot as plt

    from semiseg_helpers.classes import CLASS_COLOURS

    steps, miou = _series(metrics, "val_miou")
    fig, ax = plt.subplots(figsize=(5.5 if others else 5, 3.4))
    ax.plot(steps, 100 * miou, marker="o", ms=3, color="black", label="MIoU")
    for c in classes or []:
        s, v = _series(metrics, f"val_iou_{c}")
        if len(s):
            ax.plot(s, 100 * v, lw=1, alpha=0.8, color=np.array(CLASS_COLOURS[c]) / 255, label=c)
    for k, (label, other) in enumerate((others or {}).items()):
        s, v = _series(other, "val_miou")
        ax.plot(s, 100 * v, ls="--", marker="s", ms=3, color=f"C{k + 2}", label=f"MIoU, {label}")
    ax.set_xlabel("step")
    ax.set_ylabel("validation IoU (%)")
    ax.set_title("Validation MIoU during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def training_curves(metrics: list[dict], keys: Sequence[str] = ("loss_sup", "loss_unsup",
                                                                "loss_contrast", "w_u")):
    """Losses, the confidence weight w_u and sampled anchors against the step:
    the curves to read when a semi-supervised run does not beat supervised."""
    import matplotlib.pyplot as plt

    present = [k for k in (*keys, "anchors") if len(_series(metrics, k)[0])]
    fig, axes = plt.subplots(1, max(len(present), 1), figsize=(3.2 * max(len(present), 1), 2.8),
                             squeeze=False)
    for ax, key in zip(axes[0], present):
        s, v = _series(metrics, key)
        ax.plot(s, v, lw=0.8)
        if len(v) >= 10:
            k = max(len(v) // 20, 1)
            ax.plot(s[k - 1:], np.convolve(v, np.ones(k) / k, mode="valid"), lw=1.5)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def scores_table(summary: dict) -> pd.DataFrame:
    """Per-class IoU and MIoU (in %) of a run's best checkpoint, val and test."""
    rows = []
    for split in ("val", "test"):
        scores = summary.get(split)
        if scores:
            rows.append({"split": split, **{c: 100 * v for c, v in scores["iou"].items()},
                         "MIoU": 100 * scores["miou"]})
    return pd.DataFrame(rows)


def runs_table(summaries: dict[str, dict]) -> pd.DataFrame:
    """Test per-class IoU and MIoU (in %) of several runs (label → summary),
    with the step budget and the best validation step of each."""
    rows = []
    for label, s in summaries.items():
        test = s.get("test") or {"iou": {}, "miou": float("nan")}
        rows.append({"run": label, "method": s["method"], "steps": s["steps"],
                     "best step": s["best_step"], "val MIoU": 100 * s["val"]["miou"],
                     **{f"test {c}": 100 * v for c, v in test["iou"].items()},
                     "test MIoU": 100 * test["miou"]})
    return pd.DataFrame(rows)


def thin_crack_table(manifest: dict, samples: Sequence[dict], factor: int = 4) -> pd.DataFrame:
    """How much of each defect reaches the contrastive loss's 1/``factor``
    grid, by label down-sampling rule.

    A ``factor``×``factor`` block of the full-resolution mask becomes one
    cell. Nearest neighbour keeps the block's one sampled pixel, so a crack
    narrower than the block survives only where it crosses that pixel: in
    pixel *count* it is unbiased, but it keeps only about width/``factor``
    of the blocks the crack runs through, as a dotted line. Class-priority
    pooling gives every block the highest-priority class it contains, so the
    crack keeps every block it touches. Per class: the blocks that contain
    it, the cells each rule labels with it, and the share of its blocks each
    rule keeps.
    """
    import torch
    import torch.nn.functional as F

    from semiseg_helpers.losses import (count_class_pixels, downsample_labels,
                                        downsample_labels_nearest)

    root = Path(manifest["root"])
    totals = {k: np.zeros(len(CLASS_NAMES), np.int64) for k in ("blocks", "nearest", "priority")}
    classes = torch.arange(len(CLASS_NAMES))
    for s in samples:
        y = torch.from_numpy(_read_mask(root, s["mask"]).astype(np.int64))[None]
        size = (y.shape[1] // factor, y.shape[2] // factor)
        present = F.adaptive_max_pool2d((y[:, None] == classes[None, :, None, None]).float(), size)
        totals["blocks"] += present.sum(dim=(0, 2, 3)).long().numpy()
        totals["nearest"] += count_class_pixels(downsample_labels_nearest(y, size)).numpy()
        totals["priority"] += count_class_pixels(downsample_labels(y, size)[0]).numpy()
    rows = []
    for i, c in enumerate(CLASS_NAMES):
        if c == "background" or c not in manifest["source_classes"]:
            continue
        blocks = max(int(totals["blocks"][i]), 1)
        rows.append({"class": c, "blocks containing it": int(totals["blocks"][i]),
                     "nearest cells": int(totals["nearest"][i]),
                     "priority cells": int(totals["priority"][i]),
                     "nearest keeps %": 100 * totals["nearest"][i] / blocks,
                     "priority keeps %": 100 * totals["priority"][i] / blocks})
    return pd.DataFrame(rows)
