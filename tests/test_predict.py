"""Putting a run to work on what users have: photo folders as they come
(EXIF, 16-bit, grey, RGBA, hidden and broken files, clashing names), runs
without weights, scoring labelled photos without a split, measuring.

The masks' values are checked against a network whose answer is known: it
calls a pixel crack when it is dark and spalling when it is bright (a
pixel-wise rule, so sliding windows and padding cannot blur it). A photo
read wrongly (sideways, clamped to white) or a constant prediction fails.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from PIL import Image

import semiseg_helpers.predict as predict
from semiseg_helpers.cli import main as cli
from semiseg_helpers.config import make_config
from semiseg_helpers.data.prepare import prepare_dataset, select_samples, load_manifest
from semiseg_helpers.data.readers import DataError
from semiseg_helpers.models.deeplab import SegOutput
from semiseg_helpers.predict import (evaluate_folder, evaluate_run, output_names,
                                     predict_photos)

DARK, BRIGHT = 0.35, 0.8  # the known network's thresholds on grey in [0, 1]


class DarkCrackBrightSpall(torch.nn.Module):
    """Class logits from each pixel's grey level: crack below ``DARK``,
    spalling above ``BRIGHT``, background between, never rebar."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(40.0))

    def forward(self, x: torch.Tensor, return_rep: bool = False) -> SegOutput:
        grey = x.float().mean(1)
        logits = torch.stack([torch.zeros_like(grey), self.gain * (DARK - grey),
                              self.gain * (grey - BRIGHT), torch.full_like(grey, -1e4)], 1)
        return SegOutput(logits)


def expected_mask(rgb: np.ndarray) -> np.ndarray:
    grey = rgb.astype(np.float64).mean(-1) / 255
    return np.where(grey < DARK, 1, np.where(grey > BRIGHT, 2, 0)).astype(np.uint8)


@pytest.fixture
def known_model():
    return DarkCrackBrightSpall().eval(), make_config("smoke", {"precision": "fp32"})


@pytest.fixture
def known_run(known_model, monkeypatch, tmp_path):
    """A run folder whose weights are the known network (``load_run_model`` patched)."""
    run = tmp_path / "run"
    monkeypatch.setattr(predict, "load_run_model", lambda run_dir, device="auto": known_model)
    return run


def scene(h: int = 48, w: int = 72, seed: int = 0) -> np.ndarray:
    """Mid-grey noise with a dark crack stripe, a bright spall block and a
    dark patch in one corner (so a rotation shows): RGB uint8."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(110, 150, (h, w, 3)).astype(np.uint8)
    rgb[h // 3:h // 3 + 3, 4:w - 10] = 25
    rgb[h - 20:h - 6, w - 24:w - 8] = 240
    rgb[:8, :6] = 20
    return rgb


def read_mask(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_masks_are_the_known_networks_answer(known_model, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rgb = scene(200, 300)  # larger than the smoke window (96): sliding windows
    Image.fromarray(rgb).save(photos / "wall.png")
    report = predict_photos(*known_model, photos, tmp_path / "out", progress=False)
    mask = read_mask(report.masks[0])
    np.testing.assert_array_equal(mask, expected_mask(rgb))
    assert set(np.unique(mask)) == {0, 1, 2}
    entry = json.loads((tmp_path / "out" / "predictions.json").read_text())["wall.png"]
    assert entry["mask"] == "wall.png" and entry["size"] == [200, 300]
    assert entry["class_shares"]["crack"] == pytest.approx((mask == 1).mean())
    assert (tmp_path / "out" / "wall_overlay.jpg").is_file()
    assert (tmp_path / "out" / "classes.txt").read_text().splitlines()[1] == "1 crack"


def test_exif_orientation_is_applied(known_model, tmp_path):
    rgb = scene()                                      # stored 48 x 72, dark patch top-left
    exif = Image.Exif()
    exif[0x0112] = 6                                   # "rotate 90 degrees clockwise to view"
    Image.fromarray(rgb).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    report = predict_photos(*known_model, tmp_path / "phone.jpg", tmp_path / "out",
                            progress=False)
    mask = read_mask(report.masks[0])
    upright = np.rot90(rgb, k=-1)                      # 72 x 48, dark patch top-right
    assert mask.shape == (72, 48)
    np.testing.assert_array_equal(mask, expected_mask(upright))


def _png16_rgb(path, values: np.ndarray) -> None:
    """A 48-bit RGB PNG, written by hand (PIL cannot write one)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    h, w, _ = values.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("kind", ["grey16.png", "grey16.tif", "rgb16.png", "rgb16.tif"])
