"""Corruptions, robustness scores, the choice of Figures 9–10's images, and
the robustness notebook end to end."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from semiseg_helpers import robustness as rb
from semiseg_helpers.classes import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES

RANDOM = {"shadow", "motion_blur", "gaussian_noise"}
"""The corruptions that draw random numbers (the others are fixed functions)."""


def scene(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Float images in [0, 1] with structure a corruption can destroy: a
    gradient, ripples, a dark line, a darker block and fine texture."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    image = (0.35 + 0.3 * xx + 0.1 * torch.sin(12 * yy)).expand(n, 3, h, w).clone()
    image += 0.05 * torch.rand(n, 3, h, w, generator=g)
    image[..., h // 3: h // 3 + 2, :] = 0.1
    image[..., h // 2:, w // 4: w // 2] *= 0.6
    return image.clamp(0, 1)


# --------------------------------------------------------------------------- #
# Corruptions


@pytest.mark.parametrize("name", list(rb.CORRUPTIONS))
def test_corruption_is_deterministic_per_seed(name):
    x = scene(2, 48, 64)
    first = rb.corrupt(x, name, 3, seed=0)
    assert torch.equal(first, rb.corrupt(x, name, 3, seed=0))
    other = rb.corrupt(x, name, 3, seed=1)
    assert torch.equal(first, other) == (name not in RANDOM)
    # each image draws from its own generator: batching does not matter
    halves = torch.cat([rb.corrupt(x[:1], name, 3, 0, first_index=0),
                        rb.corrupt(x[1:], name, 3, 0, first_index=1)])
    assert torch.equal(first, halves)


@pytest.mark.parametrize("name", list(rb.CORRUPTIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_corruption_keeps_shape_dtype_and_range(name, dtype):
    x = scene(2, 40, 56).to(dtype)
    out = rb.corrupt(x, name, 5)
    assert out.shape == x.shape and out.dtype == dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert not torch.equal(out, x)                    # severity 5 changes the image
    assert rb.corrupt(x, name, 0) is x                # severity 0 is the image itself


@pytest.mark.parametrize("name", list(rb.CORRUPTIONS))
def test_psnr_falls_with_severity(name):
    x = scene(2, 224, 224)
    at_reference = [rb.psnr(x, rb.corrupt(x, name, s)) for s in rb.SEVERITIES]
    assert all(a > b for a, b in zip(at_reference, at_reference[1:])), at_reference
    assert at_reference[0] < 40                        # even severity 1 is visible
    # small images: spatial levels scale down; neighbouring blur kernels may coincide
    small = scene(2, 64, 64)
    at_64 = [rb.psnr(small, rb.corrupt(small, name, s)) for s in rb.SEVERITIES]
    assert all(a >= b for a, b in zip(at_64, at_64[1:])) and at_64[0] > at_64[-1], at_64


def test_same_draws_at_every_severity():
    """Noise of one image at severity s is the same pattern scaled by the level."""
    x = torch.full((1, 3, 16, 16), 0.5)
    low, high = (rb.corrupt(x, "gaussian_noise", s) - x for s in (1, 2))
    levels = rb.CORRUPTIONS["gaussian_noise"].levels
    inside = (high.abs() < 0.45) & (low.abs() < 0.45)    # away from clipping
    torch.testing.assert_close(high[inside] / levels[1], low[inside] / levels[0])


def test_brightness_and_contrast_values():
    x = torch.full((1, 3, 4, 4), 0.3)
    x[..., :2, :] = 0.7
    torch.testing.assert_close(rb.corrupt(x, "brightness", 2), (x + 0.2).clamp(0, 1))
    low = rb.corrupt(x, "contrast", 5)
    # contrast scales deviations from the mean grey level by the factor
    assert float(low.max() - low.min()) == pytest.approx(0.05 * 0.4, abs=1e-6)
    torch.testing.assert_close(low.mean(), x.mean())


def test_disk_kernel():
    k = rb.disk_kernel(2.0)
    assert k.shape == (5, 5)
    assert float(k.sum()) == pytest.approx(1.0)
    assert k[0, 0] == 0 and k[2, 0] > 0 and k[0, 2] > 0      # corners outside, edges inside
    assert torch.equal(k, k.T) and torch.equal(k, k.flip(0))
    assert int((k > 0).sum()) == 13                            # lattice points within radius 2
    with pytest.raises(ValueError, match="positive"):
        rb.disk_kernel(0)


def test_shadow_mask_covers_about_half_and_is_seeded():
    def mask(seed):
        return rb.shadow_mask(96, 128, torch.Generator().manual_seed(seed))
    a = mask(0)
    assert a.shape == (1, 1, 96, 128)
    assert 0 <= float(a.min()) and float(a.max()) <= 1
    assert 0.35 < float(a.mean()) < 0.65
    assert torch.equal(a, mask(0)) and not torch.equal(a, mask(1))
    soft = ((a > 0.05) & (a < 0.95)).float().mean()
    assert 0 < float(soft) < 0.5                                # a penumbra, not a step


def test_corrupt_rejects_bad_input():
    x = scene(1, 16, 16)
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        rb.corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        rb.corrupt(x, "jpeg", 6)
    with pytest.raises(ValueError, match="float images"):
        rb.corrupt((x * 255).to(torch.uint8), "jpeg", 1)
    images = _lines_and_blocks(1)
    with pytest.raises(ValueError, match="severities must be among"):
        rb.corruption_confusions({"t": threshold_segmenter}, images, ["jpeg"], [0, 1],
                                 progress=False)
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        rb.corruption_confusions({"t": threshold_segmenter}, images, ["fog"], progress=False)


def test_corruption_table_lists_five_levels_each():
    table = rb.corruption_table()
    assert list(table["corruption"]) == list(rb.CORRUPTIONS)
    assert [c for c in table.columns if c.startswith("severity")] == [
        f"severity {s}" for s in rb.SEVERITIES]


# --------------------------------------------------------------------------- #
# Scores under corruptions


def _lines_and_blocks(n: int = 3, size: int = 32) -> list[rb.LabelledImage]:
    """Grey 0.6 background, a 0.05 'crack' row, a 0.3 'spalling' block."""
    out = []
    for i in range(n):
        image = np.full((size, size, 3), 0.6)
        mask = np.zeros((size, size), np.uint8)
        image[10 + i:12 + i] = 0.05
        mask[10 + i:12 + i] = 1
        image[20:28, 5:15] = 0.3
        mask[20:28, 5:15] = 2
        out.append(rb.LabelledImage(f"im{i}", (image * 255).round().astype(np.uint8), mask))
    return out


def threshold_segmenter(x: torch.Tensor) -> torch.Tensor:
    """Crack below 0.2 grey, spalling below 0.45, background above: perfect on
    :func:`_lines_and_blocks`, and predictable when brightened."""
    grey = x.mean(1)
    return torch.where(grey < 0.2, 1, torch.where(grey < 0.45, 2, 0))


def test_scores_and_relative_robustness_by_hand():
    images = _lines_and_blocks()
    models = {"threshold": threshold_segmenter,
              "background": lambda x: torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.long)}
    confusions = rb.corruption_confusions(models, images, ["brightness"], [1, 3, 5],
                                          batch_size=2, progress=False)
    assert set(confusions) == {(m, c, s) for m in models
                               for c, s in [("clean", 0), ("brightness", 1),
                                            ("brightness", 3), ("brightness", 5)]}
    scores = rb.scores_frame(confusions, ["crack", "spalling"])
    iou = scores.set_index(["model", "corruption", "severity", "class"])["iou"]
    assert iou["threshold", "clean", 0, "crack"] == 1.0
    # +0.1: all still right; +0.3: crack reads as spalling, spalling as background; +0.5: all background
    assert iou["threshold", "brightness", 1, "MIoU"] == 1.0
    assert iou["threshold", "brightness", 3, "crack"] == 0.0
    assert iou["threshold", "brightness", 3, "spalling"] == 0.0
    assert iou["threshold", "brightness", 5, "MIoU"] == 0.0

    table = rb.robustness_table(scores)
    assert len(table) == 2 * 1 * 3                                    # models x corruptions x (classes + MIoU)
    row = table.set_index(["model", "corruption", "class"])
    assert row.loc[("threshold", "brightness", "crack"), "mean"] == pytest.approx(1 / 3)
    assert row.loc[("threshold", "brightness", "crack"), "relative"] == pytest.approx(1 / 3)
    assert math.isnan(row.loc[("background", "brightness", "crack"), "relative"])  # clean IoU 0


def test_robustness_table_over_every_corruption():
    images = _lines_and_blocks(2)
    models = {"a": threshold_segmenter, "b": lambda x: threshold_segmenter(1.2 * x)}
    confusions = rb.corruption_confusions(models, images, progress=False)
    scores = rb.scores_frame(confusions, ["crack", "spalling"])
    assert len(scores) == 2 * (1 + 7 * 5) * 3
    table = rb.robustness_table(scores)
    assert len(table) == 2 * 7 * 3
    assert list(dict.fromkeys(table["corruption"])) == list(rb.CORRUPTIONS)
    for _, row in table.iterrows():
        per_severity = scores[(scores["model"] == row["model"])
                              & (scores["corruption"] == row["corruption"])
                              & (scores["class"] == row["class"])]
        assert len(per_severity) == 5
        assert row["mean"] == pytest.approx(per_severity["iou"].mean())
        assert row["relative"] == pytest.approx(row["mean"] / row["clean"])
    again = rb.scores_frame(rb.corruption_confusions(models, images, progress=False),
                            ["crack", "spalling"])
    pd.testing.assert_frame_equal(scores, again)                 # deterministic per seed

    display = rb.robustness_display(table, {"a": "A"})
    assert list(display["corruption"][:9]) == ["clean", *rb.CORRUPTIONS, "all corruptions"]
    assert list(display["model"].unique()) == ["A", "b"]
    assert (display.loc[display["corruption"] == "clean", "crack rel."] == 1.0).all()
    assert list(display.columns[2:]) == ["crack IoU", "crack rel.", "spalling IoU",
                                         "spalling rel.", "MIoU", "MIoU rel."]
    mean_row = display[(display["model"] == "A") & (display["corruption"] == "all corruptions")]
    assert float(mean_row["crack rel."].iloc[0]) == pytest.approx(
        table[(table["model"] == "a") & (table["class"] == "crack")]["relative"].mean())


def test_scores_of_a_tiny_network():
    from semiseg_helpers.evaluate import logits_fn, sliding_window_logits
    from semiseg_helpers.methods import build_method
    from tests.methods import tiny_config

    torch.manual_seed(0)
    model = build_method(tiny_config("supervised"), NUM_CLASSES).inference_model().eval()
    forward = logits_fn(model)

    def tiny(x: torch.Tensor) -> torch.Tensor:
        return sliding_window_logits(forward, x, 64, NUM_CLASSES).argmax(1)

    images = [rb.LabelledImage(im.name, np.asarray(Image.fromarray(im.image).resize((64, 64))),
                               np.asarray(Image.fromarray(im.mask).resize((64, 64), 0)))
              for im in _lines_and_blocks(2)]
    confusions = rb.corruption_confusions({"tiny": tiny}, images, ["gaussian_noise", "jpeg"],
                                          [1, 5], progress=False)
    for cm in confusions.values():              # every labelled pixel scored once per condition
        assert cm.sum() == 2 * 64 * 64
    table = rb.robustness_table(rb.scores_frame(confusions, ["crack", "spalling"]))
    assert list(table["corruption"]) == ["gaussian_noise"] * 3 + ["jpeg"] * 3
    assert list(table["class"]) == ["crack", "spalling", "MIoU"] * 2
    assert table[["clean", "mean"]].apply(lambda v: v.between(0, 1)).all().all()


def _table(relative: dict[str, dict[str, float]]) -> pd.DataFrame:
    """A robustness table from ``{model: {class: relative}}`` over two corruptions
    (clean IoU 0.5; the second corruption halves the first's relative)."""
    rows = []
    for model, by_class in relative.items():
        for corruption, scale in (("jpeg", 1.0), ("shadow", 0.5)):
            for cls, rel in by_class.items():
                rows.append({"model": model, "corruption": corruption, "class": cls,
                             "clean": 0.5, "mean": 0.5 * rel * scale, "relative": rel * scale})
    return pd.DataFrame(rows)


def test_fragility_says_which_class_suffers_most():
    agree = _table({"semi": {"crack": 0.4, "spalling": 0.8, "MIoU": 0.6},
                    "sup": {"crack": 0.3, "spalling": 0.9, "MIoU": 0.6}})
    frag = rb.fragility(agree)
    assert list(frag["class"]) == ["crack", "spalling", "crack", "spalling"]
    assert frag.loc[0, "mean relative"] == pytest.approx(0.3)       # (0.4 + 0.2) / 2
    assert frag.loc[0, "worst corruption"] == "shadow"
    assert rb.most_fragile(agree) == {"semi": "crack", "sup": "crack"}
    lines = rb.fragility_statements(agree, {"semi": "Semi-SegDefect"})
    assert lines[0] == (
        "Semi-SegDefect: relative to its clean IoU, crack is the most fragile class (share "
        "kept, mean over corruptions: crack 30 %, spalling 60 %; MIoU 45 %); shadow hurts it "
        "most (20 % kept). Mean IoU under corruption, lowest first: crack 15 % (clean 50 %), "
        "spalling 30 % (clean 50 %).")
    assert lines[-1] == "As the paper says, crack is the most fragile class for every model scored."

    differ = _table({"semi": {"crack": 0.9, "spalling": 0.5, "MIoU": 0.7},
                     "sup": {"crack": 0.3, "spalling": 0.9, "MIoU": 0.6}})
    assert rb.most_fragile(differ) == {"semi": "spalling", "sup": "crack"}
    assert rb.fragility_statements(differ)[-1] == (
        "The paper names crack as the most fragile class; relative to clean IoU the most "
        "fragile here is spalling for semi; crack for sup.")
    both = _table({"semi": {"crack": 0.9, "spalling": 0.5, "MIoU": 0.7},
                   "sup": {"crack": 0.8, "spalling": 0.4, "MIoU": 0.6}})
    assert rb.fragility_statements(both, {"semi": "A", "sup": "B"})[-1].endswith(
        "the most fragile here is spalling for A and B.")


# --------------------------------------------------------------------------- #
# Figures 9 and 10: which images


def test_present_defects_counts_labelled_pixels_only():
    mask = np.zeros((100, 100), np.uint8)
    mask[:1, :5] = 1                  # 5 px of crack
    mask[10:30, 10:30] = 2            # 400 px of spalling
    mask[50:, :] = IGNORE_INDEX       # half the image unlabelled
    assert rb.present_defects(mask, ["crack", "spalling"], 0.001) == ("crack", "spalling")
    assert rb.present_defects(mask, ["crack", "spalling"], 0.002) == ("spalling",)  # 5 < 10 px
    assert rb.present_defects(mask, ["crack"], 0.001) == ("crack",)
    assert rb.present_defects(np.full((4, 4), IGNORE_INDEX, np.uint8), ["crack"], 0.1) == ()


def test_complexity_measures_edges_outside_the_defects():
    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 20:40] = 2
    flat = np.full((64, 64, 3), 128, np.uint8)
    flat[20:40, 20:40] = 0                                  # a strong edge, but only at the defect
    busy = flat.copy()
    busy[:10] = rng.integers(0, 256, (10, 64, 3))           # texture in the background
    assert rb.scene_complexity(busy, mask) > 3 * rb.scene_complexity(flat, mask)
    assert rb.scene_complexity(flat, np.full((64, 64), 1, np.uint8)) == 0.0


