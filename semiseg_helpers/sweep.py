"""Sweeps: a grid of runs as data, each point in its own run folder.

A grid is a mapping of parameter name to the values it takes; its points are
the cartesian product, plus any explicit extra points (DeepLabv3+ at label
fraction 1.0 for Figure 8)::

    points = expand_grid({"method": ["deeplabv3plus", "semisegdefect"],
                          "label_fraction": [0.02, 0.05], "seed": [0, 1],
                          "semi.num_anchors": [64, 256]},
                         extra=[{"method": "deeplabv3plus", "label_fraction": 1.0}])
    report = sweep(points, "runs/table9", train_job("data/peerhub", "gpu"), jobs=2)
    table = collect("runs/table9", points)

Grid files. ``semiseg sweep --grid FILE`` and the ablation notebooks read a
grid from YAML (:func:`load_grid`): each key is an axis with its list of
values, and two keys are reserved. ``cases`` is a list of explicit settings,
each a mapping (with an optional ``label`` naming it in tables), for values
that go together rather than as a product (anchors *and* negatives; one
loss branch off at a time); every case is crossed with the axes. ``paper``
is data for whoever draws the results (what the paper states, the direction
it claims: :mod:`semiseg_helpers.ablations`) and adds no point::

    semi.temperature: [0.1, 0.5]
    cases:
      - {label: "32/64", semi.num_anchors: 32, semi.num_negatives: 64}
      - {label: "256/512", semi.num_anchors: 256, semi.num_negatives: 512}
    paper: {table: 6, title: ..., states: ..., expect: [...]}

Run folders. Each point trains into ``ROOT/<run_name(point)>``, a flat name
of ``key=value`` pairs joined by commas, the method, label fraction and seed
first and any other keys sorted after them::

    method=semisegdefect,label_fraction=0.05,seed=0,semi.num_anchors=64

Values are written as the YAML text the command line reads back
(:func:`value_text`) and percent-encoded where a character is not a letter,
digit, ``.``, ``_``, ``-`` or ``~`` (``a/b`` → ``a%2Fb``), so names are safe on
every filesystem, stable (the same point always gets the same folder,
whatever the order of its keys) and distinct exactly when the commands
differ. Only the point names a folder: settings shared by the whole sweep
(the profile, fixed overrides) belong to the root, so use a new root when
they change.

Jobs. Each point is one subprocess — a crash stays contained and several run
side by side — made by a job factory: :func:`train_job` (``semiseg train``)
or :func:`notebook_job` (``semiseg notebook``, the executed notebook kept in
the run folder as ``notebook.ipynb``). Its output goes to ``train.log`` in
the run folder, and the point itself to ``point.json``.

Resuming. A point whose folder holds ``summary.json`` is finished and
skipped; any other is started, which resumes an interrupted run from its
checkpoint (:func:`~semiseg_helpers.train.train` does that). A point that
another sweep already ran, under another name or root (the default setting
of every ablation table, Table 9's own runs), is reused by configuration, not
by name: :func:`reuse_finished` copies a finished run of the same resolved
configuration and data set into the point's folder before the sweep. A
point that fails writes ``error.txt`` (command, return code, the end of its
log), is reported and does not stop the others; the next sweep tries it again.

A folder is what its ``config.json`` says, not what its name says: before
anything runs, every point folder that holds a run (finished or not) is
checked against the configuration the point would train with now, where the
job factory can tell it (:func:`train_job` can), and a sweep whose root holds
runs of other settings stops with the folders and keys that differ.

Sweeps side by side. Training locks its run folder
(:meth:`~semiseg_helpers.runs.RunDir.lock`), so two sweeps over the same
root (two terminals, a second machine on a shared disk) never train one point
twice: a point another process is training when its turn comes is left to it
(``busy`` in the report, nothing written into its folder), and one that was
finished meanwhile is skipped. Two one-job sweeps thus share a list of
points as two workers would.

Clusters. Given a ``submitit`` executor (:func:`cluster_executor`: SLURM),
the unfinished points are submitted as one job array instead, each job
running the same command into the same run folder (:class:`PointJob`, which
asks to be requeued when its time runs out: the run resumes from its
checkpoint), and the sweep waits for them; interrupting it cancels them.
With ``processes > 1`` each point trains data-parallel under ``torchrun``.
The run folders must be on a file system the nodes share.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import numbers
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import quote

import yaml

from semiseg_helpers.data.prepare import dataset_fingerprint, load_manifest
from semiseg_helpers.data.readers import DataError
from semiseg_helpers.precision import cpu_cores
from semiseg_helpers.runs import (CONFIG, METRICS, RUN_IN_USE_EXIT, SUMMARY, RunDir,
                                  check_config, collect_summaries, config_differences,
                                  find_runs)

Point = dict[str, Any]
"""One point of a grid: parameter name → value. ``method``, ``label_fraction``,
``seed`` and ``profile`` are the training entry point's own options; any other
key is a dotted config override (``semi.num_anchors``) or, for a notebook
job, a notebook parameter."""

JobFactory = Callable[[Point, Path], list[str]]
"""Makes the command (argv) that runs one point into its run folder. A factory
may also have a ``config(point)`` attribute giving the resolved
:class:`~semiseg_helpers.config.TrainConfig` the point trains with; :func:`plan`
then checks the point folders that hold a run against it, and :func:`reuse_finished`
finds runs of the same configuration elsewhere (on the data set of its
``data_dir`` attribute, where it has one)."""

LEADING_KEYS = ("method", "label_fraction", "seed")
"""Keys that open a run folder's name, in this order (the rest are sorted)."""

