"""Tables 2 to 8: Semi-SegDefect's ablations, each a grid file drawn as the
paper's table, a plot, and the paper's stated direction beside ours.

An ablation is a grid file (``grids/table*.yaml``, read by
:func:`~semiseg_helpers.sweep.load_grid`: axes and explicit ``cases``) whose
``paper`` entry says which table it is and what the paper states there: the
text of TARGETS.md, and the direction it claims as *claims* that this module
checks against the measured means::

    paper:
      table: 2
      title: initial learning rate
      states: "best MIoU 69.63 % at lr 1e-3; lr 0.1 worst (diverges)"
      note: "..."                         optional: what the claims leave out
      expect:
        - best: {optim.lr: 0.001}         the highest test MIoU of the settings run
          stated: {MIoU: 69.63}           optional: the paper's own figure for it
        - worst: {optim.lr: 0.1}          the lowest
        - higher: confidence fraction     beats ...
          than: constant 1                ... this setting
          stated: {crack: 3.08}           optional: the paper's difference, points

A *setting* is one combination of the grid's axes and one case; a claim
names one by its case's ``label`` or by a mapping of values that picks out
exactly one. Each setting trains at every seed, with the method, label
fraction and seed the notebook sets (so a grid file may not set them).
Nothing about the paper is written in code: the grid files carry it, and a
notebook only calls what is here.

Checks are strict: a claim holds when the measured means differ in its
direction, not when they are equal (two runs that learnt nothing do not
reproduce anything). Claims are checked on test MIoU; the per-class
differences the paper states are shown beside ours (:func:`effects_table`).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from semiseg_helpers.classes import DEFECT_CLASSES
from semiseg_helpers.sweep import Point, load_grid, value_text

METHOD = "semisegdefect"
"""The method every ablation varies."""
FIXED_KEYS = ("method", "label_fraction", "seed")
"""Set by the notebook's parameters, never by an ablation's grid file."""
CLAIM_KINDS = ("best", "worst", "higher")
METRICS = ("MIoU", *DEFECT_CLASSES)
"""What a claim's ``stated`` figures may be about."""
PAPER_KEYS = ("table", "title", "states", "note", "expect")


# --------------------------------------------------------------------------- #
# The grid file's settings and claims


@dataclass(frozen=True)
class Setting:
    """One row of an ablation table: its name and the values it trains with."""

    label: str
    values: dict[str, Any]


@dataclass(frozen=True)
class Claim:
    """A direction the paper states: ``setting`` is the best or the worst of
    the settings, or beats ``other``. ``stated`` holds the paper's figures
    (for ``higher``: the difference setting − other in points; for
    ``best``/``worst``: the setting's own IoU in %)."""

    kind: str
    setting: str
    other: str | None = None
    stated: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "higher":
            return f"{self.setting} beats {self.other}"
        return f"{self.setting} is {self.kind}"


