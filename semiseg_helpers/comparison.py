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

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from semiseg_helpers.classes import (CLASS_COLOURS, CLASS_NAMES, DEFECT_CLASSES, NUM_CLASSES,
                                     overlay)

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
    """Per method, label fraction, precision and hardware: the step budget, the
    training loop's wall-clock in minutes (validation included, the final test
    not) and seconds per step, means over seeds; rows in Table 9's order.

    Columns ``method``, ``label_fraction``, ``precision``, ``hardware``,
    ``n_runs``, ``steps``, ``minutes``, ``s_per_step``. Seconds compare only
    on the same hardware in the same precision, so runs are averaged apart by
    both (``summary.json``'s ``precision``: bf16 where the CPU has it, fp32
    where it has not; its ``hardware`` as :func:`~semiseg_helpers.precision.hardware_label`
    names it, empty for runs recorded before it was). Runs executed side by
    side shared the machine: compare these within one sweep too. A method and
    fraction whose runs had different step budgets is an error (their scores
    would not be comparable either).
    """
    runs = _recorded(_runs_with(summaries, {"method", "label_fraction", "steps"}, "seconds"),
                     "precision", "hardware")
    rows = []
    for (method, fraction), group in runs.groupby(["method", "label_fraction"]):
        budgets = sorted(set(int(v) for v in group["steps"]))
        if len(budgets) > 1:
            raise ValueError(f"{method} at {percent(fraction)} labels: runs with different "
                             f"step budgets {budgets}; keep one budget per table")
        for (precision, hardware), alike in group.groupby(["precision", "hardware"]):
            seconds = alike["seconds"].astype(float)
            rows.append({"method": method, "label_fraction": fraction,
                         "precision": precision, "hardware": hardware, "n_runs": len(alike),
                         "steps": budgets[0], "minutes": seconds.mean() / 60,
                         "s_per_step": (seconds / budgets[0]).mean()})
    rows.sort(key=lambda r: (_method_rank(r["method"]), r["label_fraction"], r["precision"],
                             r["hardware"]))
    columns = ["method", "label_fraction", "precision", "hardware", "n_runs", "steps",
               "minutes", "s_per_step"]
    return pd.DataFrame(rows, columns=columns)