LOG = "train.log"
ERROR = "error.txt"
POINT = "point.json"
NOTEBOOK = "notebook.ipynb"
REUSED = "reused.json"
"""Written into a run folder that :func:`reuse_finished` copied: where from, and when."""
MAX_NAME = 200
"""Longest run folder name kept whole (filesystems allow 255 bytes)."""
LOG_TAIL_LINES = 40


# --------------------------------------------------------------------------- #
# Grids and run folder names


def expand_grid(grid: Mapping[str, Sequence[Any]],
                extra: Iterable[Mapping[str, Any]] = (),
                cases: Sequence[Mapping[str, Any]] | None = None) -> list[Point]:
    """The points of ``grid`` (its cartesian product, first key slowest), each
    crossed with every one of ``cases`` (explicit settings, in their order;
    ``None``: no cases), followed by the ``extra`` points; a point equal to an
    earlier one is dropped. A case may not set a key the grid varies (which
    value would win is not the grid's to guess)."""
    for key, values in grid.items():
        if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
            raise ValueError(f"grid[{key!r}] must be a list of values, got {values!r}")
        if not values:
            raise ValueError(f"grid[{key!r}] is empty: the grid would have no points")
    if cases is None:
        cases = [{}]
    elif isinstance(cases, (str, bytes, Mapping)) or not cases:
        raise ValueError(f"cases must be a non-empty list of mappings, got {cases!r}")
    for i, case in enumerate(cases):
        if not isinstance(case, Mapping):
            raise ValueError(f"cases[{i}] must be a mapping of key: value, got {case!r}")
        if both := sorted(set(case) & set(grid)):
            raise ValueError(f"cases[{i}] sets {both}, which the grid also varies: "
                             "give each key either as an axis or in the cases")
    keys = list(grid)
    points = [{**dict(zip(keys, combo)), **case}
              for combo in itertools.product(*grid.values()) for case in cases]
    points += [dict(p) for p in extra]
    unique: dict[str, Point] = {}
    for point in points:
        unique.setdefault(run_name(point), point)
    return list(unique.values())


def value_text(value: Any) -> str:
    """``value`` as the YAML text that :func:`~semiseg_helpers.config.parse_overrides`
    and ``semiseg notebook -p`` read back as the same value.

    Floats keep their shortest exact form with a decimal point (``0.05``,
    ``1.0``, ``1.0e-05``: YAML reads ``1e-05`` as a string); a string that YAML
    would read as something else (``"1"``, ``"true"``) is quoted, and so is
    every string inside a list or mapping (``,`` and ``]`` end items there).
    """
    return _yaml_text(value, nested=False)


def _yaml_text(value: Any, nested: bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return _float_text(float(value))
    if isinstance(value, str):
        try:
            plain = not nested and yaml.safe_load(value) == value
        except yaml.YAMLError:
            plain = False
        return value if plain else json.dumps(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_yaml_text(v, True)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_text(v, True) for v in value) + "]"
    raise ValueError(f"unsupported value {value!r} ({type(value).__name__}): use numbers, "
                     "strings, booleans, null, lists or mappings")


def _float_text(x: float) -> str:
    if math.isnan(x):
        return ".nan"
    if math.isinf(x):
        return ".inf" if x > 0 else "-.inf"
    text = repr(x)
    mantissa, e, exponent = text.partition("e")
    if e and "." not in mantissa:
        text = f"{mantissa}.0e{exponent}"
    return text


def _ordered_keys(point: Mapping[str, Any]) -> list[str]:
    return ([k for k in LEADING_KEYS if k in point]
            + sorted(k for k in point if k not in LEADING_KEYS))


def run_name(point: Mapping[str, Any]) -> str:
    """The run folder name of ``point``: ``key=value`` pairs joined by commas
    (see the module docstring). Names longer than :data:`MAX_NAME` keep a
    readable start and end in a hash of the whole name."""
    if not point:
        raise ValueError("a grid point needs at least one parameter")
    name = ",".join(f"{quote(str(k), safe='')}={quote(value_text(point[k]), safe='')}"
                    for k in _ordered_keys(point))
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:12]
        name = f"{name[:MAX_NAME - 13]}~{digest}"
    return name