@dataclass(frozen=True)
class Ablation:
    """A paper table as an ablation grid: its settings and the paper's claims."""

    name: str
    """File stem of its outputs: ``table2``."""
    table: str
    """``Table 2``."""
    title: str
    states: str
    """What the paper states (TARGETS.md)."""
    note: str
    settings: tuple[Setting, ...]
    claims: tuple[Claim, ...]
    path: Path

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.settings]

    def points(self, seeds: Sequence[int], label_fraction: float,
               method: str = METHOD) -> list[Point]:
        """Every setting at every seed (seed by seed, settings in the grid's order),
        as sweep points: the same points, hence run folders, as ``semiseg sweep
        --grid`` makes from the grid file."""
        if not seeds:
            raise ValueError("seeds is empty: an ablation needs at least one seed")
        return [{"method": method, "label_fraction": label_fraction, "seed": seed,
                 **setting.values} for seed in seeds for setting in self.settings]

    def label_of(self, point: Mapping[str, Any]) -> str:
        """The setting a point (of :meth:`points`) trains."""
        key = _values_key({k: v for k, v in point.items() if k not in FIXED_KEYS})
        for setting in self.settings:
            if _values_key(setting.values) == key:
                return setting.label
        raise ValueError(f"{self.path}: no setting trains the point {dict(point)}")

    def select(self, labels: Sequence[str] | None) -> "Ablation":
        """Only the settings named (in the grid's order); ``None``: all. The
        claims stay: those about a setting left out read as not checked."""
        if labels is None:
            return self
        if isinstance(labels, str):
            labels = [labels]
        unknown = [label for label in labels if label not in self.labels]
        if unknown or not labels:
            raise ValueError(f"{self.path}: no setting(s) {unknown or labels}; its settings "
                             f"are {self.labels}")
        return replace(self, settings=tuple(s for s in self.settings if s.label in labels))

    def markdown(self) -> str:
        """What the table varies, what the paper states and what is checked here."""
        settings = ", ".join(f"`{label}`" for label in self.labels)
        claims = "; ".join(c.describe() for c in self.claims) or "none"
        text = (f"**{self.table}: {self.title}.** Settings: {settings}.\n\n"
                f"The paper states: {self.states}.\n\n"
                f"Checked here on test MIoU (from `{self.path.name}`): {claims}.")
        return text + (f"\n\n{self.note}" if self.note else "")


def _values_key(values: Mapping[str, Any]) -> str:
    """Settings compared by the text a run's command gets, whatever the key order."""
    return json.dumps({k: value_text(v) for k, v in sorted(values.items())})


def _short(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={value_text(v)}" for k, v in values.items())


def _settings(grid, path: Path) -> tuple[Setting, ...]:
    """The grid's axes × cases as settings, named by the case's label and the
    axes' values (``lr=0.001``), or ``defaults`` where nothing is set."""
    keys = list(grid.axes)
    cases = grid.cases if grid.cases is not None else ({},)
    labels = grid.labels if grid.cases is not None else (None,)
    settings = []
    for combo in itertools.product(*grid.axes.values()):
        axes = dict(zip(keys, combo))
        for case, label in zip(cases, labels):
            parts = [label or _short(case), _short(axes)]
            name = ", ".join(p for p in parts if p) or "defaults"
            settings.append(Setting(name, {**axes, **case}))
    names = [s.label for s in settings]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{path}: settings {twice} share a name; give the cases labels")
    return tuple(settings)


def _resolve(ref: Any, settings: Sequence[Setting], where: str) -> str:
    """The label of the one setting ``ref`` names (a label, or values it has)."""
    if isinstance(ref, str):
        if ref in [s.label for s in settings]:
            return ref
        raise ValueError(f"{where}: {ref!r} is not a setting; the settings are "
                         f"{[s.label for s in settings]}")
    if not isinstance(ref, dict) or not ref:
        raise ValueError(f"{where}: expected a setting's label or a mapping of its values, "
                         f"got {ref!r}")
    hits = [s.label for s in settings
            if all(k in s.values and s.values[k] == v for k, v in ref.items())]
    if len(hits) != 1:
        raise ValueError(f"{where}: {ref} picks {len(hits)} settings ({hits}), not one; the "
                         f"settings are {[s.label for s in settings]}")
    return hits[0]


def _claim(item: Any, settings: Sequence[Setting], where: str) -> Claim:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected a mapping such as {{best: ...}} or "
                         f"{{higher: ..., than: ...}}, got {item!r}")
    kinds = [k for k in CLAIM_KINDS if k in item]
    if len(kinds) != 1:
        raise ValueError(f"{where}: give exactly one of {list(CLAIM_KINDS)}, got {sorted(item)}")
    kind = kinds[0]
    allowed = {kind, "stated"} | ({"than"} if kind == "higher" else set())
    if extra := sorted(set(item) - allowed):
        raise ValueError(f"{where}: unknown key(s) {extra} for a {kind!r} claim (it takes "
                         f"{sorted(allowed)})")
    setting = _resolve(item[kind], settings, f"{where}.{kind}")
    other = None
    if kind == "higher":
        if "than" not in item:
            raise ValueError(f"{where}: a 'higher' claim needs 'than': the setting it beats")
        other = _resolve(item["than"], settings, f"{where}.than")
        if other == setting:
            raise ValueError(f"{where}: {setting!r} cannot beat itself")
    stated = item.get("stated", {})
    if not isinstance(stated, dict):
        raise ValueError(f"{where}.stated: expected a mapping of metric: number, got {stated!r}")
    for metric, value in stated.items():
        if metric not in METRICS:
            raise ValueError(f"{where}.stated: unknown metric {metric!r}; use {list(METRICS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}.stated.{metric}: expected a number, got {value!r}")
    return Claim(kind, setting, other, {m: float(v) for m, v in stated.items()})


