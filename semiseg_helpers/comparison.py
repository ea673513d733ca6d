"""Table 9 and Figure 8: Semi-SegDefect against its baselines, and MIoU
against the label fraction.

Everything here is computed from the tidy run table of
:func:`semiseg_helpers.sweep.collect` (one row per finished run) or from run
folders; nothing trains. The paper's own figures are the constants below,
kept apart from anything measured: a table that shows both puts them in
columns named ``paper_*``.

One file name per table (``figures.save_table`` writes ``NAME.csv`` and
``NAME.md`` of the same table): :func:`table9` → ``table9`` (numbers: means
and stds), :func:`table9_display` → ``table9_display`` (the paper's layout,
``mean ± std``), :func:`table9_differences` → ``table9_differences``,
:func:`run_costs` → ``table9_runs``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from semiseg_helpers.classes import CLASS_COLOURS, DEFECT_CLASSES, NUM_CLASSES, overlay

METHOD_ORDER: tuple[str, ...] = ("supervised", "fpn", "deeplabv3plus", "unimatch", "duosegnet",
                                  "semisegdefect")
"""Table 9's rows: the supervised baselines (first Semi-SegDefect's own network
on the labelled images alone), the semi-supervised ones, the paper's method."""

METHOD_LABELS: dict[str, str] = {"supervised": "Supervised (same network)", "fpn": "FPN",
                                 "deeplabv3plus": "DeepLabv3+", "unimatch": "UniMatch",
                                 "duosegnet": "Duo-SegNet", "semisegdefect": "Semi-SegDefect"}

# --------------------------------------------------------------------------- #
# What the paper states (../shared/docs/TARGETS.md, row "Table 9"), in
# percentage points of test IoU: Semi-SegDefect minus the baseline.

PAPER_MIOU_GAIN: dict[str, dict[float, float]] = {
    "deeplabv3plus": {0.02: 9.82, 0.05: 4.00, 0.10: 4.01, 0.20: 3.69},
    "unimatch": {0.02: 1.87, 0.05: 1.55, 0.10: 1.24, 0.20: 0.44},
    "duosegnet": {0.02: 3.81, 0.05: 2.03, 0.10: 1.83, 0.20: 0.71},
}
"""Semi-SegDefect's MIoU minus each baseline's, per label fraction (TARGETS.md)."""

PAPER_CLASS_GAIN: dict[tuple[str, float], dict[str, float]] = {
    ("deeplabv3plus", 0.02): {"crack": 18.33, "spalling": 3.98, "rebar": 7.15},
}
"""Per-class IoU gains the paper states: against DeepLabv3+ at 2 % labels (TARGETS.md)."""

PAPER_ORDER: tuple[str, ...] = ("semisegdefect", "unimatch", "duosegnet", "deeplabv3plus")
"""Best first, at every stated label fraction: what the gains above imply."""

SEMI = "semisegdefect"
SUPERVISED = "supervised"
"""Semi-SegDefect's own network trained on the labelled images only: what the
unlabelled images add is Semi-SegDefect minus this, whatever the paper states."""

DIFFERENCE_BASELINES: tuple[str, ...] = (SUPERVISED, *PAPER_MIOU_GAIN)
"""The baselines :func:`table9_differences` subtracts: the paper's, and the
same network without unlabelled images (which the paper states no figure for)."""


def _fraction_key(fraction: float) -> float:
    """Label fractions compared by value, not by float spelling (0.1 vs 0.1000001)."""
    return round(float(fraction), 6)


def _method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def percent(fraction: float) -> str:
    """``0.02`` → ``"2 %"``."""
    return f"{100 * float(fraction):g} %"


# --------------------------------------------------------------------------- #
# Table 9


def _runs_with(summaries: pd.DataFrame, columns: set[str], value: str) -> pd.DataFrame:
    """The rows of ``summaries`` that have ``value``, label fractions keyed by
    value; a clear error if ``columns`` or ``value`` are not all there."""
    if missing := (columns | {value}) - set(summaries.columns):
        raise ValueError(f"summaries lack column(s) {sorted(missing)}; "
                         "expected the table of sweep.collect / runs.collect_summaries")
    runs = summaries.dropna(subset=[value]).copy()
    runs["label_fraction"] = runs["label_fraction"].map(_fraction_key)
    return runs