def run_dir_of(root: str | Path, point: Mapping[str, Any]) -> Path:
    """Where ``point`` trains under the sweep's ``root``."""
    return Path(root) / run_name(point)


GRID_RESERVED = ("cases", "paper")
"""Keys of a grid file that are not axes (see the module docstring)."""
CASE_LABEL = "label"
"""A case's optional display name; not part of its point."""

_EXPONENT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
"""Numbers that YAML 1.1 reads as strings unless they have a dot and a signed exponent."""


@dataclass(frozen=True)
class Grid:
    """A grid file as data: its axes, its explicit cases and its ``paper`` entry."""

    axes: dict[str, list[Any]] = field(default_factory=dict)
    cases: tuple[Point, ...] | None = None
    """The explicit settings crossed with the axes (``None``: the file has none)."""
    labels: tuple[str | None, ...] = ()
    """Each case's ``label`` (``None`` where it has none), in the cases' order."""
    paper: dict[str, Any] = field(default_factory=dict)
    """What the file says about the paper, for the notebooks; no point depends on it."""
    path: Path | None = None

    def points(self, extra: Iterable[Mapping[str, Any]] = ()) -> list[Point]:
        """The axes' product crossed with the cases, then ``extra`` (:func:`expand_grid`)."""
        return expand_grid(self.axes, extra, cases=self.cases)


def _check_value(value: Any, where: str) -> None:
    """A value a point can carry; a string that YAML 1.1 did not read as the
    number it looks like (``1e-3``: YAML wants ``1.0e-3``) is refused here
    rather than by every run of the sweep."""
    if isinstance(value, str) and _EXPONENT_TEXT.fullmatch(value.strip()):
        raise ValueError(f"{where}: {value!r} was read as a string, not a number (YAML needs "
                         "a decimal point before an exponent: write 1.0e-3 or 0.001)")
    try:
        value_text(value)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file (see the module docstring): a mapping of
    axis → non-empty list of values, plus the reserved ``cases`` (a
    non-empty list of mappings, each with an optional ``label`` string,
    no two alike, none setting an axis's key) and ``paper`` (a mapping).
    Every error names the file and the key at fault."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a mapping of key: [values] (and optionally "
                         f"{', '.join(GRID_RESERVED)}), got {data!r}")
    axes: dict[str, list[Any]] = {}
    for key, values in data.items():
        if not isinstance(key, str):
            raise ValueError(f"{path}: key {key!r} is not a string")
        if key in GRID_RESERVED:
            continue
        if isinstance(values, (str, bytes, dict)) or not isinstance(values, list) or not values:
            raise ValueError(f"{path}: {key}: expected a non-empty list of values, got {values!r}")
        for i, value in enumerate(values):
            _check_value(value, f"{path}: {key}[{i}]")
        axes[key] = list(values)
    paper = data.get("paper", {})
    if not isinstance(paper, dict):
        raise ValueError(f"{path}: paper: expected a mapping, got {paper!r}")
    if "cases" not in data:
        return Grid(axes, None, (), paper, path)
    raw = data["cases"]
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{path}: cases: expected a non-empty list of mappings, got {raw!r}")
    cases, labels, seen = [], [], {}
    for i, case in enumerate(raw):
        where = f"{path}: cases[{i}]"
        if not isinstance(case, dict):
            raise ValueError(f"{where}: expected a mapping of key: value, got {case!r}")
        case = dict(case)
        label = case.pop(CASE_LABEL, None)
        if label is not None and (not isinstance(label, str) or not label.strip()):
            raise ValueError(f"{where}.{CASE_LABEL}: expected a non-empty string, got {label!r}")
        for key, value in case.items():
            if not isinstance(key, str) or key in GRID_RESERVED:
                raise ValueError(f"{where}: {key!r} cannot be a key of a case")
            if key in axes:
                raise ValueError(f"{where}.{key}: also an axis of the grid; give it either "
                                 "as an axis or in the cases")
            _check_value(value, f"{where}.{key}")
        same = json.dumps({k: value_text(v) for k, v in sorted(case.items())})
        if same in seen:
            raise ValueError(f"{where}: the same settings as cases[{seen[same]}]")
        seen[same] = i
        if label is not None and label in labels:
            raise ValueError(f"{where}.{CASE_LABEL}: {label!r} names cases[{labels.index(label)}] "
                             "already")
        cases.append(case)
        labels.append(label)
    return Grid(axes, tuple(cases), tuple(labels), paper, path)


# --------------------------------------------------------------------------- #
# Job factories


def _cli(*args: str) -> list[str]:
    """``semiseg ARGS`` with this interpreter (the console script may not be on PATH)."""
    return [sys.executable, "-m", "semiseg_helpers.cli", *args]