def load_ablation(path: str | Path) -> Ablation:
    """Read an ablation's grid file (see the module docstring). Errors name the
    file and the key: a missing ``paper`` entry or field, a grid that sets
    the method, label fraction or seed, a claim naming no setting or several."""
    path = Path(path)
    grid = load_grid(path)
    paper = grid.paper
    if not paper:
        raise ValueError(f"{path}: no 'paper' entry; an ablation's grid file says which table "
                         "it is and what the paper states there (semiseg_helpers.ablations)")
    if extra := sorted(set(paper) - set(PAPER_KEYS)):
        raise ValueError(f"{path}: paper: unknown key(s) {extra}; it takes {list(PAPER_KEYS)}")
    for key in ("table", "title", "states"):
        value = paper.get(key)
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            raise ValueError(f"{path}: paper.{key}: expected a non-empty text, got {value!r}")
    note = paper.get("note", "")
    if not isinstance(note, str):
        raise ValueError(f"{path}: paper.note: expected a text, got {note!r}")
    set_here = set(grid.axes).union(*(grid.cases or ()))
    if fixed := sorted(set_here & set(FIXED_KEYS)):
        raise ValueError(f"{path}: sets {fixed}, which the notebook's parameters set "
                         "(label_fraction, seeds): leave them out of an ablation's grid")
    settings = _settings(grid, path)
    expect = paper.get("expect", [])
    if not isinstance(expect, list):
        raise ValueError(f"{path}: paper.expect: expected a list of claims, got {expect!r}")
    claims = tuple(_claim(item, settings, f"{path}: paper.expect[{i}]")
                   for i, item in enumerate(expect))
    number = str(paper["table"])
    return Ablation(name=f"table{number}".replace(" ", ""), table=f"Table {number}",
                    title=str(paper["title"]), states=str(paper["states"]), note=note,
                    settings=settings, claims=claims, path=path)


# --------------------------------------------------------------------------- #
# Training: reuse, then the sweep


def runs_folder(runs_dir: str | Path | None, output_dir: str | Path, profile: str) -> Path:
    """``runs_dir``, or by default ``<output_dir>/runs/<profile>``."""
    return Path(runs_dir) if runs_dir else Path(output_dir) / "runs" / profile


def sibling_runs(output_dir: str | Path, profile: str) -> list[Path]:
    """The ``runs/<profile>`` folders of the other notebooks' outputs beside
    ``output_dir`` (``make demo`` writes every notebook into one folder): the
    ablations' default setting, shared by every table, trains once."""
    own = (Path(output_dir) / "runs" / profile).resolve()
    return [p for p in sorted(Path(output_dir).resolve().parent.glob(f"*/runs/{profile}"))
            if p.is_dir() and p.resolve() != own]


@dataclass
class Trained:
    """What :func:`train_settings` did and found."""

    points: list[Point]
    runs_dir: Path
    runs: pd.DataFrame
    """One row per finished run (:func:`~semiseg_helpers.sweep.collect`) with its ``setting``."""
    classes: list[str]
    reused: list[str] = field(default_factory=list)
    """Point folders copied from finished runs of the same configuration."""
    failed: list[str] = field(default_factory=list)