def _recorded(runs: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """``runs`` with these summary fields as text, empty where a summary does
    not say (runs recorded before the field was)."""
    return runs.assign(**{c: runs[c].fillna("").astype(str) if c in runs else ""
                          for c in columns})


def precision_statements(summaries: pd.DataFrame) -> list[str]:
    """Which precision the runs computed in, stated beside Table 9.

    One sentence when every run says the same precision. When they differ
    (bf16 autocast on a CPU with native bf16, fp32 on one without), the runs
    outside the most common precision are named, and so is every table cell
    whose seeds computed in different precisions: its std then holds that
    difference too, and so does a paired difference across those seeds. Runs
    whose summaries do not say are counted as unrecorded.
    """
    if summaries.empty:
        return []
    runs = _recorded(summaries, "precision")
    counts = runs["precision"].value_counts()
    named = {p or "an unrecorded precision": int(n) for p, n in counts.items()}
    if len(counts) == 1:
        return [f"Every run computed in {next(iter(named))}."]
    common = counts.index[0]

    def label(r) -> str:
        return (f"{METHOD_LABELS.get(r['method'], r['method'])} "
                f"{percent(float(r['label_fraction']))} seed {int(r['seed'])}")

    def order(r) -> tuple:
        return _method_rank(r["method"]), float(r["label_fraction"]), int(r["seed"])
    others = sorted(runs[runs["precision"] != common].to_dict("records"), key=order)
    out = ["Not every run computed in the same precision: "
           + ", ".join(f"{n} in {p}" for p, n in named.items()) + ". Not in "
           + (common or "an unrecorded precision") + ": "
           + "; ".join(f"{label(r)} ({r['precision'] or 'unrecorded'})" for r in others) + "."]
    cells = runs.groupby(["method", "label_fraction"])["precision"].nunique()
    mixed = [f"{METHOD_LABELS.get(m, m)} at {percent(f)}"
             for (m, f), n in sorted(cells.items(),
                                     key=lambda kv: (_method_rank(kv[0][0]), kv[0][1]))
             if n > 1]
    if mixed:
        out.append("Seeds of one cell in different precisions (their std and paired "
                   "differences include it): " + ", ".join(mixed) + ".")
    return out


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


def difference_statements(differences: pd.DataFrame) -> list[str]:
    """One sentence per MIoU row of :func:`table9_differences` that was measured:
    the gap here beside the paper's, and whether its sign (the direction)
    reproduced; against the same network trained supervised, which the paper
    states no figure for, what the unlabelled images added."""
    out = []
    rows = differences[(differences["metric"] == "MIoU") & differences["measured_diff"].notna()]
    for r in rows.itertuples(index=False):
        base = METHOD_LABELS.get(r.baseline, r.baseline)
        lead = (f"At {percent(r.label_fraction)} labels Semi-SegDefect − {base} = "
                f"{r.measured_diff:+.2f} MIoU points")
        if math.isnan(r.paper_diff):
            out.append(f"{lead} (the paper states no figure).")
        elif (r.measured_diff > 0) == (r.paper_diff > 0) and r.measured_diff != 0:
            out.append(f"{lead}, the paper {r.paper_diff:+.2f}: the direction reproduces.")
        else:
            out.append(f"{lead}, the paper {r.paper_diff:+.2f}: the direction does not "
                       "reproduce.")
    return out


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
# Convergence and seed spread


CONVERGED_GAIN = 1.0
"""Validation MIoU points the last third of a run may still add over the best
before it for the run to count as converged (:func:`convergence`)."""


def convergence(summaries: pd.DataFrame, tail: float = 1 / 3,
                tolerance: float = CONVERGED_GAIN) -> pd.DataFrame:
    """Whether each run's validation curve had flattened by its last ``tail``.

    From each run's ``metrics.jsonl``: the best validation MIoU at steps in
    the last ``tail`` of the budget against the best before, in points.
    ``flattened`` when the last part adds at most ``tolerance`` points: a
    curve still climbing when the budget ran out would have gone on, and its
    row in Table 9 reads "this many steps", not "this method". One row per
    run, Table 9's order; columns ``method``, ``label_fraction``, ``seed``,
    ``steps``, ``n_evals``, ``best_before``, ``best_last``, ``gain``,
    ``best_step``, ``judged``, ``flattened``, ``run``. A run without
    validation both before and within its last part cannot be judged
    (``judged`` False, ``flattened`` False, the rest NaN).
    """
    from semiseg_helpers.runs import RunDir

    if not 0 < tail < 1:
        raise ValueError(f"tail must be in (0, 1), got {tail}")
    runs = _runs_with(summaries, {"method", "label_fraction", "seed", "steps"}, "run")
    rows = []
    for r in runs.to_dict("records"):
        curve = [(m["step"], 100 * m["val_miou"]) for m in RunDir(r["run"]).read_metrics()
                 if m.get("val_miou") is not None]
        start = (1 - tail) * int(r["steps"])
        before = [v for step, v in curve if step <= start]
        last = [v for step, v in curve if step > start]
        judged = bool(before and last)
        best_before = max(before) if judged else math.nan
        best_last = max(last) if judged else math.nan
        rows.append({"method": r["method"], "label_fraction": r["label_fraction"],
                     "seed": int(r["seed"]), "steps": int(r["steps"]), "n_evals": len(curve),
                     "best_before": best_before, "best_last": best_last,
                     "gain": best_last - best_before, "best_step": r.get("best_step"),
                     "judged": judged, "flattened": judged and best_last - best_before <= tolerance,
                     "run": r["run"]})
    rows.sort(key=lambda x: (_method_rank(x["method"]), x["label_fraction"], x["seed"]))
    columns = ["method", "label_fraction", "seed", "steps", "n_evals", "best_before",
               "best_last", "gain", "best_step", "judged", "flattened", "run"]
    return pd.DataFrame(rows, columns=columns)


def convergence_statements(table: pd.DataFrame, tolerance: float = CONVERGED_GAIN) -> list[str]:
    """One sentence per run of :func:`convergence` that had not flattened, one
    listing the runs that could not be judged, or one saying every run had
    converged."""
    if table.empty:
        return []
    judged = table[table["judged"].astype(bool)]
    late = judged[~judged["flattened"].astype(bool)]
    out = [f"{METHOD_LABELS.get(r.method, r.method)} at {percent(r.label_fraction)}, seed "
           f"{r.seed}, had not converged: its last third raised validation MIoU from "
           f"{r.best_before:.2f} to {r.best_last:.2f} ({r.gain:+.2f} points); more steps "
           "would likely raise its row." for r in late.itertuples(index=False)]
    if len(judged) and late.empty:
        out.append(f"Every run judged had converged: none of the {len(judged)} gained more "
                   f"than {tolerance:g} validation MIoU points in its last third (largest "
                   f"late gain {judged['gain'].max():+.2f}).")
    if len(unjudged := table[~table["judged"].astype(bool)]):
        out.append(f"{len(unjudged)} run(s) validated too rarely to judge convergence (no "
                   "validation both before and within the last third): "
                   + ", ".join(f"{METHOD_LABELS.get(r.method, r.method)} at "
                               f"{percent(r.label_fraction)} seed {r.seed}"
                               for r in unjudged.itertuples(index=False)) + ".")
    return out


def paired_differences(summaries: pd.DataFrame, method: str = SEMI,
                       baselines: Sequence[str] = DIFFERENCE_BASELINES) -> pd.DataFrame:
    """``method`` minus each baseline in test MIoU (points), seed by seed.

    Runs of one seed share their initialisation draws and their sampling and
    augmentation streams' seeds, and every seed trains on the same labelled
    subset (the prepared dataset's, drawn once), so a difference within a seed
    is free of the subset's luck and of some of the training noise. Per label
    fraction and baseline, over the seeds both were run with: ``n_pairs``,
    ``mean_diff``, ``min_diff`` and ``max_diff`` of the per-seed
    differences, ``seed_std`` (the larger of the two methods' sample std over
    those seeds) and ``beyond_spread``: every paired difference has the same
    sign and the mean difference exceeds ``seed_std``. With two or three
    seeds that is a rule of thumb, not a significance test; ``beyond_spread``
    is False for a single pair (no spread measured).
    """
    runs = _runs_with(summaries, {"method", "label_fraction", "seed"}, "test_miou")
    miou = {(r["method"], r["label_fraction"], int(r["seed"])): 100 * float(r["test_miou"])
            for r in runs.to_dict("records")}
    rows = []
    for fraction in sorted({f for m, f, _ in miou if m == method}):
        for baseline in baselines:
            seeds = sorted(s for m, f, s in miou if m == method and f == fraction
                           and (baseline, fraction, s) in miou)
            if not seeds:
                continue
            ours = np.array([miou[(method, fraction, s)] for s in seeds])
            theirs = np.array([miou[(baseline, fraction, s)] for s in seeds])
            diff = ours - theirs
            spread = (max(ours.std(ddof=1), theirs.std(ddof=1)) if len(seeds) > 1
                      else math.nan)
            same_sign = bool((diff > 0).all() or (diff < 0).all())
            rows.append({"label_fraction": fraction, "baseline": baseline,
                         "n_pairs": len(seeds), "mean_diff": diff.mean(),
                         "min_diff": diff.min(), "max_diff": diff.max(),
                         "seed_std": spread,
                         "beyond_spread": bool(len(seeds) > 1 and same_sign
                                               and abs(diff.mean()) > spread)})
    columns = ["label_fraction", "baseline", "n_pairs", "mean_diff", "min_diff", "max_diff",
               "seed_std", "beyond_spread"]
    return pd.DataFrame(rows, columns=columns)


def paired_statements(paired: pd.DataFrame, method: str = SEMI) -> list[str]:
    """One plain sentence per row of :func:`paired_differences`."""
    name = METHOD_LABELS.get(method, method)
    out = []
    for r in paired.itertuples(index=False):
        base = METHOD_LABELS.get(r.baseline, r.baseline)
        lead = (f"At {percent(r.label_fraction)} labels {name} − {base} = "
                f"{r.mean_diff:+.2f} MIoU points")
        if r.n_pairs < 2:
            out.append(f"{lead} (one seed: no spread measured).")
        elif r.beyond_spread:
            out.append(f"{lead} over {r.n_pairs} seeds (per seed {r.min_diff:+.2f} to "
                       f"{r.max_diff:+.2f}): larger than the seed spread ({r.seed_std:.2f}).")
        else:
            out.append(f"{lead} over {r.n_pairs} seeds (per seed {r.min_diff:+.2f} to "
                       f"{r.max_diff:+.2f}): within the seed spread ({r.seed_std:.2f}), "
                       "not a measured difference.")
    return out


# --------------------------------------------------------------------------- #
# Cross-dataset check: models scored on other datasets without retraining

CROSS_DATASET_DIR = "cross_dataset"
"""Sub-folder of a run folder holding ``<dataset>.json`` (:func:`score_cross_dataset`)."""


def score_cross_dataset(run_dir: str | Path, datasets: Mapping[str, str | Path],
                        device: str = "auto", overwrite: bool = False) -> dict[str, dict]:
    """Score a run's best weights on the test split of other prepared datasets,
    without retraining; each score goes to ``RUN/cross_dataset/<name>.json``.

    Classes are matched by name (both sides use the schema of
    :mod:`semiseg_helpers.classes`). Ground-truth pixels of a class the run
    was not trained on (MDMCS's exposed rebar for a PEER Hub model) are left
    out, so a model is not charged for a class it never knew; a pixel it
    labels with a class the target lacks still counts against the classes
    there. ``miou`` is over the run's classes present in the target's truth
    (``scored_classes``). Names already scored are loaded, not scored again,
    unless ``overwrite``. Returns ``{name: scores}``.
    """
    from semiseg_helpers.evaluate import iou_per_class
    from semiseg_helpers.predict import evaluate_run
    from semiseg_helpers.runs import RunDir, atomic_write_text

    run = RunDir(run_dir)
    trained = list(run.read_summary().get("classes") or [])
    if not trained:
        raise ValueError(f"{run_dir}: summary.json names no classes; cannot match by name")
    out_dir = run.path / CROSS_DATASET_DIR
    scores = {}
    for name, data_dir in datasets.items():
        path = out_dir / f"{name}.json"
        if path.is_file() and not overwrite:
            scores[name] = json.loads(path.read_text())
            continue
        result = evaluate_run(run.path, data_dir, "test", device)
        cm = np.asarray(result["confusion"], dtype=np.int64)
        known = ["background", *trained]
        unknown = [k for k, c in enumerate(CLASS_NAMES) if c not in known]
        left_out = {CLASS_NAMES[k]: int(cm[k].sum()) for k in unknown if cm[k].sum()}
        cm[unknown, :] = 0
        iou = iou_per_class(cm)
        in_truth = [c for c in trained if cm[CLASS_NAMES.index(c)].sum() > 0]
        per_class = {c: float(iou[CLASS_NAMES.index(c)]) for c in in_truth}
        scores[name] = {
            "dataset": name, "data": str(data_dir), "n_images": result["n_images"],
            "trained_classes": trained, "scored_classes": in_truth,
            "iou": per_class,
            "miou": float(np.mean(list(per_class.values()))) if per_class else math.nan,
            "background_iou": float(iou[0]),
            "left_out_pixels": left_out, "confusion": cm.tolist()}
        out_dir.mkdir(exist_ok=True)
        atomic_write_text(path, json.dumps(scores[name], indent=1))
    return scores


def cross_dataset_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """Every cross-dataset score found in the run folders of ``summaries``:
    one row per run and dataset, IoU in %; columns ``dataset``, ``method``,
    ``label_fraction``, ``seed``, ``n_images``, ``miou``, ``<class>`` for each
    scored class, and the run's own ``test_miou`` (in domain) beside them."""
    runs = _runs_with(summaries, {"method", "label_fraction", "seed"}, "run")
    rows = []
    for r in runs.to_dict("records"):
        for path in sorted((Path(r["run"]) / CROSS_DATASET_DIR).glob("*.json")):
            s = json.loads(path.read_text())
            rows.append({"dataset": s["dataset"], "method": r["method"],
                         "label_fraction": r["label_fraction"], "seed": int(r["seed"]),
                         "n_images": s["n_images"], "miou": 100 * s["miou"],
                         **{c: 100 * v for c, v in s["iou"].items()},
                         "test_miou": 100 * float(r["test_miou"])
                         if r.get("test_miou") is not None else math.nan})
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=["dataset", "method", "label_fraction", "seed",
                                     "n_images", "miou", "test_miou"])
    table["_rank"] = [_method_rank(m) for m in table["method"]]
    table = table.sort_values(["dataset", "label_fraction", "_rank", "seed"])
    return table.drop(columns="_rank").reset_index(drop=True)