def test_picks_follow_the_rule():
    def s(name, defects, complexity):
        return rb.Scene("test", name, np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.uint8),
                        defects, complexity)
    scenes = [s("a", ("crack",), 0.2), s("b", ("crack",), 0.5), s("c", ("spalling",), 0.1),
              s("d", ("crack", "spalling"), 0.3), s("e", ("crack", "spalling"), 0.9),
              s("f", ("crack", "rebar"), 0.3), s("g", (), 5.0)]
    assert [x.name for x in rb.pick_single(scenes, ["crack", "spalling", "rebar"])] == ["b", "c"]
    assert [x.name for x in rb.pick_coupled(scenes, 2)] == ["e", "d"]   # tie 0.3: by name
    table = rb.scenes_table(rb.pick_coupled(scenes, 1), "10")
    assert table.iloc[0].to_dict() == {"figure": "10", "source": "test", "image": "e",
                                       "size": "2x2", "defects": "crack + spalling",
                                       "complexity": 0.9}


def test_systematic_subset():
    samples = [{"name": f"s{i:02d}"} for i in reversed(range(10))]
    assert [s["name"] for s in rb.systematic_subset(samples, 3)] == ["s00", "s03", "s06"]
    assert [s["name"] for s in rb.systematic_subset(samples, None)] == [
        f"s{i:02d}" for i in range(10)]
    assert len(rb.systematic_subset(samples, 50)) == 10
    with pytest.raises(ValueError, match="n_images"):
        rb.systematic_subset(samples, 0)