def collect_runs(runs_dir: str | Path, ablation: Ablation, points: Sequence[Point]
                 ) -> pd.DataFrame:
    """The finished runs of ``points`` under ``runs_dir``, each with its ``setting``."""
    from semiseg_helpers.sweep import collect, run_dir_of

    runs = collect(runs_dir, points)
    if runs.empty:
        return pd.DataFrame(columns=["setting", "seed", "test_miou", "run"])
    label = {str(run_dir_of(runs_dir, p)): ablation.label_of(p) for p in points}
    return runs.assign(setting=runs["run"].map(label))


def train_settings(ablation: Ablation, data_dir: str | Path, profile: str, label_fraction: float,
                   seeds: Sequence[int], overrides: Mapping[str, Any] | None, runs_dir: Path,
                   reuse_roots: Iterable[str | Path] = (), jobs: int = 1,
                   run: bool = True) -> Trained:
    """Train every setting at every seed into ``runs_dir`` (one folder per point;
    finished points are loaded, interrupted ones resumed), after copying in the
    finished runs of the same configuration found under ``reuse_roots``
    (:func:`~semiseg_helpers.sweep.reuse_finished`, which says what it
    copies). ``run=False`` only reuses and loads. The label fraction must be
    one the dataset was prepared with."""
    from semiseg_helpers.data.prepare import load_manifest
    from semiseg_helpers.evaluate import defect_classes
    from semiseg_helpers.sweep import reuse_finished, sweep, train_job

    manifest = load_manifest(data_dir)
    prepared = [float(f) for f in manifest["parameters"]["label_fractions"]] + [1.0]
    if not any(math.isclose(label_fraction, f) for f in prepared):
        raise ValueError(f"label_fraction {label_fraction}: {data_dir} was prepared with "
                         f"{prepared[:-1]} (and 1.0, every labelled image)")
    points = ablation.points(seeds, label_fraction)
    job = train_job(data_dir, profile, overrides)
    roots = [Path(r) for r in reuse_roots if Path(r).is_dir()]
    reused = [target.name for _, target in reuse_finished(points, runs_dir, job, roots)]
    print(f"{len(points)} points ({len(ablation.settings)} settings x {len(seeds)} seed(s)) "
          f"under {runs_dir}; {len(reused)} reused from finished runs of the same "
          f"configuration under {[str(r) for r in roots]}", flush=True)
    failed = []
    if run:
        report = sweep(points, runs_dir, job, jobs=jobs)
        print(report)
        failed = [p.name for p in report.failed]
    return Trained(points, runs_dir, collect_runs(runs_dir, ablation, points),
                   defect_classes(manifest), reused, failed)


# --------------------------------------------------------------------------- #
# The table


def ablation_table(runs: pd.DataFrame, settings: Sequence[str],
                   classes: Sequence[str]) -> pd.DataFrame:
    """Per setting, in the order given: test IoU of each class and MIoU in %,
    mean and sample std over seeds (NaN for one seed: no spread measured).

    Columns ``setting``, ``n_seeds``, ``<class>_mean``, ``<class>_std``,
    ``miou_mean``, ``miou_std``. A setting without a finished run keeps its
    row with ``n_seeds`` 0. Two runs of one setting and seed, or a run of a
    setting not listed, are errors.
    """
    if missing := {"setting", "seed", "test_miou"} - set(runs.columns):
        raise ValueError(f"runs lack column(s) {sorted(missing)}; expected collect_runs' table")
    runs = runs.dropna(subset=["test_miou"])
    if unknown := sorted(set(runs["setting"].astype(str)) - set(settings)):
        raise ValueError(f"runs of setting(s) {unknown}, which are not among {list(settings)}")
    if (dup := runs[runs.duplicated(["setting", "seed"], keep=False)]).shape[0]:
        shown = dup[["setting", "seed"] + (["run"] if "run" in dup else [])].to_dict("records")
        raise ValueError(f"several runs share a setting and seed; keep one of each: {shown}")
    columns = {**{c: f"test_iou_{c}" for c in classes}, "miou": "test_miou"}
    rows = []
    for setting in settings:
        mine = runs[runs["setting"] == setting]
        row = {"setting": setting, "n_seeds": len(mine)}
        for name, column in columns.items():
            values = (100 * mine[column].astype(float) if column in mine
                      else pd.Series(np.nan, index=mine.index))
            row[f"{name}_mean"] = values.mean() if len(mine) else math.nan
            row[f"{name}_std"] = values.std(ddof=1) if len(mine) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=["setting", "n_seeds",
                                       *(f"{n}_{s}" for n in columns for s in ("mean", "std"))])


