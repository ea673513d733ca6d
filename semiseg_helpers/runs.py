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
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import torch

SUMMARY = "summary.json"
CONFIG = "config.json"
METRICS = "metrics.jsonl"


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

    def create(self) -> None:
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)

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


def find_runs(folder: str | Path) -> list[RunDir]:
    """Every finished run (a folder with ``summary.json``) under ``folder``."""
    return [RunDir(p.parent) for p in sorted(Path(folder).rglob(SUMMARY))]


def collect_summaries(folder: str | Path | Iterable[RunDir]):
    """One tidy row per finished run under ``folder``: method, label fraction,
    seed, best step, val/test MIoU and per-class IoU (``test_iou_crack``...),
    plus the run folder. The table every comparison is aggregated from."""
    import pandas as pd

    runs = find_runs(folder) if isinstance(folder, (str, Path)) else list(folder)
    rows = []
    for run in runs:
        s = run.read_summary()
        row = {k: s.get(k) for k in ("method", "label_fraction", "seed", "best_step", "profile",
                                     "steps", "seconds")}
        for split in ("val", "test"):
            scores = s.get(split) or {}
            row[f"{split}_miou"] = scores.get("miou")
            for c, v in (scores.get("iou") or {}).items():
                row[f"{split}_iou_{c}"] = v
        row["run"] = str(run.path)
        rows.append(row)
    return pd.DataFrame(rows)
