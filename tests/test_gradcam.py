"""Grad-CAM: the target layer, the maps, the mass inside the ground truth,
ROAD with a segmentation target, image selection, the score table, and
notebook 11 end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semiseg_helpers import gradcam
from semiseg_helpers.gradcam import (
    MeanClassProbability,
    break_ties,
    cam_mass_inside,
    encoder_last_stage,
    evenly_spaced,
    grad_cam,
    logit_sum_target,
    paired_differences,
    road,
    score_table,
    select_images,
    statements,
)
from semiseg_helpers.models import SemiSegDefect


def tiny_network(encoder: str) -> SemiSegDefect:
    torch.manual_seed(0)
    return SemiSegDefect(encoder, aspp_rates=(1, 2, 3), decoder_channels=16,
                         rep_source=None).eval()


# --------------------------------------------------------------------------- #
# The target layer


@pytest.mark.parametrize("encoder, name", [("tf_efficientnet_lite0", "encoder.model.blocks.6"),
                                           ("convnext_zepto_rms", "encoder.model.stages_3")])
def test_the_target_layer_outputs_the_encoders_deepest_level(encoder, name):
    model = tiny_network(encoder)
    layer = encoder_last_stage(model)
    assert dict(model.named_modules())[name] is layer
    seen = []
    handle = layer.register_forward_hook(lambda m, i, out: seen.append(out))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        deepest = model.encoder(x)[-1]
    handle.remove()
    assert len(seen) == 1 and torch.equal(seen[0], deepest)
    assert deepest.shape[-1] == 64 // 16          # the dilated last stage, output stride 16


def test_the_target_layer_needs_a_timm_encoder():
    with pytest.raises(TypeError, match="no TimmEncoder"):
        encoder_last_stage(nn.Conv2d(3, 4, 1))


# --------------------------------------------------------------------------- #
# Maps


def two_blobs(size: int = 64) -> tuple[torch.Tensor, np.ndarray]:
    """An image with a bright block and a dark one, and a mask marking the
    bright block as crack (1) and the dark one as spalling (2)."""
    image = torch.full((1, 3, size, size), 0.5)
    mask = np.zeros((size, size), np.uint8)
    image[..., 8:24, 8:24], mask[8:24, 8:24] = 1.0, 1
    image[..., 36:60, 30:54], mask[36:60, 30:54] = 0.0, 2
    return image, mask


def test_grad_cam_maps_have_the_images_shape_and_lie_in_0_1():
    model = tiny_network("convnext_zepto_rms")
    image, mask = two_blobs()
    images = torch.cat([image, torch.rand(1, 3, 64, 64)])
    targets = [logit_sum_target(1, mask == 1), logit_sum_target(2, mask == 2)]
    cams = grad_cam(model, images, targets)
    assert cams.shape == (2, 64, 64) and cams.dtype == np.float32
    assert cams.min() >= 0 and np.allclose(cams.max(axis=(1, 2)), 1, atol=1e-5)
    # a mean teacher's parameters are frozen: the map must not depend on that
    model.requires_grad_(False)
    frozen = grad_cam(model, images, targets)
    np.testing.assert_allclose(frozen, cams, atol=1e-5)


class RedGreen(nn.Module):
    """A network whose crack logit sees only red and whose spalling logit sees
    only green: its stage has a red detector (channel 0) and a green detector
    (channel 1) on 4x4 patches; background and rebar logits are 0."""

    def __init__(self) -> None:
        super().__init__()
        self.stage = nn.Sequential(nn.Conv2d(3, 2, 4, stride=4, bias=False), nn.ReLU())
        weight = torch.zeros(2, 3, 4, 4)
        weight[0, 0], weight[0, 1] = 1 / 16, -1 / 16
        weight[1, 1], weight[1, 0] = 1 / 16, -1 / 16
        self.stage[0].weight.data.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red, green = self.stage(x).unbind(1)
        zero = torch.zeros_like(red)
        logits = 4 * torch.stack([zero, red, green, zero], dim=1)
        return F.interpolate(logits, size=x.shape[-2:], mode="nearest")


def red_and_green(size: int = 32) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    image = torch.full((1, 3, size, size), 0.1)
    red, green = np.zeros((size, size), bool), np.zeros((size, size), bool)
    red[4:12, 4:12] = green[20:28, 16:24] = True
    image[0, 0][torch.from_numpy(red)] = 1.0
    image[0, 1][torch.from_numpy(green)] = 1.0
    return image, red, green


def test_a_class_whose_logit_sees_one_region_gets_a_map_there():
    model = RedGreen().eval()
    image, red, green = red_and_green()
    images = torch.cat([image, image])
    cams = grad_cam(model, images, [logit_sum_target(1, red), logit_sum_target(2, green)],
                    layer=model.stage)
    # the 8x8 map is resized bilinearly to 32x32, which smears it 2 px beyond
    # each block: 3/4 of the mass stays inside (a uniform map: 1/16)
    assert cam_mass_inside(cams[0], red) > 0.75 and cam_mass_inside(cams[0], green) == 0
    assert cam_mass_inside(cams[1], green) > 0.75 and cam_mass_inside(cams[1], red) == 0
    assert red[np.unravel_index(cams[0].argmax(), red.shape)]


def test_cam_mass_inside_a_hand_made_region():
    cam = np.array([[0.0, 1.0, 2.0],
                    [3.0, 0.0, 0.0],
                    [0.0, 0.0, 4.0]])
    region = np.array([[0, 1, 1],
                       [0, 0, 0],
                       [0, 0, 1]], bool)
    assert cam_mass_inside(cam, region) == pytest.approx(7 / 10)
    assert cam_mass_inside(cam, ~region) == pytest.approx(3 / 10)
    assert cam_mass_inside(np.ones((2, 2)), np.eye(2, dtype=bool)) == pytest.approx(0.5)
    assert math.isnan(cam_mass_inside(np.zeros((3, 3)), region))
    with pytest.raises(ValueError, match="shape"):
        cam_mass_inside(cam, region[:2])
    with pytest.raises(ValueError, match="non-negative"):
        cam_mass_inside(-cam, region)


# --------------------------------------------------------------------------- #
# ROAD with a segmentation target


def test_mean_class_probability_over_a_mask():
    logits = torch.zeros(4, 2, 2)
    logits[1, 0, 0] = math.log(3.0)     # p(crack) = 3 / 6 there, 1 / 4 elsewhere
    mask = np.array([[1, 1], [0, 0]], bool)
    assert float(MeanClassProbability(1, mask)(logits)) == pytest.approx((0.5 + 0.25) / 2)
    with pytest.raises(ValueError, match="empty mask"):
        MeanClassProbability(1, np.zeros((2, 2), bool))


def test_road_rewards_the_map_that_points_at_the_evidence():
    model = RedGreen().eval()
    image, red, green = red_and_green()
    cams = grad_cam(model, torch.cat([image, image]),
                    [logit_sum_target(1, red), logit_sum_target(2, green)], layer=model.stage)
    target = MeanClassProbability(1, red)
    right = road(model, image, cams[0], target, seed=1)
    wrong = road(model, image, cams[1], target, seed=1)    # the green map, for the red class
    assert right.morf < -0.5 and abs(right.lerf) < 0.05 and right.combined > 0.25
    # the green map ranks every red pixel alike (zero), so both orders remove
    # scattered red pixels that imputation from their red neighbours restores
    assert abs(wrong.combined) < 0.05
    assert right.combined == pytest.approx((right.lerf - right.morf) / 2)


@pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")
def test_road_equals_the_librarys_combined_score_and_leaves_the_global_rng_alone():
    from pytorch_grad_cam.metrics.road import ROADCombined

    model = RedGreen().eval()
    image, red, _ = red_and_green()
    cam = grad_cam(model, image, [logit_sum_target(1, red)], layer=model.stage)[0]
    target = MeanClassProbability(1, red)
    state = torch.get_rng_state()
    ours = road(model, image, cam, target, percentiles=(30, 70), seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(5)
    library = ROADCombined(percentiles=[30, 70])(image, break_ties(cam, 5)[None], [target],
                                                 gradcam.SegmentationLogits(model))
    assert ours.combined == pytest.approx(float(library[0]), abs=1e-6)


def test_broken_ties_let_a_percentile_remove_the_share_it_names():
    from pytorch_grad_cam.metrics.perturbation_confidence import RemoveMostRelevantFirst

    rng = np.random.default_rng(0)
    cam = np.where(rng.random((20, 20)) < 0.7, 0.0, rng.random((20, 20)))  # ~70 % zeros
    keep = RemoveMostRelevantFirst(50, lambda image, kept: kept)   # the mask it would impute
    assert float(keep(None, torch.from_numpy(cam)).mean()) == 0.0   # ties: everything removed
    kept = keep(None, torch.from_numpy(break_ties(cam, seed=0)))
    assert float(kept.mean()) == pytest.approx(0.5, abs=1 / 400)
    order = np.argsort(cam[cam > 0])
    np.testing.assert_array_equal(np.argsort(break_ties(cam)[cam > 0]), order)


# --------------------------------------------------------------------------- #
# Images, tables, statements


def manifest_with(shares: dict[str, tuple[str, float, str]]) -> dict:
    """Samples of 100 pixels: name -> (class, share of the class, split)."""
    samples = []
    for name, (cls, share, split) in shares.items():
        px = round(100 * share)
        samples.append({"name": name, "split": split, "mask": f"masks/{name}.png",
                        "pixels": {"background": 100 - px, cls: px, "ignore": 0}})
    samples.append({"name": "unlabelled", "split": "test", "mask": None, "pixels": {}})
    return {"samples": samples}


def test_images_are_chosen_at_evenly_spaced_ranks_of_the_class_share():
    manifest = manifest_with({
        "a": ("crack", 0.30, "test"), "b": ("crack", 0.20, "test"), "c": ("crack", 0.10, "test"),
        "d": ("crack", 0.05, "test"), "e": ("crack", 0.02, "test"),
        "f": ("crack", 0.50, "train"),                  # not the test split
        "g": ("crack", 0.005, "test"),                  # below min_share
        "h": ("spalling", 0.40, "test"), "i": ("spalling", 0.40, "test")})   # a tie: by name
    chosen = select_images(manifest, ["crack", "spalling", "rebar"], 3, min_share=0.01)
    assert [(c, s["name"]) for c, s in chosen] == [
        ("crack", "a"), ("crack", "c"), ("crack", "e"), ("spalling", "h"), ("spalling", "i")]
    assert evenly_spaced(list("abcdefg"), 1) == ["a"]
    assert evenly_spaced(list("ab"), 5) == ["a", "b"]
    with pytest.raises(ValueError):
        evenly_spaced([1], 0)


def test_score_table_means_per_model_and_class_and_the_statements():
    per_image = pd.DataFrame({
        "model": ["A", "A", "A", "B", "B", "B"],
        "class": ["crack", "crack", "spalling", "crack", "crack", "spalling"],
        "image": ["x", "y", "z", "x", "y", "z"],
        "gt_share": [0.02, 0.04, 0.3, 0.02, 0.04, 0.3],
        "cam_mass_in_gt": [0.2, 0.4, 0.5, 0.1, math.nan, 0.6],
        "probability": [0.5, 0.7, 0.9, 0.4, 0.2, 0.8],
        "road_morf": [-0.4, -0.2, -0.5, -0.1, -0.1, -0.3],
        "road_lerf": [0.0, 0.0, -0.1, 0.0, -0.2, 0.0],
        "road_combined": [0.2, 0.1, 0.2, 0.02, 0.0, 0.15]})
    table = score_table(per_image)
    crack_a = table[(table["model"] == "A") & (table["class"] == "crack")].iloc[0]
    assert crack_a["n_images"] == 2 and crack_a["n_zero_cams"] == 0
    assert crack_a["gt_share_%"] == pytest.approx(3.0)
    assert crack_a["cam_mass_in_gt_%"] == pytest.approx(30.0)
    assert crack_a["probability_%"] == pytest.approx(60.0)
    assert crack_a["road_combined"] == pytest.approx(0.15)
    crack_b = table[(table["model"] == "B") & (table["class"] == "crack")].iloc[0]
    assert crack_b["n_zero_cams"] == 1 and crack_b["cam_mass_in_gt_%"] == pytest.approx(10.0)
    assert crack_a["cam_mass_in_gt_%_se"] == pytest.approx(10.0)   # std 0.1414 / sqrt 2
    assert crack_a["road_combined_se"] == pytest.approx(0.05)
    assert math.isnan(crack_b["cam_mass_in_gt_%_se"])                # one value left

    diff = paired_differences(per_image, "A", "B").set_index("class")
    assert diff.loc["crack", "n_pairs"] == 2 and diff.loc["crack", "n_mass_pairs"] == 1
    assert diff.loc["crack", "mass_diff_points"] == pytest.approx(10.0)   # image y: B's map is zero
    assert math.isnan(diff.loc["crack", "mass_diff_se"])
    assert diff.loc["crack", "road_diff"] == pytest.approx(0.14)
    assert diff.loc["crack", "road_diff_se"] == pytest.approx(0.04)
    assert diff.loc["spalling", "mass_diff_points"] == pytest.approx(-10.0)

    lines = statements(table, paired_differences(per_image, "A", "B"), "A", "B")
    assert lines[0] == (
        "crack: A puts 30.0 % of its Grad-CAM mass inside the ground truth, B 10.0 % (a uniform "
        "map: 3.0 %; paired difference +10.0 ± nan points, n = 1); ROAD combined +0.150 "
        "against +0.010 (difference +0.140 ± 0.040, n = 2; ± one standard error over the "
        "images).")
    assert lines[-1] == ("A's maps are the more concentrated on the defect in 1 of 2 classes "
                         "(0 by more than two standard errors) and the more faithful by ROAD in "
                         "2 of 2 (1 by more than two standard errors).")


# --------------------------------------------------------------------------- #
# Notebook 11 end to end


@pytest.mark.slow
def test_gradcam_notebook(tmp_path):
    from semiseg_helpers.data.prepare import prepare_dataset
    from semiseg_helpers.notebooks import NOTEBOOK_DIR, run_notebook
    from semiseg_helpers.predict import export_weights
    from semiseg_helpers.runs import RunDir
    from semiseg_helpers.train import train
    from tests.methods import tiny_config

    data = prepare_dataset("synthetic", tmp_path / "data", label_fractions=[0.5],
                           progress=False, synthetic_options={"n_labeled": 24, "size": 64})
    runs = {}
    for method in ("semisegdefect", "supervised"):
        runs[method] = tmp_path / "runs" / method
        config = tiny_config(method, steps=2, eval_every=2, checkpoint_every=2)
        train(config, data, runs[method], progress=False)
    # a model of record keeps model.safetensors, not its checkpoints
    export_weights(runs["supervised"])
    for checkpoint in RunDir(runs["supervised"]).best.parent.iterdir():
        checkpoint.unlink()

    out = tmp_path / "11"
    params = {"profile": "smoke", "data_dir": str(data), "output_dir": str(out),
              "semisegdefect_run": str(runs["semisegdefect"]),
              "supervised_run": str(runs["supervised"]), "images_per_class": 2,
              "figure_images_per_class": 1, "road_percentiles": [50]}
    run_notebook(NOTEBOOK_DIR / "11_gradcam.py", out / "11.ipynb", params, progress=False)
    record = json.loads((out / "record.json").read_text())
    assert list(record["models"]) == ["Semi-SegDefect", "Supervised (same network)"]
    classes = [c for c in record["classes"] if c not in record["absent_classes"]]
    assert classes and len(record["cases"]) <= 2 * len(classes)
    assert [c for c, _ in record["figure_rows"]] == classes
    scores = pd.read_csv(out / "gradcam_scores.csv")
    assert len(scores) == 2 * len(classes)
    assert set(scores["model"]) == set(record["models"])
    assert ((scores["cam_mass_in_gt_%"] >= 0) & (scores["cam_mass_in_gt_%"] <= 100)).all()
    assert ((scores["road_combined"].abs() <= 0.5)).all()
    per_image = pd.read_csv(out / "gradcam_per_image.csv")
    assert len(per_image) == 2 * len(record["cases"])
    assert (out / "gradcam_scores.md").read_text().startswith("| model | class | n_images |")
    assert len(record["statements"]) == len(classes) + 1
    differences = pd.read_csv(out / "gradcam_differences.csv")
    assert list(differences["class"]) == classes
    assert (out / "figure11.png").stat().st_size > 10_000