def _cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "not run"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as the paper prints it: ``mean ± std`` per class and MIoU."""
    metrics = [c[:-5] for c in table.columns if c.endswith("_mean") and c != "miou_mean"]
    return pd.DataFrame([{"setting": r["setting"],
                          **{m: _cell(r[f"{m}_mean"], r[f"{m}_std"]) for m in metrics},
                          "MIoU": _cell(r["miou_mean"], r["miou_std"]), "seeds": r["n_seeds"]}
                         for r in table.to_dict("records")],
                        columns=["setting", *metrics, "MIoU", "seeds"])


# --------------------------------------------------------------------------- #
# The paper's direction beside ours


@dataclass(frozen=True)
class Check:
    """A claim against the measured means: whether it holds (``None``: it cannot
    be checked, a setting it names has no finished run), by how many points
    (positive when it holds), and a clause saying so with the numbers."""

    claim: Claim
    holds: bool | None
    margin: float
    clause: str


def _measured(table: pd.DataFrame, metric: str = "miou") -> dict[str, float]:
    """Setting → mean of ``metric`` (``miou`` or a class) over its seeds, for
    the settings that finished, in the table's order."""
    column = f"{metric}_mean"
    if column not in table:
        return {}
    return {s: float(v) for s, v, n in zip(table["setting"], table[column], table["n_seeds"])
            if n > 0 and not math.isnan(v)}


def _within_spread(table: pd.DataFrame, settings: Sequence[str], margin: float) -> str:
    """``", within the seeds' std of ..."`` where the margin is no larger than the
    std over seeds of a setting compared (one seed measures no spread)."""
    stds = [float(v) for s, v in zip(table["setting"], table["miou_std"]) if s in settings]
    spread = max((v for v in stds if not math.isnan(v)), default=math.nan)
    if math.isnan(spread) or abs(margin) > spread:
        return ""
    return f", within the seeds' std of {spread:.2f}"


def check_claim(claim: Claim, table: pd.DataFrame) -> Check:
    """``claim`` against :func:`ablation_table`'s test MIoU means (strictly: equal
    means do not hold). Its clause says so with the means, says where the
    difference is within one std over seeds of the settings compared, and
    that a best or worst is among the finished settings where some are not."""
    miou = _measured(table)
    s, o = claim.setting, claim.other
    if claim.kind == "higher":
        if absent := [x for x in (s, o) if x not in miou]:
            return Check(claim, None, math.nan, f"whether {s} beats {o} cannot be checked "
                         f"({' and '.join(absent)} not finished)")
        margin = miou[s] - miou[o]
        verb = "beats" if margin > 0 else "does not beat"
        return Check(claim, margin > 0, margin, f"{s} {verb} {o} ({miou[s]:.2f} % against "
                     f"{miou[o]:.2f} % MIoU{_within_spread(table, (s, o), margin)})")
    others = {k: v for k, v in miou.items() if k != s}
    if s not in miou or not others:
        why = f"{s} not finished" if s not in miou else "no other setting finished"
        return Check(claim, None, math.nan, f"whether {s} is {claim.kind} cannot be checked "
                     f"({why})")
    if claim.kind == "best":
        rival = max(others, key=others.get)
        margin, side = miou[s] - others[rival], "above"
    else:
        rival = min(others, key=others.get)
        margin, side = others[rival] - miou[s], "below"
    spread = _within_spread(table, (s, rival), margin)
    among = f" of the {len(miou)} settings finished" if len(miou) < len(table) else ""
    if margin > 0:
        return Check(claim, True, margin, f"{s} is {claim.kind}{among} ({miou[s]:.2f} % MIoU, "
                     f"{margin:.2f} points {side} {rival}{spread})")
    return Check(claim, False, margin, f"{s} is not {claim.kind}{among} ({miou[s]:.2f} % MIoU; "
                 f"{rival} has {others[rival]:.2f} %{spread})")