def test_restrict_classes_ignores_classes_a_model_never_learnt():
    mask = np.array([[0, 1, 2, 3, IGNORE_INDEX]], np.uint8)
    assert rb.restrict_classes(mask, ["crack", "spalling"]).tolist() == [
        [0, 1, 2, IGNORE_INDEX, IGNORE_INDEX]]


def test_error_map_colours_each_outcome():
    truth = np.array([[0, 0, 1, 1, 2, IGNORE_INDEX]], np.uint8)
    pred = np.array([[0, 1, 1, 0, 1, 2]], np.uint8)
    image = np.full((1, 6, 3), 200, np.uint8)
    colours = [tuple(c) for c in rb.error_map(truth, pred, image)[0]]
    e = rb.ERROR_COLOURS
    assert colours == [(90, 90, 90), e["false alarm"], e["defect found"], e["missed"],
                       e["wrong defect class"], e["not scored"]]
    with pytest.raises(ValueError, match="differ in shape"):
        rb.error_map(truth, pred[:, :3])


def test_image_miou_over_the_classes_present():
    truth = np.array([[0, 1, 1, 0]], np.uint8)
    pred = np.array([[0, 1, 0, 0]], np.uint8)
    assert rb.image_miou(truth, pred, ["crack", "spalling"]) == pytest.approx(0.5)
    assert math.isnan(rb.image_miou(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8),
                                    ["crack"]))