def train_job(data_dir: str | Path, profile: str = "smoke",
              overrides: Mapping[str, Any] | None = None) -> JobFactory:
    """Points run as ``semiseg train`` on ``data_dir`` at ``profile``, with the
    fixed ``overrides`` under each point's own values."""
    data_dir = Path(data_dir).resolve()
    flags = {"method": "--method", "label_fraction": "--label-fraction", "seed": "--seed",
             "profile": "--profile"}

    def command(point: Point, run_dir: Path) -> list[str]:
        params = {"profile": profile, **(overrides or {}), **point}
        argv = _cli("train", "--data", str(data_dir), "--out", str(run_dir), "--quiet")
        for key, flag in flags.items():
            if key in params:
                argv += [flag, value_text(params.pop(key))]
        return argv + [f"{k}={value_text(v)}" for k, v in params.items()]

    def config(point: Point):
        """The configuration ``semiseg train`` builds from ``command(point)``'s
        arguments (parsed by the command line's own parser)."""
        from semiseg_helpers.cli import build_parser
        from semiseg_helpers.config import make_config, parse_overrides
        from semiseg_helpers.methods import resolve_method_config

        args, unknown = build_parser().parse_known_args(command(point, Path("run"))[3:])
        overrides = list(args.overrides or []) + [u for u in unknown if "=" in u]
        return resolve_method_config(make_config(
            args.profile, parse_overrides(overrides), method=args.method,
            label_fraction=args.label_fraction, seed=args.seed))

    command.config = config
    command.data_dir = data_dir
    return command


def notebook_job(notebook: str | Path, data_dir: str | Path, profile: str = "smoke",
                 overrides: Mapping[str, Any] | None = None) -> JobFactory:
    """Points run as a notebook executed by papermill into ``RUN_DIR/notebook.ipynb``.

    The notebook gets ``profile``, ``data_dir``, ``output_dir`` (and ``run_dir``
    if it declares one) set to the run folder; a point's keys that are notebook
    parameters are passed as such, the others (dotted config keys) are merged
    into its ``overrides`` parameter. The notebook must leave ``summary.json``
    in the run folder for the point to count as done.
    """
    from semiseg_helpers.notebooks import notebook_parameters

    notebook = Path(notebook).resolve()
    declared = notebook_parameters(notebook)
    data_dir = Path(data_dir).resolve()

    def command(point: Point, run_dir: Path) -> list[str]:
        params: dict[str, Any] = {"profile": profile, "data_dir": str(data_dir),
                                  "output_dir": str(run_dir)}
        if "run_dir" in declared:
            params["run_dir"] = str(run_dir)
        config = {**(overrides or {}), **{k: v for k, v in point.items() if k not in declared}}
        params.update({k: v for k, v in point.items() if k in declared})
        if config:
            if "overrides" not in declared:
                raise ValueError(f"{notebook.name} has no parameter(s) {sorted(config)} "
                                 "and no `overrides` parameter to pass them in")
            params["overrides"] = {**(params.get("overrides") or {}), **config}
        argv = _cli("notebook", str(notebook), "--executed", str(run_dir / NOTEBOOK))
        for key, value in params.items():
            argv += ["-p", key, value_text(value)]
        return argv

    return command


# --------------------------------------------------------------------------- #
# Planning and running