def test_16_bit_photos_are_scaled_not_clamped(kind, known_model, tmp_path):
    rgb8 = scene()
    grey = rgb8.mean(-1).round().astype(np.uint8) if kind.startswith("grey") else rgb8
    values = grey.astype(np.uint16) * 257            # the same picture in 16 bits
    path = tmp_path / "in" / kind
    path.parent.mkdir()
    if kind == "rgb16.png":
        _png16_rgb(path, values)
    elif kind.endswith(".tif"):
        tifffile.imwrite(path, values)
    else:
        Image.fromarray(values).save(path)           # mode I;16
    report = predict_photos(*known_model, path, tmp_path / "out", progress=False)
    shown = grey if grey.ndim == 3 else np.repeat(grey[..., None], 3, -1)
    np.testing.assert_array_equal(read_mask(report.masks[0]), expected_mask(shown))


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK"])
def test_grey_alpha_palette_and_cmyk_photos_are_converted(mode, known_model, tmp_path):
    rgb = scene()
    image = Image.fromarray(rgb).convert(mode)
    suffix = "jpg" if mode == "CMYK" else "png"
    image.save(tmp_path / f"photo.{suffix}", **({"quality": 100} if mode == "CMYK" else {}))
    report = predict_photos(*known_model, tmp_path / f"photo.{suffix}", tmp_path / "out",
                            progress=False)
    reference = np.asarray(image.convert("RGB"))
    mask = read_mask(report.masks[0])
    np.testing.assert_array_equal(mask, expected_mask(reference))
    assert (mask == 1).sum() > 100 and (mask == 2).sum() > 100


