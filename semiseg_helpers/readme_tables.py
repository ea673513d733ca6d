"""The README's result blocks, generated from ``figures/`` and ``records/``.

Numbers in the README come from the committed results, not from memory: each
block between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in README.md
is what :data:`BLOCKS` ``[name]`` makes from the files of record, and a test
checks that the committed README says exactly that. After new records or
figures::

    python -m semiseg_helpers.readme_tables           # rewrite the blocks
    python -m semiseg_helpers.readme_tables --check   # exit 1 if a block is stale

Each block is a function of the repository root; prose around the blocks
(what the numbers mean, the paper's figures) is written by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent

RECORDS = Path("records/peerhub-cpu")
SEMI_5 = RECORDS / "semisegdefect-f0.05-s0"
SUPERVISED_5 = RECORDS / "supervised-f0.05-s0"
MEANTEACHER_5 = RECORDS / "meanteacher-f0.05-s0"
TABLE9_ROOT = RECORDS / "table9-steps300"
TABLE9_FULL_ROOT = RECORDS / "table9"
"""Table 9 of record (full budget), drawn into ``figures/``; the 300-step record
keeps its tables beside its runs (``TABLE9_ROOT / "figures"``)."""
NO_CONTRAST_ROOT = RECORDS / "no-contrast-steps300"
MODELS_OF_RECORD = RECORDS / "models-of-record"
PRECISION_ROOT = RECORDS / "precision-steps300"
BENCHMARKS = Path("figures/benchmarks")
UNIMATCH_OPTIMISER = RECORDS / "diagnostics" / "unimatch-optimiser"
"""UniMatch and its supervised control under the shared AdamW and under
UniMatch's own SGD (``run_unimatch_optimiser.sh``)."""

BLOCK = re.compile(r"(<!-- BEGIN (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- END (?P=name) -->)",
                   re.S)


# --------------------------------------------------------------------------- #
# Reading records


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            if line.strip()]


def _series(metrics: list[dict], key: str) -> list[tuple[int, float]]:
    return [(m["step"], m[key]) for m in metrics if key in m]


def _at(series: list[tuple[int, float]], step: int) -> float:
    (value,) = [v for s, v in series if s == step]
    return value


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _point_run(root: Path, method: str, fraction: float) -> Path:
    """The run folder of ``method`` at ``fraction`` (seed 0) under a sweep root."""
    hits = [p.parent for p in sorted(root.glob("*/point.json"))
            if (pt := json.loads(p.read_text())).get("method") == method
            and math.isclose(float(pt.get("label_fraction", -1)), fraction)
            and pt.get("seed", 0) == 0]
    if len(hits) != 1:
        raise LookupError(f"{root}: {len(hits)} runs of {method} at {fraction} (seed 0)")
    return hits[0]


def _pct(fraction: float) -> str:
    return f"{100 * fraction:g} %"


def _signed(x: float, digits: int = 1) -> str:
    return f"{x:+.{digits}f}".replace("-", "−")


_BLOCK_START = re.compile(r"^(\d+[.)]|[-+*>#]|[−–—])( |$)")


def _paragraph(text: str, width: int = 88) -> str:
    """``text`` wrapped to ``width`` columns, no line starting the way a Markdown
    list, quote or heading does (a narrower width is tried until none does)."""
    import textwrap

    for w in range(width, 40, -1):
        lines = textwrap.wrap(text, w, break_long_words=False, break_on_hyphens=False)
        if not any(_BLOCK_START.match(line) for line in lines):
            return "\n".join(lines) + "\n"
    raise ValueError(f"cannot wrap without a line that Markdown reads as a block: {text!r}")