def table9(summaries: pd.DataFrame, classes: Sequence[str] = DEFECT_CLASSES) -> pd.DataFrame:
    """Per method and label fraction: test IoU of each class and MIoU, mean and
    sample standard deviation over seeds, in %.

    Columns ``method``, ``label_fraction``, ``n_seeds``, ``miou_mean``,
    ``miou_std``, ``<class>_mean``, ``<class>_std``; rows in
    :data:`METHOD_ORDER` (other methods after), then by label fraction. The
    std of a single seed is NaN (no spread was measured). Runs without test
    scores are left out; two runs of one method, fraction and seed are an
    error (e.g. two sweeps with different overrides: filter first).
    """
    runs = _runs_with(summaries, {"method", "label_fraction", "seed"}, "test_miou")
    keys = ["method", "label_fraction", "seed"]
    if (dup := runs[runs.duplicated(keys, keep=False)]).shape[0]:
        shown = dup[keys + (["run"] if "run" in dup else [])].to_dict("records")
        raise ValueError("several runs share a method, label fraction and seed; keep one of "
                         f"each: {shown}")
    columns = {"miou": "test_miou", **{c: f"test_iou_{c}" for c in classes}}
    scores = pd.DataFrame({name: 100 * runs[col].astype(float) if col in runs
                           else np.nan for name, col in columns.items()}, index=runs.index)
    grouped = scores.groupby([runs["method"], runs["label_fraction"]])
    mean, std = grouped.mean(), grouped.std(ddof=1)
    out = pd.DataFrame({"n_seeds": grouped["miou"].count()})
    for name in columns:
        out[f"{name}_mean"] = mean[name]
        out[f"{name}_std"] = std[name]
    out = out.reset_index()
    order = sorted(range(len(out)), key=lambda i: (_method_rank(out.at[i, "method"]),
                                                   out.at[i, "label_fraction"]))
    return out.iloc[order].reset_index(drop=True)


def table9_display(table: pd.DataFrame) -> pd.DataFrame:
    """Table 9 as the paper prints it: one ``mean ± std`` string per cell."""
    def cell(mean: float, std: float) -> str:
        if math.isnan(mean):
            return ""
        return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"

    metrics = [c[:-5] for c in table.columns if c.endswith("_mean") and c != "miou_mean"]
    rows = []
    for r in table.to_dict("records"):
        rows.append({"method": METHOD_LABELS.get(r["method"], r["method"]),
                     "labels": percent(r["label_fraction"]),
                     **{m: cell(r[f"{m}_mean"], r[f"{m}_std"]) for m in metrics},
                     "MIoU": cell(r["miou_mean"], r["miou_std"]), "seeds": r["n_seeds"]})
    return pd.DataFrame(rows)


def run_costs(summaries: pd.DataFrame) -> pd.DataFrame:
    """Per method and label fraction: the step budget, the training loop's
    wall-clock in minutes (validation included, the final test not) and
    seconds per step, means over seeds; rows in Table 9's order.

    Columns ``method``, ``label_fraction``, ``n_runs``, ``steps``,
    ``minutes``, ``s_per_step``. Runs executed side by side shared the
    machine: compare these within one sweep, not across machines. A method
    and fraction whose runs had different step budgets is an error (their
    scores would not be comparable either).
    """
    runs = _runs_with(summaries, {"method", "label_fraction", "steps"}, "seconds")
    rows = []
    for (method, fraction), group in runs.groupby(["method", "label_fraction"]):
        budgets = sorted(set(int(v) for v in group["steps"]))
        if len(budgets) > 1:
            raise ValueError(f"{method} at {percent(fraction)} labels: runs with different "
                             f"step budgets {budgets}; keep one budget per table")
        seconds = group["seconds"].astype(float)
        rows.append({"method": method, "label_fraction": fraction, "n_runs": len(group),
                     "steps": budgets[0], "minutes": seconds.mean() / 60,
                     "s_per_step": (seconds / budgets[0]).mean()})
    rows.sort(key=lambda r: (_method_rank(r["method"]), r["label_fraction"]))
    columns = ["method", "label_fraction", "n_runs", "steps", "minutes", "s_per_step"]
    return pd.DataFrame(rows, columns=columns)