@dataclass(frozen=True)
class Job:
    """One point to run: its folder, its command and extra environment."""

    point: Point
    run_dir: Path
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class SweepReport:
    """What a sweep did, by run folder."""

    root: Path
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    """Finished before this sweep (``summary.json`` present), or by another
    process before their turn came."""
    failed: list[Path] = field(default_factory=list)
    """Each holds ``error.txt``; the next sweep retries them."""
    busy: list[Path] = field(default_factory=list)
    """Being trained by another process when their turn came: left to it."""

    @property
    def total(self) -> int:
        return len(self.done) + len(self.skipped) + len(self.failed) + len(self.busy)

    def __str__(self) -> str:
        lines = [f"{self.total} points under {self.root}: {len(self.done)} done, "
                 f"{len(self.skipped)} finished before, {len(self.failed)} failed"
                 + (f", {len(self.busy)} trained by another process" if self.busy else "")]
        lines += [f"  failed: {p.name} (see {p / ERROR})" for p in self.failed]
        lines += [f"  another process trains: {p.name}" for p in self.busy]
        return "\n".join(lines)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def plan(points: Sequence[Point], root: str | Path, job: JobFactory, *, jobs: int = 1,
         gpus: Sequence[str] | None = None) -> tuple[list[Job], list[Path]]:
    """The jobs to run and the run folders to skip (already finished).

    On CPU with ``jobs > 1`` each job gets ``threads = cores // jobs`` (as a
    config override and ``OMP_NUM_THREADS``) unless its point sets ``threads``.
    Threads are not part of a run's identity, so an interrupted run resumes
    whatever ``jobs`` the new sweep uses.

    Where ``job`` has a ``config(point)`` (see :data:`JobFactory`), a point
    folder holding a run (finished or not) of another configuration is a
    ``ValueError`` naming every such folder and the keys that differ.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    root = Path(root)
    gpus = visible_gpus() if gpus is None else list(gpus)
    threads = max(1, cpu_cores() // jobs)
    config_of = getattr(job, "config", None)
    todo, skipped, mismatched = [], [], []
    for point in points:
        run_dir = run_dir_of(root, point).resolve()
        if config_of is not None and (RunDir(run_dir).config.is_file()
                                      or RunDir(run_dir).finished):
            try:
                check_config(RunDir(run_dir), config_of(point))
            except ValueError as exc:
                mismatched.append(str(exc))
                continue
        if RunDir(run_dir).finished:
            skipped.append(run_dir)
            continue
        params, env = dict(point), {}
        if "threads" not in point and not gpus and jobs > 1:
            params["threads"] = threads
        if isinstance(params.get("threads"), int):
            env["OMP_NUM_THREADS"] = str(params["threads"])
        todo.append(Job(dict(point), run_dir, job(params, run_dir), env))
    if mismatched:
        raise ValueError(f"{root}: {len(mismatched)} point folder(s) hold runs of other "
                         "settings than this sweep asks (use a new root, or delete them):\n"
                         + "\n".join(mismatched))
    return todo, skipped


def _finished_runs(sources: Iterable[str | Path]) -> list[tuple[RunDir, dict, dict]]:
    """Every finished run under ``sources`` that records its configuration, with
    that configuration and its summary, in the order given (then by path)."""
    found, seen = [], set()
    for source in sources:
        source = Path(source)
        if not source.is_dir():
            raise FileNotFoundError(f"{source}: no such folder of runs to reuse")
        for run in find_runs(source):
            key = run.path.resolve()
            if key in seen or not run.config.is_file() or run.path.name.startswith("."):
                continue
            seen.add(key)
            found.append((run, run.read_config(), run.read_summary()))
    return found


def _same_run(recorded: dict, summary: dict, asked, data: _Data | None) -> bool:
    """Whether a recorded run is the run ``asked`` would train: the same resolved
    configuration (:func:`~semiseg_helpers.runs.config_differences`, where
    threads and other runtime keys do not count) on the same prepared data set
    (the configuration does not name it; the summary does)."""
    fraction = recorded.get("label_fraction")
    if ((recorded.get("method"), recorded.get("seed")) != (asked.method, asked.seed)
            or not isinstance(fraction, (int, float))
            or not math.isclose(fraction, asked.label_fraction)):
        return False                      # the cheap keys first: most candidates stop here
    if data is not None and not data.trained(summary):
        return False
    try:
        return not config_differences(recorded, asked)
    except ValueError:                    # a config of an older version: not the same run
        return False


@dataclass(frozen=True)
class _Data:
    """The prepared data set a sweep trains on, as finished runs' summaries
    name it: by its fingerprint (:func:`~semiseg_helpers.data.prepare.dataset_fingerprint`,
    the same on any machine or checkout path), or, for runs recorded before
    summaries had one, by the folder's path."""

    path: Path
    fingerprint: str | None

    @classmethod
    def of(cls, data_dir: Path) -> _Data:
        try:
            fingerprint = dataset_fingerprint(load_manifest(data_dir))
        except DataError:                 # not prepared (yet): only the path can match
            fingerprint = None
        return cls(data_dir.resolve(), fingerprint)

    def trained(self, summary: dict) -> bool:
        """Whether the run this summary closes was trained on this data set."""
        recorded = summary.get("dataset_fingerprint")
        if recorded is not None and self.fingerprint is not None:
            return recorded == self.fingerprint
        dataset = summary.get("dataset")
        return dataset is not None and Path(dataset).resolve() == self.path


