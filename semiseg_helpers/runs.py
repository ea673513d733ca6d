"""Run folders: what a training run leaves on disk, and reading it back.

::

    RUN_DIR/
      config.json          the resolved TrainConfig (what ran, exactly)
      metrics.jsonl        one JSON object per logged step / validation
      checkpoints/last.pt  everything needed to resume (models, optimiser,
                           scheduler, step, random states, best so far)
      checkpoints/best.pt  the model weights at the best validation MIoU
      summary.json         written last: method, label_fraction, seed,
                           best_step, val and test scores

A run is finished exactly when ``summary.json`` exists. Every file is written
to a temporary name and renamed, so a killed run never leaves a truncated
checkpoint or summary behind.

A run is what its folder says: asking a folder for a run, finished or not,
with a configuration other than its ``config.json`` is an error naming the
keys that differ (:func:`check_config`), never a silent return of the old
run's numbers. Only where and how fast a run executes (:data:`RUNTIME_KEYS`)
may change between the run and the asking.

One process trains a folder at a time: training holds an exclusive lock on
the folder (:meth:`RunDir.lock`), so a second ``semiseg train`` or sweep
pointed at it stops with :class:`RunInUse` (exit code
:data:`RUN_IN_USE_EXIT`) instead of writing checkpoints over the first's.
The operating system drops the lock with its process, killed or not, so a
lock never outlives its run and there is nothing to clean up. The lock is an
``flock`` on the folder itself (no lock file): a local file system, or
one whose ``flock`` reaches every machine that trains into it; where Python
has no ``fcntl`` (Windows) no lock is taken.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

try:
    import fcntl
except ImportError:  # Windows: runs are not locked
    fcntl = None

import torch

from semiseg_helpers.precision import hardware_label

SUMMARY = "summary.json"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
WEIGHTS = "model.safetensors"
"""A run's best inference weights in half precision (:func:`~semiseg_helpers.predict.export_weights`):
what a model of record commits instead of its checkpoints."""

RUNTIME_KEYS: frozenset[str] = frozenset({"threads", "device", "data.workers", "channels_last",
                                          "compile"})
"""Config keys that say where and how fast a run executes, not what it is: a
run may resume, or be asked for, with other values of these."""


RUN_IN_USE_EXIT = 75
"""Exit code of ``semiseg train`` when another process holds the run folder
(``EX_TEMPFAIL`` of sysexits.h: try again later); a sweep leaves such a
point to that process rather than counting it failed."""


class RunInUse(RuntimeError):
    """Another process is training this run folder (it holds :meth:`RunDir.lock`)."""


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class RunDir:
    """Paths and small I/O helpers of one run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / CONFIG)
    metrics = property(lambda self: self.path / METRICS)
    summary = property(lambda self: self.path / SUMMARY)
    last = property(lambda self: self.path / "checkpoints" / "last.pt")
    best = property(lambda self: self.path / "checkpoints" / "best.pt")
    weights = property(lambda self: self.path / WEIGHTS)

    def create(self) -> None:
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)

    @contextmanager
    def lock(self, wait_s: float = 1.0) -> Iterator[None]:
        """Hold the folder (created if missing) for this process while the
        block runs, or raise :class:`RunInUse` if another process still holds
        it after ``wait_s`` seconds (the short wait lets a passing
        :attr:`in_use` look go by). Held per open of the folder: a second
        ``lock`` in the same process is refused too."""
        self.path.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            yield
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise RunInUse(
                            f"{self.path}: another process is training this run (a sweep or "
                            "`semiseg train` still running); let it finish, or stop it and "
                            "start again (the run resumes from its last checkpoint)") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # closing the folder's only open by this lock releases it

    @property
    def in_use(self) -> bool:
        """Whether another process holds :meth:`lock` now (a look, not a claim:
        it may end or start right after)."""
        if fcntl is None or not self.path.is_dir():
            return False
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    @property
    def finished(self) -> bool:
        return self.summary.is_file()

    def log(self, record: dict) -> None:
        """Append one JSON line to the metrics log."""
        with self.metrics.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_log(self, after_step: int) -> None:
        """Drop log lines past ``after_step`` (a resumed run re-logs them)."""
        if not self.metrics.is_file():
            return
        keep = [line for line in self.metrics.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= after_step]
        atomic_write_text(self.metrics, "".join(line + "\n" for line in keep))

    def read_metrics(self) -> list[dict]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def read_summary(self) -> dict:
        if not self.finished:
            raise FileNotFoundError(f"{self.path}: run has no {SUMMARY} (not finished)")
        return json.loads(self.summary.read_text())

    def read_config(self) -> dict:
        if not self.config.is_file():
            raise FileNotFoundError(f"{self.path}: not a run folder (no {CONFIG})")
        return json.loads(self.config.read_text())


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(recorded: Mapping[str, Any], asked) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (recorded value, asked value)}`` where a run folder's
    ``config.json`` (``recorded``) and the ``asked`` :class:`TrainConfig`
    differ, :data:`RUNTIME_KEYS` left out.

    ``recorded`` is read back through :func:`~semiseg_helpers.config.config_from_dict`,
    so a field added to the configuration since the run was recorded takes
    its default there: it differs only where the asked value is not the default.
    """
    from semiseg_helpers.config import config_from_dict

    old = _flatten(config_from_dict(recorded).to_dict())
    new = _flatten(asked.to_dict())
    missing = object()
    return {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
            if k not in RUNTIME_KEYS and old.get(k, missing) != new.get(k, missing)}


def check_config(run: RunDir, asked) -> None:
    """Raise ``ValueError`` if ``run`` holds a run (finished or not) whose
    recorded configuration differs from ``asked`` (resolved as the trainer
    saves it), naming each differing key with both values."""
    if not run.config.is_file():
        if run.finished:
            raise ValueError(f"{run.path}: has {SUMMARY} but no {CONFIG}: cannot tell what "
                             "ran there; use a new folder (or delete it)")
        return
    try:
        differences = config_differences(run.read_config(), asked)
    except ValueError as exc:   # e.g. a key the configuration no longer has
        raise ValueError(f"{run.path}: its {CONFIG} does not read as a configuration of "
                         f"this version ({exc}); use a new folder (or delete it)") from exc
    if differences:
        said = "; ".join(f"{k}: {old!r} there, {new!r} asked"
                         for k, (old, new) in differences.items())
        state = "a finished" if run.finished else "an unfinished"
        raise ValueError(f"{run.path}: holds {state} run with another configuration "
                         f"({len(differences)} key(s) differ: {said}); use a new folder "
                         "(or delete it)")


def find_runs(folder: str | Path) -> list[RunDir]:
    """Every finished run (a folder with ``summary.json``) under ``folder``."""
    return [RunDir(p.parent) for p in sorted(Path(folder).rglob(SUMMARY))]


def collect_summaries(folder: str | Path | Iterable[RunDir]):
    """One tidy row per finished run under ``folder``: method, label fraction,
    seed, best step, step budget, seconds, the precision they were computed
    in and the hardware they ran on (:func:`~semiseg_helpers.precision.hardware_label`),
    val/test MIoU and per-class IoU (``test_iou_crack``...), plus the run
    folder. The table every comparison is aggregated from."""
    import pandas as pd

    runs = find_runs(folder) if isinstance(folder, (str, Path)) else list(folder)
    rows = []
    for run in runs:
        s = run.read_summary()
        row = {k: s.get(k) for k in ("method", "label_fraction", "seed", "best_step", "profile",
                                     "steps", "seconds", "precision")}
        for split in ("val", "test"):
            scores = s.get(split) or {}
            row[f"{split}_miou"] = scores.get("miou")
            for c, v in (scores.get("iou") or {}).items():
                row[f"{split}_iou_{c}"] = v
        row["hardware"] = hardware_label(s.get("hardware"))
        row["run"] = str(run.path)
        rows.append(row)
    return pd.DataFrame(rows)