def check_claims(table: pd.DataFrame, claims: Sequence[Claim]) -> list[Check]:
    return [check_claim(c, table) for c in claims]


def direction_sentence(checks: Sequence[Check], table: pd.DataFrame) -> str:
    """One sentence: whether the paper's direction reproduced, claim by claim,
    with the measured test MIoU means and over how many seeds."""
    if not checks:
        return "The grid file states no direction to check."
    checked = [c for c in checks if c.holds is not None]
    held = sum(bool(c.holds) for c in checked)
    if not checked:
        verdict = "The paper's direction cannot be checked yet"
    elif held == len(checked) == len(checks):
        verdict = "The paper's direction reproduces"
    elif held == len(checked):
        verdict = (f"The paper's direction reproduces in the {held} of {len(checks)} claims "
                   "that can be checked")
    elif held == 0:
        verdict = "The paper's direction does not reproduce"
    else:
        verdict = (f"The paper's direction reproduces only in part ({held} of {len(checked)} "
                   "checked claims)")
    seeds = sorted({int(n) for n in table["n_seeds"] if n > 0})
    over = ""
    if seeds:
        count = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
        over = f"; test means over {count} seed{'s' if seeds[-1] > 1 else ''}"
    return f"{verdict}: {'; '.join(c.clause for c in checks)}{over}."


_HOLDS = {True: "yes", False: "no", None: "not checked"}


def effects_table(table: pd.DataFrame, checks: Sequence[Check]) -> pd.DataFrame:
    """The paper's stated effect beside ours, one row per claim and metric.

    For ``higher`` claims: MIoU and every metric the paper states a figure
    for, as differences setting − other in points (``paper`` NaN where it
    states none); ``holds`` is ``yes`` where the measured difference is
    positive. For ``best``/``worst``: MIoU (and any stated metric) of the
    setting itself in %, ``holds`` on the MIoU row only (the claim's check).
    ``not checked`` where a setting compared has no finished run.
    """
    rows = []
    for check in checks:
        claim = check.claim
        metrics = ["MIoU", *(m for m in claim.stated if m != "MIoU")]
        for metric in metrics:
            measured = _measured(table, "miou" if metric == "MIoU" else metric)
            if claim.kind == "higher":
                a, b = measured.get(claim.setting), measured.get(claim.other)
                value = a - b if a is not None and b is not None else math.nan
                quantity = "difference (points)"
                holds = None if math.isnan(value) else bool(value > 0)
            else:
                value = measured.get(claim.setting, math.nan)
                quantity = "value (%)"
                holds = check.holds if metric == "MIoU" else ""
            rows.append({"claim": claim.describe(), "metric": metric, "quantity": quantity,
                         "paper": claim.stated.get(metric, math.nan), "measured": value,
                         "holds": _HOLDS.get(holds, holds)})
    return pd.DataFrame(rows, columns=["claim", "metric", "quantity", "paper", "measured",
                                       "holds"])


# --------------------------------------------------------------------------- #
# The plot, the contrastive loss's cost, the record