def _copy_run(source: RunDir, target: Path, point: Point) -> None:
    """The finished run's record (config, metrics, summary) into ``target``,
    whole or not at all: built in a hidden folder beside it (this process's
    own: another sweep may copy the same run at the same time), then renamed."""
    tmp = target.with_name(f".{target.name}.reusing-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in (CONFIG, METRICS):
        if (source.path / name).is_file():
            shutil.copy2(source.path / name, tmp / name)
    (tmp / POINT).write_text(json.dumps(point, indent=1))
    # where from, relative to the point's own folder: the record stays true in
    # any clone of the repository, not only on the machine that copied it
    origin = os.path.relpath(source.path.resolve(), target.resolve())
    (tmp / REUSED).write_text(json.dumps({"from": Path(origin).as_posix(),
                                          "copied": time.strftime("%Y-%m-%d %H:%M:%S")},
                                         indent=1))
    shutil.copy2(source.summary, tmp / SUMMARY)   # last: the folder is a run once it has it
    try:
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():
            raise
        # the point's folder appeared meanwhile (another sweep's copy or run): keep it


def reuse_finished(points: Sequence[Point], root: str | Path, job: JobFactory,
                   sources: Iterable[str | Path], *, dry_run: bool = False,
                   say: Callable[[str], Any] | None = print) -> list[tuple[Path, Path]]:
    """Reuse finished runs for the points that have no folder under ``root`` yet.

    For each such point, the first finished run under ``sources`` (folders
    searched recursively, in the order given) whose recorded configuration is
    the one the point would train with (``job.config(point)``: the
    configuration decides, not the folder's name) on the same data set
    (``job.data_dir``: the fingerprint the run's summary records, wherever
    either folder lies; the same folder for runs recorded without one) has its
    ``config.json``, ``metrics.jsonl`` and ``summary.json`` copied into the
    point's folder, with ``point.json`` and ``reused.json`` (where from, as a
    path relative to the point's folder), so
    that the sweep finds the point finished. Copies are atomic. Folders that
    exist are left to the sweep (it resumes or checks them). Returns the
    (source, point folder) pairs; ``dry_run`` only finds them. ``say`` reports
    each (``None``: silent).
    """
    config_of = getattr(job, "config", None)
    if config_of is None:
        raise ValueError("reusing finished runs needs a job that can tell a point's "
                         "configuration (train_job), to compare it with theirs")
    data_dir = getattr(job, "data_dir", None)
    data = _Data.of(Path(data_dir)) if data_dir is not None else None
    candidates = _finished_runs(sources)
    root = Path(root)
    pairs = []
    for point in points:
        target = run_dir_of(root, point)
        if target.exists() or not candidates:
            continue
        asked = config_of(point)
        source = next((run for run, recorded, summary in candidates
                       if _same_run(recorded, summary, asked, data)), None)
        if source is None:
            continue
        if not dry_run:
            _copy_run(source, target, point)
        pairs.append((source.path, target))
        if say is not None:
            say(f"{'would reuse' if dry_run else 'reused'} {source.path} as {target.name} "
                "(same configuration and data)")
    return pairs


class _Runner:
    """Runs jobs as subprocesses; stops the ones still running if interrupted."""

    def __init__(self, gpus: Sequence[str], jobs: int):
        self.live: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False
        self.slots: queue.Queue[str | None] = queue.Queue()
        pinned = len(gpus) > 1
        for i in range(jobs):  # round-robin: GPU k serves slots k, k + n, ...
            self.slots.put(gpus[i % len(gpus)] if pinned else None)

    def run(self, job: Job) -> tuple[int | None, float]:
        """Run ``job`` in its folder; returns (return code, seconds). A job
        whose folder another process holds (:attr:`RunDir.in_use`) is not
        started and returns :data:`~semiseg_helpers.runs.RUN_IN_USE_EXIT`; one
        finished meanwhile (by another sweep) is not started and returns
        ``None``. Neither writes into the folder."""
        gpu = self.slots.get()
        try:
            env = {**os.environ, **job.env}
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
            return self._run(job, env, gpu)
        finally:
            self.slots.put(gpu)

    def _run(self, job: Job, env: dict[str, str], gpu: str | None) -> tuple[int | None, float]:
        run_dir = job.run_dir
        if RunDir(run_dir).in_use:
            return RUN_IN_USE_EXIT, 0.0
        if RunDir(run_dir).finished:
            return None, 0.0
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / POINT).write_text(json.dumps(job.point, indent=1))
        log = run_dir / LOG
        start = log.stat().st_size if log.is_file() else 0
        started = time.time()
        with log.open("a") as f:
            pin = f" (CUDA_VISIBLE_DEVICES={gpu})" if gpu is not None else ""
            f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} started{pin}: "
                    f"{shlex.join(job.command)}\n")
            f.flush()
            rc = self._wait(job, env, f)
            seconds = time.time() - started
            f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} exited {rc} "
                    f"after {seconds:.1f} s\n")
        error = run_dir / ERROR
        if rc == 0 and RunDir(run_dir).finished:
            error.unlink(missing_ok=True)
        elif rc != RUN_IN_USE_EXIT:   # lost the race to another process: its run, not a failure
            _write_error(job, rc, log, start)
        return rc, seconds

    def _wait(self, job: Job, env: dict[str, str], log) -> int:
        """Start ``job.command`` writing to ``log`` and wait for it; a command
        that cannot start at all (missing executable) is a failed point too."""
        with self.lock:  # no new process once stop() has run
            if self.stopping:
                raise InterruptedError(f"sweep stopped before {job.run_dir.name} started")
            try:
                proc = subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env)
            except OSError as exc:
                log.write(f"cannot start the command: {exc}\n")
                return 127
            self.live.add(proc)
        try:
            return proc.wait()
        finally:
            with self.lock:
                self.live.discard(proc)

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            for proc in self.live:
                proc.terminate()