def test_folder_with_hidden_broken_and_clashing_files(known_model, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    a_jpg, a_png = scene(seed=1), scene(seed=2)
    a_png[30:40, 10:30] = 250                          # make the two "a" photos differ
    Image.fromarray(a_jpg).save(photos / "a.jpg", quality=98)
    Image.fromarray(a_png).save(photos / "a.png")
    (photos / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork
    (photos / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.fromarray(scene(seed=3)).save(photos / "cut.png")
    (photos / "cut.png").write_bytes((photos / "cut.png").read_bytes()[:200])  # truncated
    (photos / "notes.txt").write_text("not a photo")
    report = predict_photos(*known_model, photos, tmp_path / "out", progress=False)

    assert [p.name for p in report.masks] == ["a_jpg.png", "a_png.png"]
    assert [p.name for p, _ in report.failed] == ["broken.jpg", "cut.png"]
    assert all(p.name in why for p, why in report.failed)
    jpg_mask, png_mask = (read_mask(p) for p in report.masks)
    np.testing.assert_array_equal(png_mask, expected_mask(a_png))
    assert (jpg_mask != png_mask).any()
    entries = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert set(entries) == {"a.jpg", "a.png", "broken.jpg", "cut.png"}
    assert "error" in entries["broken.jpg"] and entries["a.jpg"]["mask"] == "a_jpg.png"
    assert not list((tmp_path / "out").glob(".*")), "no temporary file left behind"


def test_output_names_never_collide():
    from pathlib import Path

    names = output_names([Path(n) for n in ("a.jpg", "a.png", "a_jpg.png", "A.JPG", "b.png",
                                            "b_mask.jpg", "c.tif")])
    # a_jpg.png would write a_jpg.png like a.jpg; A.JPG is a.jpg on a case-blind disk;
    # b_mask.jpg would write b_mask.png, b.png's colour mask
    assert names == ["a_jpg", "a_png", "a_jpg-2", "A_jpg-3", "b", "b_mask-2", "c"]
    outputs = [f"{n}{s}".lower() for n in names for s in predict.OUTPUT_SUFFIXES]
    assert len(outputs) == len(set(outputs))


def test_photos_folder_is_not_the_output_folder(known_model, tmp_path):
    Image.fromarray(scene()).save(tmp_path / "x.png")
    with pytest.raises(DataError, match="another folder"):
        predict_photos(*known_model, tmp_path, tmp_path, progress=False)


def test_cli_predict_lists_unreadable_photos_and_quantifies(known_run, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    rgb = np.full((60, 90, 3), 128, np.uint8)
    rgb[20:24, 10:80] = 20                              # a crack 4 px wide, 70 px long
    Image.fromarray(rgb).save(photos / "wall.png")
    (photos / "bad.jpg").write_bytes(b"garbage")
    out = tmp_path / "out"
    code = cli(["predict", "--run", str(known_run), "--images", str(photos), "--out", str(out),
                "--quantify", "--mm-per-pixel", "0.5"])
    captured = capsys.readouterr()
    assert code == 1
    assert "wrote 1 masks" in captured.out and "measured 1 defects: crack 1" in captured.out
    assert "skipped 1 photo(s)" in captured.err and "bad.jpg" in captured.err
    row = pd.read_csv(out / "quantities.csv").iloc[0]
    assert (row["photo"], row["class"], row["area_px"]) == ("wall.png", "crack", 4 * 70)
    assert row["mean_width_px"] == pytest.approx(4.0)
    assert row["length_px"] == pytest.approx(70, rel=0.03)
    assert row["mean_width_mm"] == pytest.approx(2.0)
    assert cli(["predict", "--run", str(known_run), "--images", str(photos / "wall.png"),
                "--out", str(tmp_path / "one")]) == 0
    assert not (tmp_path / "one" / "quantities.csv").exists()
    assert cli(["predict", "--run", str(known_run), "--images", str(photos), "--out",
                str(tmp_path / "x"), "--mm-per-pixel", "0.5"]) == 2
    assert "--quantify" in capsys.readouterr().err


def test_run_without_weights_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(make_config("smoke").to_json())
    Image.fromarray(scene()).save(tmp_path / "x.png")
    assert cli(["predict", "--run", str(run), "--images", str(tmp_path / "x.png"),
                "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no trained weights" in err and "best.pt" in err and "model.safetensors" in err
    assert not (tmp_path / "out").exists()
    assert cli(["predict", "--run", str(tmp_path / "nowhere"), "--images", str(tmp_path),
                "--out", str(tmp_path / "out")]) == 2
    assert "not a run folder" in capsys.readouterr().err


# --------------------------------------------------------------------------- #
# Scoring labelled photos


@pytest.fixture
def labelled_folder(tmp_path) -> tuple:
    """Generic layout with its own mask values (7 crack, 9 spalling, 5 ignore)
    and two photos whose true IoU under the known network is set by hand."""
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rgb = np.full((50, 80, 3), 128, np.uint8)
    rgb[10:14, 5:75] = 20                               # predicted crack: 4 x 70 = 280 px
    truth = np.zeros((50, 80), np.uint8)
    truth[10:16, 5:75] = 7                              # true crack 420 px: IoU 280 / 420
    truth[40:45, 0:10] = 5                              # ignored
    Image.fromarray(rgb).save(root / "images" / "one.png")
    Image.fromarray(truth, mode="L").save(root / "masks" / "one.png")
    rgb2 = np.full((40, 40, 3), 128, np.uint8)
    rgb2[5:25, 5:25] = 245                              # predicted spall 400 px
    truth2 = np.zeros((40, 40), np.uint8)
    truth2[5:25, 5:15] = 9                              # true spall 200 px: IoU 0.5
    Image.fromarray(rgb2).save(root / "images" / "two.jpg", quality=100)
    Image.fromarray(truth2, mode="L").save(root / "masks" / "two.png")
    (root / "classes.txt").write_text("0 background\n7 crack\n9 spalling\n5 ignore\n")
    return root, {"crack": 280 / 420, "spalling": 0.5}


def test_evaluate_a_labelled_folder_without_a_split(labelled_folder, known_run):
    root, iou = labelled_folder
    result = evaluate_folder(known_run, root)
    assert result["n_images"] == 2 and result["iou"] == pytest.approx(iou)
    assert result["miou"] == pytest.approx(np.mean(list(iou.values())))
    rows = {r["image"]: r for r in result["per_image"]}
    assert rows["one.png"]["iou_crack"] == pytest.approx(280 / 420)
    assert np.isnan(rows["one.png"]["iou_spalling"])
    assert rows["one.png"]["labelled_px"] == 50 * 80 - 50
    assert rows["two.jpg"]["pred_px_spalling"] == 400 and rows["two.jpg"]["true_px_spalling"] == 200
    again = evaluate_folder(known_run, images=root / "images", masks=root / "masks")
    assert again["iou"] == result["iou"]                # classes.txt found beside the masks
    with pytest.raises(DataError, match="either a folder"):
        evaluate_folder(known_run)


def test_cli_evaluate_folder_writes_per_image_csv(labelled_folder, known_run, tmp_path, capsys):
    root, iou = labelled_folder
    csv = tmp_path / "scores.csv"
    assert cli(["evaluate", "--run", str(known_run), "--folder", str(root),
                "--per-image", str(csv), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "(2 photos) MIoU" in out and f"crack {iou['crack']:.4f}" in out
    table = pd.read_csv(csv).set_index("image")
    assert table.loc["two.jpg", "iou_spalling"] == pytest.approx(0.5)
    assert json.loads((tmp_path / "s.json").read_text())["iou"]["spalling"] == pytest.approx(0.5)
    assert cli(["evaluate", "--run", str(known_run), "--folder", str(root),
                "--split", "val"]) == 2
    assert cli(["evaluate", "--run", str(known_run), "--images", str(root / "images")]) == 2


def test_evaluation_only_prepared_set(labelled_folder, known_run, tmp_path):
    """``--split-ratios 0 0 1``: every photo in test, no label fractions;
    scoring it agrees with scoring the folder."""
    root, iou = labelled_folder
    data = prepare_dataset("folder", tmp_path / "prepared", root, split_ratios=(0, 0, 1),
                           progress=False)
    manifest = load_manifest(data)
    assert manifest["counts"] == {"train": 0, "val": 0, "test": 2}
    assert manifest["labelled_counts"] == {}
    with pytest.raises(DataError, match="evaluation-only"):
        select_samples(manifest, "train", 0.05)
    result = evaluate_run(known_run, data, "test")
    assert result["iou"] == pytest.approx(iou)
    assert [r["image"] for r in result["per_image"]] == ["one", "two"]