def _markdown(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    rule = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- #
# The blocks


def record_5pct_table(root: Path) -> str:
    """Supervised only against Semi-SegDefect at 5 % labels, 1,500 steps."""
    rows = []
    for label, run in (("supervised only (same network)", SUPERVISED_5),
                       ("Semi-SegDefect", SEMI_5)):
        s = _summary(root / run)
        test = s["test"]
        rows.append([label, f"{s['best_step']:,}", f"{100 * s['val']['miou']:.1f}",
                     f"{100 * test['iou']['crack']:.1f}", f"{100 * test['iou']['spalling']:.1f}",
                     f"{100 * test['miou']:.1f}"])
    rows[-1][-1] = f"**{rows[-1][-1]}**"
    return _markdown(["method", "best step", "val MIoU", "test crack IoU", "test spalling IoU",
                      "test MIoU"], rows, {1, 2, 3, 4, 5})


def record_5pct_dynamics(root: Path) -> str:
    """What the 5 % logs say: the lead at each validation, w_u, anchors, the
    contrastive loss."""
    semi, sup = _summary(root / SEMI_5), _summary(root / SUPERVISED_5)
    semi_log, sup_log = _metrics(root / SEMI_5), _metrics(root / SUPERVISED_5)
    semi_val, sup_val = dict(_series(semi_log, "val_miou")), dict(_series(sup_log, "val_miou"))
    shared = sorted(semi_val.keys() & sup_val.keys())
    ahead = sum(semi_val[s] > sup_val[s] for s in shared)
    gap = {k: 100 * (semi["test"]["iou"][k] - sup["test"]["iou"][k]) for k in semi["test"]["iou"]}
    miou_gap = 100 * (semi["test"]["miou"] - sup["test"]["miou"])

    config = _config(root / SEMI_5)
    w_u = _series(semi_log, "w_u")
    last = w_u[-1][0]
    anchors = [v for _, v in _series(semi_log, "anchors")]
    classes = max(v for _, v in _series(semi_log, "contrast_classes"))
    most = classes * config["semi"]["num_anchors"]
    contrast = [v for _, v in _series(semi_log, "loss_contrast")]
    chance = math.log(config["semi"]["num_negatives"] + 1)
    return _paragraph(
        f"Semi-SegDefect's validation MIoU is above supervised training's at {ahead} of "
        f"{len(shared)} validation steps (Figure 7), and its test MIoU by {_signed(miou_gap)} "
        f"at the end — {_signed(gap['spalling'])} on spalling, {_signed(gap['crack'])} on "
        f"crack. From its metrics log (one line every 10 steps): w_u (the fraction of "
        f"pseudo-label pixels above {config['semi']['strong_threshold']:g}) was "
        f"{_at(w_u, 150):.2f} at step 150, {_at(w_u, 450):.2f} at step 450 and "
        f"{_at(w_u, last):.2f} at step {last:,} (mean of the last ten logged steps: "
        f"{_mean(v for _, v in w_u[-10:]):.2f}); the contrastive term found its "
        f"{classes} × {config['semi']['num_anchors']} = {most} hard anchors at "
        f"{sum(a == most for a in anchors)} of {len(anchors)} logged steps (fewest "
        f"{min(anchors)}, mean {_mean(anchors):.1f}), and its loss fell from "
        f"{_mean(contrast[:10]):.2f} to {_mean(contrast[-10:]):.2f} (means of the first and "
        f"last ten logged steps; chance: ln {config['semi']['num_negatives'] + 1} = "
        f"{chance:.2f}).")


def meanteacher_5pct(root: Path) -> str:
    """Validation MIoU at equal steps: supervised, the plain mean teacher
    (stopped early), Semi-SegDefect."""
    logs = [dict(_series(_metrics(root / run), "val_miou"))
            for run in (SUPERVISED_5, MEANTEACHER_5, SEMI_5)]
    steps = sorted(set.intersection(*(set(log) for log in logs)))
    rows = [[f"{s:,}", *(f"{100 * log[s]:.1f}" for log in logs)] for s in steps]
    return _markdown(["step", "supervised only", "plain mean teacher", "Semi-SegDefect"], rows,
                     {0, 1, 2, 3})


def table9(root: Path) -> str:
    """Table 9 of record as notebook 09 wrote it (``figures/table9_display.md``)."""
    return (root / "figures" / "table9_display.md").read_text()


def table9_steps300(root: Path) -> str:
    """The earlier 300-step Table 9, as notebook 09 wrote it beside its runs."""
    return (root / TABLE9_ROOT / "figures" / "table9_display.md").read_text()


def _bullets(lines: list[str]) -> str:
    """A Markdown list of ``lines``, each wrapped as :func:`_paragraph` does."""
    items = []
    for line in lines:
        first, *rest = _paragraph(line, 86).splitlines()
        items.append("\n".join([f"- {first}", *(f"  {r}" for r in rest)]) + "\n")
    return "".join(items)


def table9_findings(root: Path) -> str:
    """What Table 9 of record says, in notebook 09's own sentences, from its
    tables in ``figures/``: the paper's ordering, each stated direction, the
    paired comparison across seeds and each run's convergence; then the
    precision its runs computed in (from their summaries)."""
    import pandas as pd

    from semiseg_helpers import comparison
    from semiseg_helpers.runs import collect_summaries

    figures = root / "figures"
    lines = comparison.ordering_statements(pd.read_csv(figures / "table9.csv"))
    lines += comparison.difference_statements(pd.read_csv(figures / "table9_differences.csv"))
    lines += comparison.paired_statements(pd.read_csv(figures / "table9_paired.csv"))
    lines += comparison.convergence_statements(pd.read_csv(figures / "table9_convergence.csv"))
    lines += comparison.precision_statements(collect_summaries(root / TABLE9_FULL_ROOT))
    return _bullets(lines)


def table9_costs(root: Path) -> str:
    """Each method's training-loop wall-clock in Table 9 of record, per run,
    apart by precision and hardware."""
    import pandas as pd

    from semiseg_helpers.comparison import METHOD_LABELS

    costs = pd.read_csv(root / "figures" / "table9_runs.csv", keep_default_na=False)
    rows = [[METHOD_LABELS.get(r.method, r.method), _pct(r.label_fraction), r.precision,
             r.hardware or "not recorded", str(r.n_runs), f"{r.steps:,}", f"{r.minutes:.1f}",
             f"{r.s_per_step:.2f}"]
            for r in costs.itertuples(index=False)]
    return _markdown(["method", "labels", "precision", "hardware", "runs", "steps",
                      "minutes per run", "s per step"], rows, {4, 5, 6, 7})


def table9_cross(root: Path) -> str:
    """The cross-dataset check: seed-0 models scored on DeepCrack and mdmcs_mini
    without retraining (``figures/table9_cross_dataset.csv``), and what it says."""
    import pandas as pd

    from semiseg_helpers import comparison

    cross = pd.read_csv(root / "figures" / "table9_cross_dataset.csv")
    columns = [("deepcrack", "crack"), ("mdmcs_mini", "crack"), ("mdmcs_mini", "spalling"),
               ("mdmcs_mini", "miou")]
    rows = []
    for (method, fraction), group in cross.groupby(["method", "label_fraction"], sort=False):
        by = group.set_index("dataset")
        cells = [f"{by.at[d, c]:.2f}" if d in by.index and c in by and not math.isnan(
                     by.at[d, c]) else "" for d, c in columns]
        rows.append([comparison.METHOD_LABELS.get(method, method), _pct(fraction),
                     f"{group['test_miou'].iloc[0]:.2f}", *cells])
    table = _markdown(["method", "labels", "PEER Hub test MIoU", "DeepCrack crack",
                       "mdmcs crack", "mdmcs spalling", "mdmcs MIoU"], rows, {2, 3, 4, 5, 6})
    return table + "\n" + _bullets(comparison.cross_dataset_statements(cross))


def table9_w_u(root: Path) -> str:
    """Semi-SegDefect's w_u at the end of the 300-step runs."""
    runs = [(f, _metrics(_point_run(root / TABLE9_ROOT, "semisegdefect", f)))
            for f in (0.02, 0.05, 0.1, 0.2)]
    ends = [_series(log, "w_u") for _, log in runs]
    steps = {w[-1][0] for w in ends}
    (step,) = steps
    full = _series(_metrics(root / SEMI_5), "w_u")
    fractions = " / ".join(f"{100 * f:g}" for f, _ in runs)
    return _paragraph(f"Semi-SegDefect's confidence weight w_u at step {step} (its metrics logs) was "
            + " / ".join(f"{w[-1][1]:.2f}" for w in ends) + f" at {fractions} % labels "
            "(means of the last ten logged steps: "
            + " / ".join(f"{_mean(v for _, v in w[-10:]):.2f}" for w in ends)
            + f"), against {full[-1][1]:.2f} after {full[-1][0]:,} steps at 5 %.")


def no_contrast(root: Path) -> str:
    """Semi-SegDefect without its contrastive term against with it, 300 steps."""
    parts, gains = [], []
    for f in (0.05, 0.2):
        off = _summary(_point_run(root / NO_CONTRAST_ROOT, "semisegdefect", f))["test"]["miou"]
        on = _summary(_point_run(root / TABLE9_ROOT, "semisegdefect", f))["test"]["miou"]
        parts.append((f, 100 * off, 100 * on))
        gains.append(_signed(100 * (on - off)))
    (f1, off1, on1), (f2, off2, on2) = parts
    return _paragraph(f"Without it, test MIoU is {off1:.2f} at {_pct(f1)} and {off2:.2f} at {_pct(f2)} "
            f"labels, against Semi-SegDefect's {on1:.2f} and {on2:.2f}: the contrastive term "
            f"adds {gains[0]} and {gains[1]} here (one seed).")


def networks(root: Path) -> str:
    """Decoder sizes and output strides (``benchmarks/model_sizes.py --out``)."""
    return (root / BENCHMARKS / "networks.md").read_text()


def hard_cells(root: Path) -> str:
    """Thin-crack cells a confident student calls hard (``benchmarks/hard_cells.py``)."""
    t = json.loads((root / BENCHMARKS / "hard_cells.json").read_text())
    c, thin = t["crack_cells"], t["thin_cells"]
    return _paragraph(
        f"On peerhub's {t['split']} split ({c:,} crack cells on the 1/4 grid, {thin:,} of them "
        f"thin: at most a quarter of their 4 × 4 block is crack), a perfectly confident "
        f"student (p = 0.9999 on every pixel) made {t['hard_before']:,} crack cells "
        f"({100 * t['hard_before'] / c:.1f} %) hard anchors when hardness was judged from "
        f"logits averaged over the block — {t['thin_hard_before']:,} of the {thin:,} thin ones "
        f"({100 * t['thin_hard_before'] / thin:.0f} %) — and makes {t['hard_after']:,} hard "
        f"when it is judged from the cell's own crack pixels.")


def step_time(root: Path) -> str:
    """One training step, fp32 eager against the fast path, output stride 32 and 16
    (``benchmarks/step_time.py --json``)."""
    rows = []
    for name, label in (("step_time_os32.json", "output stride 32"),
                        ("step_time.json", "output stride 16 (default)")):
        r = json.loads((root / BENCHMARKS / name).read_text())
        rows.append([label, f"{r['fp32_supervised_s']:.3f}", f"{r['fp32_semi_s']:.3f}",
                     f"{r['supervised_s']:.3f}", f"{r['semi_s']:.3f}",
                     f"{r['supervised_speedup']:.2f}×", f"{r['semi_speedup']:.2f}×",
                     f"{r['semi_over_supervised']:.2f}"])
    fast = json.loads((root / BENCHMARKS / "step_time.json").read_text())
    header = ["network", "fp32 supervised (s)", "fp32 semi (s)",
              "fast supervised (s)", "fast semi (s)", "supervised speed-up", "semi speed-up",
              "fast semi / supervised"]
    note = (f"`{fast['profile']}` profile, {fast['threads']} threads, batch "
            f"{fast['batch'][0]} + {fast['batch'][1]} of {fast['crop']} px; fast path = "
            f"{fast['precision']} autocast{' + channels-last' if fast['channels_last'] else ''}"
            f"{' + rerouted depth-wise backward' if fast['precision'] == 'bf16' else ''}.")
    return _markdown(header, rows, {1, 2, 3, 4, 5, 6, 7}) + "\n" + _paragraph(note)


def profile_breakdown(root: Path) -> str:
    """Self CPU time per kind of work (``benchmarks/profile_step.py --json``): fp32
    eager, bf16 with stock depth-wise convolutions (the fast path before
    :mod:`semiseg_helpers.models.depthwise`), and today's fast path."""
    now = json.loads((root / BENCHMARKS / "profile_step.json").read_text())
    stock = json.loads((root / BENCHMARKS / "profile_step_stock_depthwise.json").read_text())
    columns = []
    for method, name in (("supervised", "supervised"), ("semisegdefect", "Semi-SegDefect")):
        columns += [(f"{name} fp32", now[f"{method}/fp32"]),
                    (f"{name} bf16, stock depth-wise", stock[f"{method}/fast"]),
                    (f"{name} fast", now[f"{method}/fast"])]
    groups = sorted({g for _, c in columns for g in c}, key=lambda g: -columns[3][1].get(g, 0))
    rows = [[g] + [f"{1000 * c.get(g, 0.0):.0f}" for _, c in columns] for g in groups]
    rows.append(["**total**"] + [f"**{1000 * sum(c.values()):.0f}**" for _, c in columns])
    return _markdown(["ms of self CPU time per step"] + [h for h, _ in columns], rows,
                     set(range(1, len(columns) + 1)))


def compile_time(root: Path) -> str:
    """The fast path with torch.compile (``benchmarks/step_time.py --compile --json``)."""
    c = json.loads((root / BENCHMARKS / "step_time_compile.json").read_text())
    e = json.loads((root / BENCHMARKS / "step_time.json").read_text())
    return _paragraph(
        f"With `compile=true` (torch.compile of the networks, same batch and threads) the "
        f"first step compiles for {c['supervised_compile_s']:.0f} s (supervised) and "
        f"{c['semi_compile_s']:.0f} s (Semi-SegDefect); the steps after take "
        f"{c['supervised_s']:.3f} s and {c['semi_s']:.3f} s against {e['supervised_s']:.3f} s "
        f"and {e['semi_s']:.3f} s without it, so compilation does not pay on this CPU and "
        f"stays off by default.")


def predict_time(root: Path) -> str:
    """Sliding-window prediction of one photo (``benchmarks/predict_time.py --json``)."""
    r = json.loads((root / BENCHMARKS / "predict_time.json").read_text())
    w, h = r["size"]
    return _paragraph(
        f"`semiseg predict` segments a {w} × {h} photo in {r['seconds']:.2f} s on "
        f"{r['threads']} threads ({r['windows']} windows of {r['window']} px with "
        f"{r['overlap']:.0%} overlap, {r['precision']}; the Semi-SegDefect model of record; "
        f"`python benchmarks/predict_time.py`).")


def quantify_accuracy(root: Path) -> str:
    """Crack measurements against cracks of known geometry
    (``benchmarks/quantify_accuracy.py --json``)."""
    r = json.loads((root / BENCHMARKS / "quantify_accuracy.json").read_text())
    rows = [["mean width", f"{r['mean_abs_width_error_px']:.2f} px",
             f"{_signed(r['mean_width_error_px'], 2)} px", f"{r['max_abs_width_error_px']:.2f} px",
             "1 px", _pct(r['share_width_within_1px'])],
            ["length", f"{100 * r['mean_abs_length_error']:.2f} %",
             f"{_signed(100 * r['mean_length_error'], 2)} %",
             f"{100 * r['max_abs_length_error']:.1f} %", "5 %",
             _pct(r['share_length_within_5pc'])]]
    table = _markdown(["measure", "mean abs. error", "bias", "worst", "target",
                       "cracks within"], rows, {1, 2, 3, 4, 5})
    radii = sorted({round(1 / abs(c)) for c in r["curvatures_per_px"] if c})
    widths = r["widths_px"]
    text = (f"{r['cracks']} cracks (`python benchmarks/quantify_accuracy.py`, seed {r['seed']}): "
            f"centrelines {' and '.join(f'{v:g}' for v in r['centreline_lengths_px'])} px "
            f"long, widths {widths[0]:g}–{widths[-1]:g} px in steps of "
            f"{widths[1] - widths[0]:g}, {len(r['headings_deg'])} headings, straight or bent "
            f"with radii {', '.join(map(str, radii))} px, {r['positions']} random sub-pixel "
            f"positions each. Length is compared tip to tip (centreline + width).")
    return table + "\n" + _paragraph(text)


_RUN_HEADER = ["run", "precision", "best step", "val MIoU", "test crack", "test spalling",
               "test MIoU", "minutes"]


def _run_row(label: str, run: Path, digits: int) -> list[str]:
    """One run's line of :data:`_RUN_HEADER` (scores in %, to ``digits``)."""
    s = _summary(run)
    t = s["test"]
    return [label, s.get("precision", "fp32"), f"{s['best_step']:,}",
            f"{100 * s['val']['miou']:.{digits}f}", f"{100 * t['iou']['crack']:.{digits}f}",
            f"{100 * t['iou']['spalling']:.{digits}f}", f"{100 * t['miou']:.{digits}f}",
            f"{s['seconds'] / 60:.1f}"]


def precision_check(root: Path) -> str:
    """The 300-step fp32 vs fast-path runs (``records/peerhub-cpu/run_precision.sh``)."""
    runs = (("fp32", "fp32"), ("fast, stock depth-wise backward", "fast-stock-depthwise"),
            ("fast", "fast"))
    rows = [_run_row(label, root / PRECISION_ROOT / name, 2) for label, name in runs]
    return _markdown(_RUN_HEADER, rows, {2, 3, 4, 5, 6, 7})


def models_of_record(root: Path) -> str:
    """The committed 5 % models against the earlier 1,500-step runs."""
    runs = (("supervised (same network), before the fixes", SUPERVISED_5),
            ("Semi-SegDefect, before the fixes", SEMI_5),
            ("supervised (same network), model of record",
             MODELS_OF_RECORD / "supervised-f0.05-s0"),
            ("Semi-SegDefect, model of record", MODELS_OF_RECORD / "semisegdefect-f0.05-s0"))
    rows = [_run_row(label, root / run, 1) for label, run in runs]
    test = [_summary(root / run)["test"] for _, run in runs]
    gain = {when: {k: 100 * (semi[k] - sup[k]) if k == "miou" else
                   {c: 100 * (semi["iou"][c] - sup["iou"][c]) for c in sup["iou"]}
                   for k in ("miou", "iou")}
            for when, sup, semi in (("before", test[0], test[1]), ("after", test[2], test[3]))}
    text = (f"Semi-SegDefect leads supervised training of its own network by "
            f"{_signed(gain['after']['miou'])} test MIoU (crack {_signed(gain['after']['iou']['crack'])}, "
            f"spalling {_signed(gain['after']['iou']['spalling'])}); before the fixes the lead was "
            f"{_signed(gain['before']['miou'])} (crack {_signed(gain['before']['iou']['crack'])}, "
            f"spalling {_signed(gain['before']['iou']['spalling'])}). One seed each.")
    return _markdown(_RUN_HEADER, rows, {2, 3, 4, 5, 6, 7}) + "\n" + _paragraph(text)


ABLATIONS = Path("figures/ablations")


def ablations_of_record(root: Path) -> str:
    """Every ablation table of record drawn so far (``figures/ablations/table*/``):
    the table as its notebook printed it and its sentence on the paper's direction."""
    parts = []
    tables = sorted((root / ABLATIONS).glob("table*/record.json"),
                    key=lambda path: int(path.parent.name[len("table"):]))
    for record_file in tables:
        folder = record_file.parent
        record = json.loads(record_file.read_text())
        budgets = ", ".join(f"{b:,}" for b in record["step_budgets"])
        parts.append(f"**Table {folder.name[len('table'):]}** (`{ABLATIONS / folder.name}/`, "
                     f"{budgets} steps):\n\n"
                     + (folder / f"{folder.name}_display.md").read_text() + "\n"
                     + _paragraph(record["direction"]))
    if not parts:
        return "No ablation table of record has been drawn yet.\n"
    return "\n".join(parts)


def unimatch_optimiser(root: Path) -> str:
    """UniMatch and its supervised control at each optimiser: test IoU, the
    validation curve's last-third gain, wall-clock; and, per seed with all four
    runs, what the change of optimiser did to each."""
    from semiseg_helpers.comparison import METHOD_LABELS, convergence
    from semiseg_helpers.runs import collect_summaries

    folder = root / UNIMATCH_OPTIMISER
    runs = collect_summaries(folder) if folder.is_dir() else None
    if runs is None or runs.empty:
        return "No run of this comparison has finished yet.\n"
    runs["optimiser"] = [_config(Path(r))["optim"].get("name", "adamw") for r in runs["run"]]
    gains = convergence(runs).set_index("run")["gain"]
    runs = runs.sort_values(["seed", "method", "optimiser"], ascending=[True, False, True])
    name = {"adamw": "shared AdamW", "sgd": "UniMatch's SGD"}
    rows = [[METHOD_LABELS.get(r.method, r.method), name[r.optimiser], str(r.seed),
             f"{100 * r.test_iou_crack:.2f}", f"{100 * r.test_iou_spalling:.2f}",
             f"{100 * r.test_miou:.2f}", f"{r.best_step:,}", _signed(gains[r.run], 2),
             f"{r.seconds / 60:.1f}"] for r in runs.itertuples(index=False)]
    table = _markdown(["method", "optimiser", "seed", "crack", "spalling", "MIoU",
                       "best step", "last third", "minutes"], rows, {2, 3, 4, 5, 6, 7, 8})
    lines = []
    for seed, group in runs.groupby("seed"):
        miou = {(r.method, r.optimiser): 100 * r.test_miou for r in group.itertuples()}
        if len(miou) < 4:
            continue
        uni = miou["unimatch", "sgd"] - miou["unimatch", "adamw"]
        sup = miou["supervised", "sgd"] - miou["supervised", "adamw"]
        lines.append(
            f"Seed {seed}: UniMatch's own SGD moves its test MIoU by {_signed(uni, 2)} points "
            f"({miou['unimatch', 'adamw']:.2f} → {miou['unimatch', 'sgd']:.2f}) and the "
            f"supervised control's by {_signed(sup, 2)} ({miou['supervised', 'adamw']:.2f} → "
            f"{miou['supervised', 'sgd']:.2f}); under the same optimiser UniMatch minus its "
            f"supervised control is "
            f"{_signed(miou['unimatch', 'adamw'] - miou['supervised', 'adamw'], 2)} points with "
            f"AdamW and {_signed(miou['unimatch', 'sgd'] - miou['supervised', 'sgd'], 2)} with "
            "SGD.")
    return table + ("\n" + _bullets(lines) if lines else "")


BLOCKS: dict[str, Callable[[Path], str]] = {
    "networks": networks,
    "hard-cells": hard_cells,
    "step-time": step_time,
    "precision-check": precision_check,
    "profile-step": profile_breakdown,
    "predict-time": predict_time,
    "quantify-accuracy": quantify_accuracy,
    "compile-time": compile_time,
    "models-of-record": models_of_record,
    "record-5pct": record_5pct_table,
    "record-5pct-dynamics": record_5pct_dynamics,
    "meanteacher-5pct": meanteacher_5pct,
    "table9": table9,
    "table9-findings": table9_findings,
    "table9-costs": table9_costs,
    "table9-cross": table9_cross,
    "table9-steps300": table9_steps300,
    "ablations": ablations_of_record,
    "table9-w_u": table9_w_u,
    "no-contrast": no_contrast,
    "unimatch-optimiser": unimatch_optimiser,
}


# --------------------------------------------------------------------------- #
# Rewriting the README


def render(readme: str, root: Path = REPO) -> str:
    """``readme`` with every marked block replaced by what it is generated
    from; a block without a generator, or a generator without its block, is
    an error."""
    seen = []

    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise ValueError(f"README block {name!r} has no generator; known: {sorted(BLOCKS)}")
        seen.append(name)
        return match.group(1) + BLOCKS[name](root) + match.group(4)

    out = BLOCK.sub(fill, readme)
    if missing := sorted(set(BLOCKS) - set(seen)):
        raise ValueError(f"README lacks the block(s) {missing} "
                         "(<!-- BEGIN name --> ... <!-- END name -->)")
    if len(seen) != len(set(seen)):
        raise ValueError(f"README has a block twice: {sorted(seen)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--root", type=Path, default=REPO,
                        help="repository root holding figures/ and records/")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a block differs from what it is made from")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    new = render(text, args.root)
    if args.check:
        if new != text:
            print(f"{args.readme}: generated blocks are stale; run "
                  "python -m semiseg_helpers.readme_tables", file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.readme.write_text(new)
        print(f"rewrote the generated blocks of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
