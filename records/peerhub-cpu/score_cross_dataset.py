"""Cross-dataset check of Table 9 (issue 11): score finished runs, without
retraining, on DeepCrack's test split (crack) and on mdmcs_mini (crack and
spalling; its exposed rebar left out), each score written into the run folder
as ``cross_dataset/<dataset>.json`` (see
:func:`semiseg_helpers.comparison.score_cross_dataset`).

Runs need their weights (``checkpoints/best.pt``, or a model of record's
``model.safetensors``); sweeps' runs of record keep neither: run this in the
session that trained them (``run_table9_full.sh`` does,
after each fraction's seed-0 runs). Runs already scored are skipped. The two
evaluation sets are prepared on first use, whole photos, every image in the
test split::

    python records/peerhub-cpu/score_cross_dataset.py --root records/peerhub-cpu/table9 \\
        --fractions 0.05 0.2 --seed 0
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import semiseg_helpers  # noqa: F401  (first: makes torchvision importable)
from semiseg_helpers.comparison import score_cross_dataset
from semiseg_helpers.data.prepare import prepare_dataset
from semiseg_helpers.runs import find_runs

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
WHOLE = 4096
"""Tile size larger than any photo of the two sets: each is scored whole."""


def evaluation_sets(data: Path) -> dict[str, Path]:
    """``{name: prepared folder}``, preparing what is missing (evaluation-only)."""
    sets = {"deepcrack": data / "deepcrack-test", "mdmcs_mini": data / "mdmcs-mini-eval"}
    if not sets["deepcrack"].is_dir():
        # DeepCrack's own test split only: its reader takes whichever of the
        # train/test folder pairs exist, so give it the test pair alone.
        with tempfile.TemporaryDirectory() as tmp:
            for sub in ("test_img", "test_lab"):
                (Path(tmp) / sub).symlink_to(SHARED / "deepcrack" / sub)
            prepare_dataset("deepcrack", sets["deepcrack"], tmp, crop_size=WHOLE,
                            keep_defect_only=False, split_ratios=(0, 0, 1))
    if not sets["mdmcs_mini"].is_dir():
        prepare_dataset("mdmcs", sets["mdmcs_mini"], SHARED / "mdmcs_mini", crop_size=WHOLE,
                        keep_defect_only=False, split_ratios=(0, 0, 1))
    return sets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="folder of run folders")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=Path("data"),
                        help="where the evaluation sets are prepared (default: data)")
    args = parser.parse_args(argv)
    sets = evaluation_sets(args.data)
    for run in find_runs(args.root):
        s = run.read_summary()
        if s.get("seed") != args.seed or not any(
                math.isclose(float(s.get("label_fraction", -1)), f) for f in args.fractions):
            continue
        if not (run.best.is_file() or run.weights.is_file()):
            if not all((run.path / "cross_dataset" / f"{n}.json").is_file() for n in sets):
                print(f"{run.path.name}: no weights (checkpoints/best.pt), not scored",
                      file=sys.stderr)
            continue
        for name, scores in score_cross_dataset(run.path, sets).items():
            shown = ", ".join(f"{c} {100 * v:.2f}" for c, v in scores["iou"].items())
            print(f"{run.path.name} on {name}: MIoU {100 * scores['miou']:.2f} ({shown})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