def miou_figure(table: pd.DataFrame, ablation: Ablation, runs: pd.DataFrame | None = None):
    """Test MIoU per setting: the mean with ± one std (several seeds), each
    seed's run as a dot (``runs``), and the settings the paper calls best /
    worst marked."""
    import matplotlib.pyplot as plt

    x = np.arange(len(table))
    mean = table["miou_mean"].to_numpy(float)
    spread = np.nan_to_num(table["miou_std"].to_numpy(float), nan=0.0)
    width = max(4.5, 1.1 * len(table) + 1.5)
    fig, ax = plt.subplots(figsize=(width, 3.6))
    ax.errorbar(x, mean, yerr=spread, fmt="o", ms=6, capsize=4, color="black",
                label="mean ± std over seeds")
    if runs is not None and len(runs):
        position = {s: i for i, s in enumerate(table["setting"])}
        done = runs.dropna(subset=["test_miou"])
        ax.scatter([position[s] + 0.12 for s in done["setting"]],
                   100 * done["test_miou"].astype(float), s=14, color="tab:blue", alpha=0.6,
                   label="each seed")
    for kind, marker, colour in (("best", "*", "tab:green"), ("worst", "v", "tab:red")):
        named = [list(table["setting"]).index(c.setting) for c in ablation.claims
                 if c.kind == kind and c.setting in list(table["setting"])]
        if named:
            ax.scatter(x[named] - 0.12, mean[named], marker=marker, s=90, color=colour,
                       zorder=3, label=f"paper: {kind}")
    ticks = [s if n else f"{s}\n(not run)" for s, n in zip(table["setting"], table["n_seeds"])]
    ax.set_xticks(x, ticks, rotation=20 if max(map(len, ticks), default=0) > 12 else 0,
                  ha="right" if max(map(len, ticks), default=0) > 12 else "center", fontsize=8)
    ax.set_xlim(-0.6, len(table) - 0.4)
    ax.set_ylabel("test MIoU (%)")
    ax.set_title(f"{ablation.table}: {ablation.title}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def contrastive_cost_table(path: str | Path) -> pd.DataFrame | None:
    """The output of ``benchmarks/contrastive_cost.py`` as a table (``None``
    where the file does not exist): per setting, anchors, negatives, the
    median time of the loss's forward and backward, and the peak memory above
    its inputs."""
    path = Path(path)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return pd.DataFrame([{"setting": r["label"], "anchors": r["num_anchors"],
                          "negatives": r["num_negatives"], "ms per step": r["ms"],
                          "peak MiB": r["peak_mib"]} for r in data["settings"]])


def write_record(output_dir: str | Path, ablation: Ablation, trained: Trained,
                 table: pd.DataFrame, checks: Sequence[Check], sentence: str) -> dict:
    """``record.json``: what this execution found, for tests and batch runs."""
    runs = trained.runs
    budgets = (sorted({int(s) for s in runs["steps"].dropna()}) if "steps" in runs else [])
    record = {"table": ablation.name, "grid": str(ablation.path), "settings": ablation.labels,
              "n_points": len(trained.points), "n_runs": len(runs),
              "finished_settings": [s for s, n in zip(table["setting"], table["n_seeds"]) if n],
              "reused": trained.reused, "failed": trained.failed, "step_budgets": budgets,
              "claims": [{"claim": c.claim.describe(), "holds": c.holds,
                          "margin": None if math.isnan(c.margin) else round(c.margin, 4)}
                         for c in checks],
              "direction": sentence, "runs_dir": str(trained.runs_dir)}
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / "record.json").write_text(json.dumps(record, indent=1))
    return record


__all__ = ["Ablation", "CLAIM_KINDS", "Check", "Claim", "FIXED_KEYS", "METHOD", "METRICS",
           "Setting", "Trained", "ablation_table", "check_claim", "check_claims",
           "collect_runs", "contrastive_cost_table", "direction_sentence", "display_table",
           "effects_table", "load_ablation", "miou_figure", "runs_folder", "sibling_runs",
           "train_settings", "write_record"]