def _write_error(job: Job, rc: int, log: Path, start: int) -> None:
    with log.open("rb") as f:
        f.seek(start)
        lines = f.read().decode(errors="replace").splitlines()
    why = "exited 0 but left no summary.json" if rc == 0 else f"return code {rc}"
    text = (f"command: {shlex.join(job.command)}\n{why}\n"
            f"--- last {LOG_TAIL_LINES} lines of {LOG} ---\n"
            + "\n".join(lines[-LOG_TAIL_LINES:]) + "\n")
    (job.run_dir / ERROR).write_text(text)


def sweep(points: Sequence[Point], root: str | Path, job: JobFactory, *, jobs: int = 1,
          gpus: Sequence[str] | None = None, progress: bool = True, executor=None,
          processes: int = 1, poll_s: float = 10.0) -> SweepReport:
    """Run every unfinished point of ``points`` under ``root``, ``jobs`` at a time.

    Finished points are skipped, failed ones reported (``error.txt``) without
    stopping the others. With several GPUs visible (``gpus``, default: what
    ``CUDA_VISIBLE_DEVICES``/torch show) each job is pinned to one of them,
    round-robin. Interrupting the sweep (Ctrl-C or SIGTERM) terminates the running
    jobs; the next sweep resumes them from their checkpoints.

    With a ``submitit`` ``executor`` the points are submitted to it instead
    (``jobs`` and ``gpus`` then do not apply), ``processes`` per point
    (``torchrun``; :func:`with_processes`), and their states polled every ``poll_s``.
    """
    root = Path(root)
    if executor is not None:
        todo, skipped = plan(points, root, job, jobs=1, gpus=[])
        todo = [with_processes(j, processes) for j in todo]
        return _submit(todo, SweepReport(root.resolve(), skipped=skipped), executor, poll_s,
                       print if progress else (lambda *a, **k: None))
    gpus = visible_gpus() if gpus is None else list(gpus)
    todo, skipped = plan(points, root, job, jobs=jobs, gpus=gpus)
    report = SweepReport(root.resolve(), skipped=skipped)
    say = print if progress else (lambda *a, **k: None)
    total = len(todo) + len(skipped)
    say(f"sweep: {total} points, {len(skipped)} finished before, running {len(todo)} "
        f"({jobs} at a time) under {root}", flush=True)
    runner = _Runner(gpus, jobs)
    with _sigterm_interrupts(), ThreadPoolExecutor(max_workers=jobs) as pool:
        pending = {pool.submit(runner.run, j): j for j in todo}
        try:
            while pending:
                # a timed wait, so an interrupt is seen within a second
                finished, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in finished:
                    j = pending.pop(future)
                    rc, seconds = future.result()
                    _record(report, j, rc, total, say, f" in {seconds:.0f} s",
                            started=rc is not None)
        except BaseException:
            for future in pending:
                future.cancel()
            runner.stop()
            raise
    return report


@contextmanager
def _sigterm_interrupts():
    """Make SIGTERM (``kill``, a scheduler's or a session's end) interrupt the
    sweep as Ctrl-C does. By default it ends the process at once, skipping the
    clean-up that terminates the running jobs, which would train on as orphans.
    Signal handlers can only be set from the main thread; elsewhere this does
    nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _record(report: SweepReport, job: Job, rc: int | None, total: int, say,
            detail: str = "", started: bool = True) -> None:
    """File a job as done (exit 0 and a summary), busy (another process holds
    its folder), skipped (not ``started``: finished meanwhile by another
    process) or failed, and say so."""
    if not started:
        report.skipped.append(job.run_dir)
        status, detail = "finished meanwhile by another process", ""
    elif rc == RUN_IN_USE_EXIT:
        report.busy.append(job.run_dir)
        status, detail = "being trained by another process, left to it", ""
    elif rc == 0 and RunDir(job.run_dir).finished:
        report.done.append(job.run_dir)
        status = "done"
    else:
        report.failed.append(job.run_dir)
        status = f"FAILED (see {job.run_dir / ERROR})"
    say(f"[{report.total}/{total}, {len(report.failed)} failed] {job.run_dir.name}: "
        f"{status}{detail}", flush=True)


# --------------------------------------------------------------------------- #
# Clusters (submitit)

GENERIC_OPTIONS = frozenset({"name", "timeout_min", "mem_gb", "nodes", "cpus_per_task",
                             "gpus_per_node", "tasks_per_node", "stderr_to_stdout"})
"""submitit's options for any cluster; any other option is the cluster's own
(SLURM: ``partition``, ``account``, ``qos``, ``constraint``, ``array_parallelism`` ...)."""


def cluster_executor(folder: str | Path, options: Mapping[str, Any]):
    """A submitit executor for SLURM with ``options`` (``partition=gpu``,
    ``timeout_min=600``, ``gpus_per_node=1`` ...; see :data:`GENERIC_OPTIONS`),
    its job logs under ``folder/<job id>``. ``cluster=local`` runs the jobs on
    this machine through submitit instead (to try a sweep out; the SLURM
    options are then checked but unused). One task per point: ``nodes`` and
    ``tasks_per_node`` other than 1 are refused."""
    import submitit

    options = dict(options)
    cluster = options.pop("cluster", "slurm")
    for key in ("nodes", "tasks_per_node"):
        if options.get(key, 1) != 1:
            raise ValueError(f"{key}={options[key]}: a point is one task on one node (more "
                             "GPUs for one point: gpus_per_node)")
    executor = submitit.AutoExecutor(folder=Path(folder) / "%j", cluster=cluster)
    try:
        executor.update_parameters(**{
            k if k in GENERIC_OPTIONS or k.startswith("slurm_") else f"slurm_{k}": v
            for k, v in options.items()})
    except (NameError, AssertionError) as exc:   # submitit's words for a bad option
        raise ValueError(f"cluster options {options}: {exc}") from None
    return executor


def with_processes(job: Job, processes: int) -> Job:
    """``job`` training data-parallel over ``processes`` GPUs of its node:
    a ``semiseg train`` command run through ``torchrun`` (any other as it is)."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    command = job.command
    if processes == 1 or command[1:4] != ["-m", "semiseg_helpers.cli", "train"]:
        return job
    return Job(job.point, job.run_dir,
               [command[0], "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", str(processes), *command[1:]], job.env)


