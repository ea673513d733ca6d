"""Defect measurements: crack length and width against cracks of known
geometry, areas, tables, folders and the ``semiseg quantify`` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from semiseg_helpers.cli import main as cli
from semiseg_helpers.data.readers import DataError
from semiseg_helpers.data.synthetic import reference_crack
from semiseg_helpers.quantify import (COLUMNS, chain_counts, defects_table, edge_distance,
                                      measure_crack, measure_mask, prune_spurs,
                                      quantify_folder, skeleton, skeleton_length)


@pytest.mark.parametrize("width", [1, 2, 3.5, 6, 10])
@pytest.mark.parametrize("heading_deg", [0, 20, 45, 70, 90, 135])
def test_straight_cracks_of_known_width_and_length(width, heading_deg):
    length = 110.0
    crack = reference_crack((160, 160), (80.4, 79.7), math.radians(heading_deg), length, width)
    measured_length, mean_width, max_width = measure_crack(crack)
    tip_to_tip = length + width
    assert abs(measured_length - tip_to_tip) <= 0.05 * tip_to_tip
    assert abs(mean_width - width) <= 1.0
    assert max_width >= mean_width


@pytest.mark.parametrize("curvature", [1 / 150, -1 / 80, 1 / 45])
@pytest.mark.parametrize("width", [1, 4, 8])
def test_curved_cracks_of_known_width_and_length(curvature, width):
    length = 120.0
    crack = reference_crack((200, 200), (100.2, 99.5), 0.3, length, width, curvature)
    measured_length, mean_width, _ = measure_crack(crack)
    assert abs(measured_length - (length + width)) <= 0.05 * (length + width)
    assert abs(mean_width - width) <= 1.0


def test_reference_crack_has_the_area_of_its_capsule():
    """The validation is only as good as the reference: a crack of width w
    around a centreline of length L covers L*w + pi*w^2/4 pixels."""
    for width, curvature in ((4, 0.0), (7, 1 / 60), (10, -1 / 90)):
        crack = reference_crack((220, 220), (110.5, 109.3), 1.0, 130, width, curvature)
        expected = 130 * width + math.pi * width ** 2 / 4
        assert crack.sum() == pytest.approx(expected, rel=0.02)
    with pytest.raises(ValueError, match="closes on itself"):
        reference_crack((50, 50), (25, 25), 0.0, 100, 2, 1 / 10)


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7])
def test_axis_aligned_band_width_is_its_pixel_count_odd_or_even(rows):
    band = np.zeros((20, 60), bool)
    band[5:5 + rows, 10:50] = True
    length, mean_width, max_width = measure_crack(band)
    assert mean_width == pytest.approx(rows) and max_width == pytest.approx(rows)
    # blunt ends: the skeleton stops rows / 2 short of each, and is given it back
    assert length == pytest.approx(40, rel=0.025)
    # the edge lies halfway to the background pixels: a middle row is rows / 2 px in
    assert edge_distance(band)[5 + (rows - 1) // 2, 30] == pytest.approx(rows / 2)


def test_spurs_from_a_ragged_edge_are_pruned_and_real_branches_kept():
    ragged = np.zeros((30, 80), bool)
    ragged[10:17, 10:70] = True                  # 7 px wide, 60 long
    ragged[17:19, 38:42] = True                  # 2 px bumps on both edges
    ragged[8:10, 24:27] = True
    ragged[17:19, 55:57] = True
    distance = edge_distance(ragged)
    raw = skeleton(ragged)
    pruned = prune_spurs(raw, distance)
    assert skeleton_length(raw) > skeleton_length(pruned) + 3
    assert measure_crack(ragged)[0] == pytest.approx(60, rel=0.02)
    tee = np.zeros((60, 80), bool)
    tee[10:13, 10:70] = True                     # 60 px across ...
    tee[13:50, 39:42] = True                     # ... and a 37 px branch down from it
    assert measure_crack(tee)[0] == pytest.approx(60 + 37, rel=0.02)


def test_chain_counts_and_length_of_digital_lines():
    line = np.zeros((12, 30), bool)
    line[4, 3:23] = True                        # 20 px: 19 straight links
    assert chain_counts(line) == (19, 0, 0)
    diagonal = np.eye(15, dtype=bool)           # 14 diagonal links
    assert chain_counts(diagonal) == (0, 14, 0)
    assert skeleton_length(diagonal) == pytest.approx(1.406 * 14)
    bent = np.zeros((10, 10), bool)
    bent[2, 2:6] = True                         # 3 straight links, then
    bent[3, 6] = bent[4, 7] = True              # 2 diagonal: one corner at (2, 5)
    assert chain_counts(bent) == (3, 2, 1)


def test_measure_mask_finds_every_defect_with_its_class_and_area():
    mask = np.zeros((60, 80), np.uint8)
    mask[10, 5:35] = 1                           # crack 1: 30 px straight
    for i in range(20):                          # crack 2: diagonal, 8-connected only
        mask[30 + i, 40 + i] = 1
    mask[40:50, 5:25] = 2                        # spalling: 200 px
    mask[44:46, 8:20] = 3                        # rebar inside it: 24 px
    mask[0:3, 70:80] = 255                       # ignored pixels are no defect
    mask[55, 70] = 1                             # one-pixel speckle
    defects = measure_mask(mask, "p.jpg")
    found = {(d.defect_class, d.id): d for d in defects}
    assert sorted(found) == [("crack", 1), ("crack", 2), ("crack", 3), ("rebar", 1),
                             ("spalling", 1)]
    straight, diagonal = found["crack", 1], found["crack", 2]
    # centreline links, plus the reach from each end pixel's centre to its
    # edge along the line: half a pixel straight on, half a diagonal obliquely
    assert straight.length_px == pytest.approx(0.98 * 29 + 2 * 0.5, abs=0.06)
    assert diagonal.length_px == pytest.approx(1.406 * 19 + 2 * 0.5 * 2 ** 0.5, abs=0.06)
    assert found["crack", 3].length_px == pytest.approx(1.0)   # a lone pixel
    assert straight.mean_width_px == pytest.approx(1.0)
    assert straight.box == (10, 5, 11, 35)
    assert found["spalling", 1].area_px == 200 - 24 and found["rebar", 1].area_px == 24
    assert found["spalling", 1].length_px is None
    assert [d.defect_class for d in measure_mask(mask, min_pixels=2)].count("crack") == 2


def test_table_in_pixels_and_millimetres():
    mask = np.zeros((40, 60), np.uint8)
    mask[5:8, 5:45] = 1
    mask[20:30, 10:20] = 2
    defects = measure_mask(mask, "wall.jpg")
    plain = defects_table(defects)
    assert list(plain.columns) == list(COLUMNS)
    assert plain["length_mm"].isna().all() and plain["area_mm2"].isna().all()
    scaled = defects_table(defects, mm_per_pixel=0.5).set_index("class")
    crack, spall = scaled.loc["crack"], scaled.loc["spalling"]
    assert crack["mean_width_mm"] == pytest.approx(0.5 * crack["mean_width_px"])
    assert crack["mean_width_px"] == pytest.approx(3.0)
    assert crack["length_mm"] == pytest.approx(0.5 * crack["length_px"])
    assert spall["area_mm2"] == pytest.approx(0.25 * 100) and np.isnan(spall["length_px"])
    with pytest.raises(ValueError, match="mm_per_pixel"):
        defects_table(defects, mm_per_pixel=0.0)


def _write_prediction_folder(folder, masks: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True)
    entries = {}
    for k, (photo, mask) in enumerate(masks.items()):
        Image.fromarray(mask, mode="L").save(folder / f"m{k}.png")
        entries[photo] = {"mask": f"m{k}.png"}
    entries["broken.jpg"] = {"error": "cannot read"}
    (folder / "predictions.json").write_text(json.dumps(entries))


def test_quantify_folder_reads_prediction_folders_and_labelled_masks(tmp_path):
    crack = np.zeros((30, 50), np.uint8)
    crack[10:12, 5:45] = 1
    spall = np.zeros((30, 50), np.uint8)
    spall[5:15, 5:15] = 2
    _write_prediction_folder(tmp_path / "pred", {"a.jpg": crack, "b.png": spall})
    table = quantify_folder(tmp_path / "pred")
    assert list(table["photo"]) == ["a.jpg", "b.png"]
    assert list(table["class"]) == ["crack", "spalling"]
    assert table["mean_width_px"].iloc[0] == pytest.approx(2.0)

    # ground-truth masks of the generic layout: values mapped by class name
    gt = tmp_path / "labelled"
    gt.mkdir()
    Image.fromarray(np.where(crack > 0, 200, 0).astype(np.uint8), mode="L").save(gt / "a.png")
    (gt / "classes.txt").write_text("0 background\n200 spalling\n")
    table = quantify_folder(gt)
    assert list(table["class"]) == ["spalling"] and table["area_px"].iloc[0] == 80
    (gt / "classes.txt").write_text("0 background\n100 crack\n")
    with pytest.raises(DataError, match="200"):
        quantify_folder(gt)
    # the generic layout: my_data/masks/ with my_data/classes.txt beside it
    layout = tmp_path / "my_data"
    (layout / "masks").mkdir(parents=True)
    Image.fromarray(np.where(crack > 0, 200, 0).astype(np.uint8), mode="L").save(
        layout / "masks" / "a.png")
    (layout / "classes.txt").write_text("0 background\n200 crack\n")
    assert list(quantify_folder(layout / "masks")["class"]) == ["crack"]
    assert list(quantify_folder(layout / "masks" / "a.png")["class"]) == ["crack"]
    # a prediction folder from before predictions.json named the mask files
    (tmp_path / "pred" / "predictions.json").write_text(json.dumps({"a.jpg": {"crack": 0.1}}))
    with pytest.raises(DataError, match="older"):
        quantify_folder(tmp_path / "pred")


def test_cli_quantify(tmp_path, capsys):
    mask = np.zeros((40, 60), np.uint8)
    mask[5:9, 5:45] = 1
    _write_prediction_folder(tmp_path / "pred", {"wall.jpg": mask})
    out = tmp_path / "q" / "defects.csv"
    assert cli(["quantify", "--masks", str(tmp_path / "pred"), "--out", str(out),
                "--mm-per-pixel", "0.2"]) == 0
    assert "measured 1 defects: crack 1" in capsys.readouterr().out
    row = pd.read_csv(out).iloc[0]
    assert row["photo"] == "wall.jpg" and row["mean_width_px"] == pytest.approx(4.0)
    assert row["mean_width_mm"] == pytest.approx(0.8)
    assert cli(["quantify", "--masks", str(tmp_path / "pred"), "--out", str(out),
                "--mm-per-pixel", "-1"]) == 2
    assert "mm_per_pixel" in capsys.readouterr().err
    assert cli(["quantify", "--masks", str(tmp_path / "nothing"), "--out", str(out)]) == 2