# --------------------------------------------------------------------------- #
# The notebook


def _mdmcs_like(root, n: int = 3, size: tuple[int, int] = (100, 150)) -> None:
    """Photos larger than the tiny runs' window with MDMCS colour masks:
    crack, spalling, rebar (a class the runs never saw) and corrosion."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    h, w = size
    for i in range(n):
        mask = np.zeros((h, w, 3), np.uint8)
        mask[10:14, :] = (255, 0, 0)
        if i != 1:
            mask[40:80, 20:70] = (128, 128, 128)
            mask[55:60, 25:65] = (0, 255, 0)
        mask[90:, 120:] = (0, 255, 255)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / "images" / f"p{i}.jpg")
        Image.fromarray(mask).save(root / "masks" / f"p{i}.png")


@pytest.mark.slow
def test_robustness_notebook(tmp_path):
    from semiseg_helpers.notebooks import NOTEBOOK_DIR, run_notebook
    from semiseg_helpers.predict import export_weights
    from semiseg_helpers.train import train
    from tests.methods import tiny_config, tiny_dataset

    data = tiny_dataset(tmp_path / "data")
    runs = {}
    for method in ("semisegdefect", "supervised"):
        runs[method] = tmp_path / "runs" / method
        train(tiny_config(method, steps=2, eval_every=2, checkpoint_every=2, threads=1),
              data, runs[method], progress=False)
    export_weights(runs["supervised"])          # a model of record: fp16 weights, no checkpoints
    shutil.rmtree(runs["supervised"] / "checkpoints")
    photos = tmp_path / "photos"
    _mdmcs_like(photos)
    out = tmp_path / "10"
    params = {"profile": "smoke", "data_dir": str(data), "output_dir": str(out),
              "semisegdefect_run": str(runs["semisegdefect"]),
              "supervised_run": str(runs["supervised"]), "photos_dir": str(photos)}
    run_notebook(NOTEBOOK_DIR / "10_robustness.py", out / "10.ipynb", params, progress=False)
    record = json.loads((out / "record.json").read_text())
    # the smoke profile's budget: 8 test images at most (the tiny set has 5)
    assert record["n_images"] == record["n_test_images"] == 5
    assert record["severities"] == [1, 2, 3, 4, 5]
    assert record["corruptions"] == list(rb.CORRUPTIONS)
    assert record["sets"] == ["test split", "photos"]
    assert set(record["fragile"]) <= {"Semi-SegDefect", "Supervised"}
    table = pd.read_csv(out / "robustness.csv")
    assert set(table["model"]) == {"Semi-SegDefect", "Supervised"}
    assert len(table) == 2 * 7 * (len(record["classes"]) + 1)
    defined = table["clean"] > 0
    np.testing.assert_allclose(table.loc[defined, "relative"],
                               table.loc[defined, "mean"] / table.loc[defined, "clean"])
    scores = pd.read_csv(out / "robustness_scores.csv")
    assert sorted(set(scores["severity"])) == [0, 1, 2, 3, 4, 5]
    chosen = pd.read_csv(out / "figure9_10_images.csv")
    photo_rows = chosen[chosen["source"] == "photos"]
    # p1 has a crack alone (single); p0 and p2 crack + spalling (rebar is not a known class)
    assert list(photo_rows.loc[photo_rows["figure"] == 9, "image"]) == ["p1"]
    assert sorted(photo_rows.loc[photo_rows["figure"] == 10, "image"]) == ["p0", "p2"]
    assert (photo_rows["size"] == "150x100").all()
    assert "photos/p1" in record["figures"]["figure9"]
    for name in ("corruptions", "iou_vs_severity", "figure9", "figure10"):
        assert (out / f"{name}.png").stat().st_size > 5_000
    for name in ("robustness_display", "fragility"):
        assert (out / f"{name}.md").read_text().startswith("| model |")
