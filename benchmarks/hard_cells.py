"""How many crack cells a perfectly confident student still counts as "hard"
anchors, judged the old way (logits averaged over each 4x4 block) and the
current way (the least probability of the cell's own label among its pixels,
:func:`semiseg_helpers.losses.block_min_of_class`).

    python benchmarks/hard_cells.py --data data/peerhub --split train \
        --json figures/benchmarks/hard_cells.json

The student is the ground truth itself with a logit margin of 10 (p = 0.9999
on every pixel), so the right answer is "no cell is hard". Cells come from
class-priority down-sampling (a block with any crack pixel is a crack cell),
as in training; "thin" cells are those whose block is at most a quarter crack.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import semiseg_helpers  # noqa: F401  (torchvision fix first)
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from semiseg_helpers.classes import NUM_CLASSES, class_index
from semiseg_helpers.data.dataset import ManifestDataset
from semiseg_helpers.data.prepare import load_manifest, select_samples
from semiseg_helpers.losses import block_min_of_class, downsample_labels, label_class_probability
from semiseg_helpers.runs import atomic_write_text


def count(data: str, split: str, threshold: float = 0.97, margin: float = 10.0) -> dict:
    manifest = load_manifest(data)
    dataset = ManifestDataset(manifest["root"], select_samples(manifest, split))
    crack = class_index("crack")
    totals = {"crack_cells": 0, "thin_cells": 0, "hard_before": 0, "hard_after": 0,
              "thin_hard_before": 0, "thin_hard_after": 0}
    for i in tqdm(range(len(dataset)), desc="masks", mininterval=5):
        labels = dataset[i]["mask"].long()[None]
        h, w = labels.shape[-2:]
        size = (h // 4, w // 4)
        known = labels < NUM_CLASSES
        logits = margin * F.one_hot(labels.where(known, 0), NUM_CLASSES).permute(0, 3, 1, 2).float()
        low, _ = downsample_labels(labels, size)
        cells = low == crack
        share = F.adaptive_avg_pool2d((labels == crack).float()[:, None], size)[:, 0]
        thin = cells & (share <= 0.25)
        before = label_class_probability(F.adaptive_avg_pool2d(logits, size), low) < threshold
        after = block_min_of_class(label_class_probability(logits, labels), labels, low) < threshold
        totals["crack_cells"] += int(cells.sum())
        totals["thin_cells"] += int(thin.sum())
        totals["hard_before"] += int((before & cells).sum())
        totals["hard_after"] += int((after & cells).sum())
        totals["thin_hard_before"] += int((before & thin).sum())
        totals["thin_hard_after"] += int((after & thin).sum())
    return totals


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a prepared dataset folder")
    parser.add_argument("--split", default="train")
    parser.add_argument("--json", type=Path, help="also write the counts here")
    args = parser.parse_args(argv)
    totals = {"data": str(args.data), "split": args.split, **count(args.data, args.split)}
    if args.json:
        atomic_write_text(args.json, json.dumps(totals, indent=1) + "\n")
    c, t = totals["crack_cells"], totals["thin_cells"]
    print(f"crack cells: {c} ({t} thin, <= 1/4 crack)")
    for when in ("before", "after"):
        print(f"hard to a confident student, {when}: {totals['hard_' + when]} "
              f"({totals['hard_' + when] / max(c, 1):.1%}); thin "
              f"{totals['thin_hard_' + when]} ({totals['thin_hard_' + when] / max(t, 1):.1%})")
    return totals


if __name__ == "__main__":
    main()