def _paper_gain(baseline: str, fraction: float, metric: str) -> float:
    if metric == "MIoU":
        stated = PAPER_MIOU_GAIN.get(baseline, {})
    else:
        stated = {f: g[metric] for (b, f), g in PAPER_CLASS_GAIN.items()
                  if b == baseline and metric in g}
    return next((v for f, v in stated.items() if _fraction_key(f) == fraction), math.nan)


def table9_differences(table: pd.DataFrame) -> pd.DataFrame:
    """Semi-SegDefect minus each of :data:`DIFFERENCE_BASELINES` (its own
    network trained supervised, DeepLabv3+, UniMatch, Duo-SegNet), per label
    fraction Semi-SegDefect was run at: ``measured_diff`` (here, from
    :func:`table9`'s means, in points) beside ``paper_diff`` (stated, NaN
    where the paper states none). MIoU rows for every baseline, plus the
    per-class rows the paper states (DeepLabv3+ at 2 %). A baseline that was
    not run has a NaN ``measured_diff`` and is kept when the paper states a figure.
    """
    def row_of(method: str, fraction: float) -> pd.Series | None:
        hit = table[(table["method"] == method) & (table["label_fraction"] == fraction)]
        return hit.iloc[0] if len(hit) else None

    rows = []
    for fraction in sorted(table.loc[table["method"] == SEMI, "label_fraction"]):
        semi = row_of(SEMI, fraction)
        for baseline in DIFFERENCE_BASELINES:
            base = row_of(baseline, fraction)
            metrics = ["MIoU"] + [c for (b, f), g in PAPER_CLASS_GAIN.items()
                                  if b == baseline and _fraction_key(f) == fraction
                                  for c in g if f"{c}_mean" in table]
            for metric in metrics:
                column = "miou_mean" if metric == "MIoU" else f"{metric}_mean"
                measured = semi[column] - base[column] if base is not None else math.nan
                paper = _paper_gain(baseline, fraction, metric)
                if math.isnan(measured) and math.isnan(paper):
                    continue
                rows.append({"label_fraction": fraction, "baseline": baseline, "metric": metric,
                             "measured_diff": measured, "paper_diff": paper,
                             "n_seeds": int(semi["n_seeds"]),
                             "n_seeds_baseline": int(base["n_seeds"]) if base is not None else 0})
    columns = ["label_fraction", "baseline", "metric", "measured_diff", "paper_diff", "n_seeds",
               "n_seeds_baseline"]
    return pd.DataFrame(rows, columns=columns)


def ordering_statements(table: pd.DataFrame) -> list[str]:
    """A plain sentence for each label fraction where the measured MIoU order of
    the methods the paper ranks (:data:`PAPER_ORDER`) differs from the paper's,
    and for each where Semi-SegDefect does not beat its own network trained on
    the labelled images alone (:data:`SUPERVISED`); empty when both hold
    wherever the methods they compare were run. Equal means count as agreeing
    with the paper's order, and as not beating supervised training."""
    statements = []
    for fraction, rows in table.groupby("label_fraction", sort=True):
        miou = dict(zip(rows["method"], rows["miou_mean"]))
        semi, alone = miou.get(SEMI, math.nan), miou.get(SUPERVISED, math.nan)
        if not (math.isnan(semi) or math.isnan(alone)) and semi <= alone:
            statements.append(f"At {percent(fraction)} labels Semi-SegDefect ({semi:.2f}) does "
                              "not beat its own network trained on the labelled images alone "
                              f"({alone:.2f}): the unlabelled images add nothing measured here.")
        expected = [m for m in PAPER_ORDER if m in miou and not math.isnan(miou[m])]
        measured = sorted(expected, key=lambda m: -miou[m])  # stable: ties keep the paper's order
        if len(expected) < 2 or measured == expected:
            continue
        said = " > ".join(f"{METHOD_LABELS.get(m, m)} ({miou[m]:.2f})" for m in measured)
        paper = " > ".join(METHOD_LABELS.get(m, m) for m in expected)
        statements.append(f"At {percent(fraction)} labels the paper's ordering does not "
                          f"reproduce: measured test MIoU {said}; the paper has {paper}.")
    return statements