class PointJob:
    """What a cluster job runs: one point's command in its run folder, with
    ``point.json``, ``train.log`` and ``error.txt`` as a local sweep writes
    them; the job's own GPUs (no pinning). Returns the command's return code.
    Asked to checkpoint (time limit, preemption), it requeues itself: the run
    resumes from its last checkpoint."""

    def __init__(self, job: Job):
        self.job = job

    def __call__(self) -> int:
        rc, _ = _Runner([], 1).run(self.job)
        return 0 if rc is None else rc   # None: finished meanwhile, nothing left to do

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(PointJob(self.job))


def _submit(todo: list[Job], report: SweepReport, executor, poll_s: float, say) -> SweepReport:
    """Submit ``todo`` (one job array) and wait, filling ``report``."""
    import submitit

    total = len(todo) + len(report.skipped)
    say(f"sweep: {total} points, {len(report.skipped)} finished before, submitting "
        f"{len(todo)} under {report.root}", flush=True)
    if not todo:
        return report
    with executor.batch():
        submitted = [executor.submit(PointJob(j)) for j in todo]
    say("submitted: " + ", ".join(f"{s.job_id} {j.run_dir.name}" for s, j in zip(submitted, todo)),
        flush=True)
    of = {id(s): j for s, j in zip(submitted, todo)}
    try:
        for done in submitit.helpers.as_completed(submitted, poll_frequency=poll_s):
            j = of[id(done)]
            try:
                rc = done.result()
            except Exception as exc:   # the job itself failed: killed, cancelled, node lost
                rc = None
                (j.run_dir / ERROR).write_text(
                    f"command: {shlex.join(j.command)}\ncluster job {done.job_id} failed: "
                    f"{exc}\n(its logs: {done.paths.stdout}, {done.paths.stderr})\n")
            _record(report, j, rc, total, say, f" (job {done.job_id})")
    except BaseException:
        for s in submitted:
            if not s.done():
                s.cancel(check=False)
        raise
    return report


def collect(root: str | Path, points: Sequence[Point] | None = None):
    """One row per finished run under ``root`` (of ``points`` only, if given):
    :func:`~semiseg_helpers.runs.collect_summaries`'s table plus a column for
    each grid parameter it lacks (e.g. ``semi.num_anchors``), from ``point.json``."""
    import pandas as pd

    root = Path(root)
    if points is None:
        runs = find_runs(root)
    else:
        runs = [r for r in (RunDir(run_dir_of(root, p)) for p in points) if r.finished]
    table = collect_summaries(runs)
    extra = []
    for run in runs:
        path = run.path / POINT
        point = json.loads(path.read_text()) if path.is_file() else {}
        extra.append({k: v for k, v in point.items() if k not in table.columns})
    if any(extra):
        table = pd.concat([table, pd.DataFrame(extra, index=table.index)], axis=1)
    return table


__all__ = ["GRID_RESERVED", "Grid", "Job", "JobFactory", "Point", "PointJob", "SweepReport",
           "cluster_executor", "collect", "cpu_cores", "expand_grid", "load_grid",
           "notebook_job", "plan", "reuse_finished", "run_dir_of", "run_name", "sweep",
           "train_job", "value_text", "visible_gpus", "with_processes"]