SEMI_SUPERVISED: tuple[str, ...] = ("unimatch", "duosegnet", SEMI)
"""The methods that learn from unlabelled images; the other rows train on the
labelled ones alone."""

CROSS_DATASET_MARGIN = 1.0
"""MIoU points by which the semi-supervised mean must differ from the
supervised one before :func:`cross_dataset_statements` calls either better:
one seed's score on another dataset moves by about that much (PEER Hub's own
seed spread in Table 9 runs to 1.6)."""


def cross_dataset_statements(cross: pd.DataFrame) -> list[str]:
    """Per dataset and label fraction of :func:`cross_dataset_table`: where
    Semi-SegDefect ranks, and the mean MIoU of the semi-supervised methods
    against the supervised ones — the paper's claim that semi-supervision
    generalises better, as the numbers have it (means over the seeds there),
    called better or worse only beyond :data:`CROSS_DATASET_MARGIN`."""
    out = []
    if cross.empty:
        return out
    for (dataset, fraction), rows in cross.groupby(["dataset", "label_fraction"], sort=True):
        miou = rows.groupby("method")["miou"].mean()
        ranked = sorted(miou.index, key=lambda m: -miou[m])
        text = f"On {dataset}, models trained at {percent(fraction)} labels: " + ", ".join(
            f"{METHOD_LABELS.get(m, m)} {miou[m]:.2f}" for m in ranked) + " MIoU"
        semi = [miou[m] for m in ranked if m in SEMI_SUPERVISED]
        sup = [miou[m] for m in ranked if m not in SEMI_SUPERVISED]
        if semi and sup:
            gap = np.mean(semi) - np.mean(sup)
            verdict = ("semi-supervision generalised better here." if gap > CROSS_DATASET_MARGIN
                       else "semi-supervision generalised worse here."
                       if gap < -CROSS_DATASET_MARGIN
                       else f"within {CROSS_DATASET_MARGIN:g} point of each other, no clear "
                            "difference here.")
            text += (f"; semi-supervised methods {np.mean(semi):.2f} on average against "
                     f"{np.mean(sup):.2f} for supervised training ({gap:+.2f}): " + verdict)
        else:
            text += "."
        out.append(text)
    return out


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
    with error bars of ± one std over seeds where a point has several."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    colours = plt.get_cmap("tab10")
    for method in sorted(table["method"].unique(), key=_method_rank):
        rows = table[table["method"] == method].sort_values("label_fraction")
        x = 100 * rows["label_fraction"].to_numpy(float)
        y = rows["miou_mean"].to_numpy(float)
        spread = np.where(rows["n_seeds"].to_numpy() > 1, rows["miou_std"].to_numpy(float), np.nan)
        colour = colours(_method_rank(method)[0] % 10)
        ax.errorbar(x, y, yerr=np.nan_to_num(spread), marker="o", ms=4, color=colour,
                    capsize=3, elinewidth=1, label=METHOD_LABELS.get(method, method))
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


__all__ = ["CONVERGED_GAIN", "CROSS_DATASET_DIR", "DIFFERENCE_BASELINES", "LEARNT_IOU",
           "METHOD_LABELS", "METHOD_ORDER", "PAPER_CLASS_GAIN", "PAPER_MIOU_GAIN", "PAPER_ORDER",
           "SEMI_SUPERVISED", "SUPERVISED", "convergence", "convergence_statements",
           "cross_dataset_statements", "cross_dataset_table", "difference_statements",
           "figure8", "find_run", "learning_statements", "miou_vs_fraction",
           "ordering_statements", "paired_differences", "paired_statements", "percent",
           "predict_masks", "run_costs", "score_cross_dataset", "table9", "table9_differences",
           "table9_display", "unlearnt_classes"]