LEARNT_IOU = 5.0
"""Test IoU (%) above which a class counts as learnt: well above the ~1 % that
guessing with the class shares scores on the synthetic data."""


def unlearnt_classes(ious: Mapping[str, float], learnt_iou: float = LEARNT_IOU
                     ) -> dict[str, float]:
    """The classes of ``ious`` (test IoU in %) at or below ``learnt_iou``, with
    their IoU; a NaN counts as not learnt."""
    return {c: v for c, v in ious.items() if not v > learnt_iou}


def learning_statements(table: pd.DataFrame, classes: Sequence[str],
                        learnt_iou: float = LEARNT_IOU) -> list[str]:
    """What a budget showed: one sentence per method and label fraction that
    left a class unlearnt (mean test IoU at most ``learnt_iou`` %), or one
    sentence saying that every model learnt every class, with the lowest IoU.
    A model that learnt nothing of a class says nothing about its method."""
    statements, lowest = [], (math.inf, "", "")
    for row in table.itertuples(index=False):
        ious = {c: getattr(row, f"{c}_mean") for c in classes}
        name = f"{METHOD_LABELS.get(row.method, row.method)} at {percent(row.label_fraction)}"
        missed = list(unlearnt_classes(ious, learnt_iou))
        if missed:
            statements.append(f"{name} did not learn {', '.join(missed)} (test IoU "
                              + ", ".join(f"{ious[c]:.1f}" for c in missed)
                              + " %): its row shows the budget, not the method.")
        for c, v in ious.items():
            if v < lowest[0]:
                lowest = (v, name, c)
    if not statements and math.isfinite(lowest[0]):
        statements.append(f"Every model learnt every class: the lowest test IoU is "
                          f"{lowest[0]:.1f} % ({lowest[2]}, {lowest[1]}).")
    return statements


def find_run(summaries: pd.DataFrame, method: str, label_fraction: float,
             seed: int | None = None) -> Path:
    """The run folder of ``method`` at ``label_fraction`` (and ``seed``; by
    default the lowest seed run) in :func:`~semiseg_helpers.sweep.collect`'s table."""
    fractions = summaries["label_fraction"].map(_fraction_key)
    hit = summaries[(summaries["method"] == method) & (fractions == _fraction_key(label_fraction))]
    if seed is not None:
        hit = hit[hit["seed"] == seed]
    if hit.empty:
        have = sorted({(m, float(f)) for m, f in zip(summaries["method"], fractions)})
        raise LookupError(f"no finished run of {method} at label fraction {label_fraction}"
                          + (f" with seed {seed}" if seed is not None else "")
                          + f"; finished runs (method, fraction): {have}")
    return Path(hit.sort_values("seed").iloc[0]["run"])


# --------------------------------------------------------------------------- #
# Figures


