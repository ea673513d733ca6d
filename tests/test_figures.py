"""Table and figure makers on hand-made manifests."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from semiseg_helpers import figures


def _manifest(tmp_path, masks: dict[str, np.ndarray], split="train"):
    (tmp_path / "masks").mkdir(exist_ok=True)
    samples = []
    for name, mask in masks.items():
        Image.fromarray(mask.astype(np.uint8), mode="L").save(tmp_path / "masks" / f"{name}.png")
        counts = np.bincount(mask.ravel(), minlength=256)
        samples.append({"name": name, "image": f"images/{name}.png", "mask": f"masks/{name}.png",
                        "split": split, "fractions": [],
                        "pixels": {"background": int(counts[0]), "crack": int(counts[1]),
                                   "spalling": int(counts[2]), "rebar": int(counts[3]),
                                   "ignore": int(counts[255])}})
    return {"root": str(tmp_path), "dataset": "toy", "samples": samples,
            "source_classes": ["background", "crack", "spalling"]}


def test_thin_crack_table_counts_blocks_kept_by_each_rule(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 1] = 1          # a 1-px crack in column 1: nearest samples columns 0 and 4
    mask[4:8, 4:8] = 2      # one whole block of spalling
    m = _manifest(tmp_path, {"a": mask})
    t = figures.thin_crack_table(m, m["samples"]).set_index("class")
    assert t.loc["crack", "blocks containing it"] == 2
    assert t.loc["crack", "nearest cells"] == 0 and t.loc["crack", "priority cells"] == 2
    assert t.loc["spalling", "nearest keeps %"] == 100 == t.loc["spalling", "priority keeps %"]


def test_table1_counts_images_and_pixel_shares(tmp_path):
    a = np.zeros((4, 4), np.uint8)
    a[0, :] = 1                       # 4 crack px of 16
    b = np.zeros((4, 4), np.uint8)
    b[:2, :2] = 2                     # 4 spalling px
    b[3, 3] = 255                     # ignored: not in the pixel shares
    m = _manifest(tmp_path, {"a": a, "b": b})
    m["samples"][1]["split"] = "test"
    t = figures.table1(m).set_index("split")
    assert t.loc["total", "images"] == 2 and t.loc["val", "images"] == 0
    assert t.loc["train", "crack images"] == 1 and t.loc["test", "crack images"] == 0
    assert t.loc["total", "crack pixel %"] == pytest.approx(100 * 4 / 31)
    assert t.loc["total", "spalling pixel %"] == pytest.approx(100 * 4 / 31)


def test_markdown_table_aligns_numbers_right():
    md = figures.markdown_table(pd.DataFrame({"method": ["a"], "miou": [0.5]}), ".1f")
    assert md.splitlines()[1] == "|---|---:|"
    assert md.splitlines()[2] == "| a | 0.5 |"


def test_runs_table_and_figure7_with_other_runs():
    summary = {"method": "semisegdefect", "steps": 10, "best_step": 5,
               "val": {"miou": 0.5, "iou": {"crack": 0.4, "spalling": 0.6}},
               "test": {"miou": 0.25, "iou": {"crack": 0.2, "spalling": 0.3}}}
    table = figures.runs_table({"a": summary, "b": {**summary, "method": "supervised"}})
    assert list(table["run"]) == ["a", "b"]
    assert table.loc[0, "test MIoU"] == pytest.approx(25.0)
    assert table.loc[0, "test crack"] == pytest.approx(20.0)
    metrics = [{"step": 5, "val_miou": 0.4}, {"step": 10, "val_miou": 0.5}]
    fig = figures.figure7(metrics, ["crack"], others={"b": metrics})
    assert len(fig.axes[0].lines) == 2  # this run's MIoU and b's (no crack series logged)