@torch.no_grad()
def predict_masks(model: torch.nn.Module, window: int, images: Sequence[np.ndarray],
                  config=None) -> list[np.ndarray]:
    """Class-index masks (``uint8``) of RGB ``images`` by sliding window, at the
    precision a run of ``config`` computes in (fp32 without one).

    Images of one size go through as one batch, others one by one.
    """
    from semiseg_helpers.evaluate import logits_fn, run_logits_fn, sliding_window_logits

    device = next(model.parameters()).device
    forward = logits_fn(model) if config is None else run_logits_fn(model, config, device)

    def segment(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(device).float().div_(255)
        logits = sliding_window_logits(forward, x, window, NUM_CLASSES)
        return logits.argmax(1).to(torch.uint8).cpu().numpy()

    if len({im.shape for im in images}) == 1:
        return list(segment(np.stack(images)))
    return [segment(im[None])[0] for im in images]


def figure8(runs: Mapping[str, str | Path], data_dir: str | Path, n: int = 4, seed: int = 0,
            device: str = "auto", alpha: float = 0.55):
    """Test images (rows): the photo, the ground truth, and each run's
    prediction (columns, titled by ``runs``' keys), as class overlays.

    The paper's figure compares Semi-SegDefect trained on 20 % of the labels
    with DeepLabv3+ trained on all of them. Images are chosen to show every
    defect class (:func:`~semiseg_helpers.figures.pick_examples`).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from PIL import Image

    from semiseg_helpers.data.prepare import load_manifest
    from semiseg_helpers.data.readers import load_image
    from semiseg_helpers.evaluate import defect_classes, eval_window
    from semiseg_helpers.figures import pick_examples
    from semiseg_helpers.predict import load_run_model

    manifest = load_manifest(data_dir)
    root = Path(manifest["root"])
    samples = pick_examples(manifest, n, seed, split="test")
    if not samples:
        raise ValueError(f"{data_dir}: the test split has no labelled image for Figure 8")
    images = [load_image(root / s["image"]) for s in samples]
    truths = [np.asarray(Image.open(root / s["mask"])) for s in samples]
    predictions = {}
    for name, run_dir in runs.items():
        model, config = load_run_model(run_dir, device)
        predictions[name] = predict_masks(model, eval_window(config), images, config)
    columns = ["image", "ground truth", *runs]
    fig, axes = plt.subplots(len(samples), len(columns), squeeze=False,
                             figsize=(2.2 * len(columns), 2.2 * len(samples) + 0.4))
    for i, (image, truth) in enumerate(zip(images, truths)):
        panels = [image, overlay(image, truth, alpha),
                  *(overlay(image, predictions[name][i], alpha) for name in runs)]
        for ax, panel in zip(axes[i], panels):
            ax.imshow(panel)
            ax.set_axis_off()
    for ax, title in zip(axes[0], columns):
        ax.set_title(title, fontsize=9)
    present = defect_classes(manifest)
    fig.legend(handles=[Patch(color=np.array(CLASS_COLOURS[c]) / 255, label=c) for c in present],
               loc="lower center", ncol=len(present), frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout()
    return fig


def miou_vs_fraction(table: pd.DataFrame):
    """Test MIoU against the label fraction (log axis), one line per method,
    with a band of ± one std where a point has several seeds."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    colours = plt.get_cmap("tab10")
    for method in sorted(table["method"].unique(), key=_method_rank):
        rows = table[table["method"] == method].sort_values("label_fraction")
        x = 100 * rows["label_fraction"].to_numpy(float)
        y = rows["miou_mean"].to_numpy(float)
        spread = np.where(rows["n_seeds"].to_numpy() > 1, rows["miou_std"].to_numpy(float), np.nan)
        colour = colours(_method_rank(method)[0] % 10)
        ax.plot(x, y, marker="o", ms=4, color=colour, label=METHOD_LABELS.get(method, method))
        if np.isfinite(spread).any():
            ax.fill_between(x, y - spread, y + spread, color=colour, alpha=0.2, lw=0)
    ticks = sorted(set(100 * table["label_fraction"].astype(float)))
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labelled images (% of the training split)")
    ax.set_ylabel("test MIoU (%)")
    ax.set_title("Test MIoU against the label fraction")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


__all__ = ["DIFFERENCE_BASELINES", "METHOD_LABELS", "METHOD_ORDER", "PAPER_CLASS_GAIN",
           "PAPER_MIOU_GAIN", "PAPER_ORDER", "SUPERVISED", "figure8", "find_run", "LEARNT_IOU", "learning_statements", "miou_vs_fraction", "unlearnt_classes",
           "ordering_statements", "percent",
           "predict_masks", "table9", "table9_differences", "table9_display"]
