"""Tiling, splitting and label-fraction invariants, the manifest, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from semiseg_helpers.cli import main as cli
from semiseg_helpers.data.prepare import (
    labelled_order,
    load_manifest,
    prepare_dataset,
    select_samples,
    split_groups,
    subset_sizes,
    tile_boxes,
)
from semiseg_helpers.data.readers import DataError
from tests.conftest import shared_dataset, write_rgb


def test_tile_boxes_cover_the_image_without_padding():
    boxes = tile_boxes(720, 1080, 512)
    assert len(boxes) == 2 * 3
    assert all(h == 512 and w == 512 for _, _, h, w in boxes)
    covered = np.zeros((720, 1080), bool)
    for y, x, h, w in boxes:
        assert 0 <= y and y + h <= 720 and 0 <= x and x + w <= 1080
        covered[y:y + h, x:x + w] = True
    assert covered.all()
    assert tile_boxes(224, 224, 512) == [(0, 0, 224, 224)]
    assert tile_boxes(300, 600, 512) == [(0, 0, 300, 512), (0, 88, 300, 512)]


def test_split_groups_ratios_and_determinism():
    groups = [f"g{i}" for i in range(100)]
    a = split_groups(groups, (0.7, 0.1, 0.2), seed=3)
    assert a == split_groups(list(reversed(groups)), (7, 1, 2), seed=3)
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 70, "val": 10, "test": 20}
    assert a != split_groups(groups, (0.7, 0.1, 0.2), seed=4)
    with pytest.raises(DataError, match="split_ratios"):
        split_groups(groups, (0.0, 0.5, 0.5), seed=0)
    with pytest.raises(DataError, match="leave no training image"):
        split_groups(groups[:2], (0.4, 0.3, 0.3), seed=0)


def test_split_ratios_0_0_1_make_an_evaluation_only_set():
    groups = [f"g{i}" for i in range(9)]
    assert split_groups(groups, (0, 0, 1), seed=0) == {g: "test" for g in groups}
    with pytest.raises(DataError, match="0 0 1"):
        split_groups(groups, (0, 0.2, 0.8), seed=0)
    with pytest.raises(DataError, match=r"got \[0, 0, 0\]") as error:
        split_groups(groups, np.zeros(3), seed=0)
    assert "np.float64" not in str(error.value)      # numbers as the user typed them


def test_prepare_an_evaluation_only_set(folder_source, tmp_path, capsys):
    out = tmp_path / "eval"
    assert cli(["prepare", "--dataset", "folder", "--source", str(folder_source),
                "--out", str(out), "--split-ratios", "0", "0", "1"]) == 0
    assert "evaluation-only" in capsys.readouterr().out
    manifest = load_manifest(out)
    assert manifest["counts"] == {"train": 0, "val": 0, "test": 12 + 2}  # 2 unlabelled
    assert manifest["parameters"]["label_fractions"] == []
    assert len(select_samples(manifest, "test")) == 12                  # scored: labelled
    with pytest.raises(DataError, match="evaluation-only"):
        select_samples(manifest, "train", 0.1)


def test_labelled_order_covers_rare_classes_first():
    present = [frozenset()] * 50 + [frozenset({"crack"})] * 40 + [frozenset({"rebar"})] \
        + [frozenset({"spalling", "crack"})] * 9
    order = labelled_order(present, seed=0)
    assert sorted(order) == list(range(len(present)))
    front = set().union(*(present[i] for i in order[:3]))
    assert {"crack", "spalling", "rebar"} <= front
    assert order[0] == 90  # the single rebar sample, rarest class first
    assert order == labelled_order(present, seed=0)


def test_subset_sizes_reject_empty_fractions():
    assert subset_sizes([0.1, 0.02], 100) == {0.02: 2, 0.1: 10}
    with pytest.raises(DataError, match="label fraction 0.02 leaves no labelled image"):
        subset_sizes([0.02], 20)
    with pytest.raises(DataError, match="outside"):
        subset_sizes([1.5], 20)


def _check_invariants(manifest):
    samples = manifest["samples"]
    names = [s["name"] for s in samples]
    assert len(names) == len(set(names))
    split_of_source = {}
    for s in samples:
        assert s["split"] in ("train", "val", "test")
        # tiles of one source image never cross splits
        assert split_of_source.setdefault(s["source_image"], s["split"]) == s["split"]
        if s["split"] != "train" or s["mask"] is None:
            assert s["fractions"] == []
    fractions = manifest["parameters"]["label_fractions"]
    subsets = [{s["name"] for s in select_samples(manifest, "train", f)} for f in fractions]
    for small, big in zip(subsets, subsets[1:]):
        assert small < big  # nested
    train = select_samples(manifest, "train", None)
    for f, subset in zip(fractions, subsets):
        assert len(subset) == round(f * len(train))
        pool = {s["name"] for s in select_samples(manifest, "train", f, labelled=False)}
        assert not pool & subset
        assert pool | subset == {s["name"] for s in samples if s["split"] == "train"}


def test_prepare_folder_manifest_and_invariants(folder_source, tmp_path):
    out = prepare_dataset("folder", tmp_path / "prep", folder_source, crop_size=32, seed=1,
                          label_fractions=[0.25, 0.5], progress=False, workers=1)
    m = load_manifest(out)
    assert m["classes"] == ["background", "crack", "spalling", "rebar"]
    _check_invariants(m)
    # 40x48 images at crop 32 -> 2x2 tiles; defect-only keeps tiles with a defect
    labelled = [s for s in m["samples"] if s["mask"]]
    assert all(s["tile"][2:] == [32, 32] for s in m["samples"])
    assert all(sum(v for k, v in s["pixels"].items() if k != "background") > 0 for s in labelled)
    unlabelled = [s for s in m["samples"] if s["mask"] is None]
    assert len(unlabelled) == 2 * 4 and all(s["split"] in ("train", "val", "test") for s in unlabelled)
    # every file in the manifest exists, masks agree with their pixel counts
    for s in labelled:
        mask = np.asarray(Image.open(out / s["mask"]))
        assert mask.shape == tuple(s["tile"][2:])
        assert s["pixels"]["crack"] == int((mask == 1).sum())
        assert (out / s["image"]).is_file()
    # the smallest subset still has every defect class of the training split
    train_classes = {c for s in select_samples(m, "train") for c in ("crack", "spalling", "rebar")
                     if s["pixels"][c] > 0}
    smallest = select_samples(m, "train", 0.25)
    assert train_classes <= {c for s in smallest for c in train_classes if s["pixels"][c] > 0}


def test_prepare_all_tiles_keeps_background_tiles(folder_source, tmp_path):
    a = prepare_dataset("folder", tmp_path / "a", folder_source, crop_size=32, progress=False,
                        label_fractions=[0.5])
    b = prepare_dataset("folder", tmp_path / "b", folder_source, crop_size=32, progress=False,
                        keep_defect_only=False, label_fractions=[0.5])
    assert len(load_manifest(b)["samples"]) == 14 * 4 > len(load_manifest(a)["samples"])


def test_prepare_is_deterministic(folder_source, tmp_path):
    def run(name, seed):
        out = prepare_dataset("folder", tmp_path / name, folder_source, crop_size=64, seed=seed,
                              label_fractions=[0.2, 0.5], progress=False)
        return [(s["name"], s["split"], s["fractions"]) for s in load_manifest(out)["samples"]]

    assert run("a", 0) == run("b", 0)
    assert run("a2", 0) != run("c", 5)


def test_prepare_refuses_existing_output_and_leaves_nothing_on_error(folder_source, tmp_path):
    out = tmp_path / "prep"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="exists and is not empty"):
        prepare_dataset("folder", out, folder_source, progress=False)
    assert (out / "keep.txt").read_text() == "mine"

    (folder_source / "images" / "img09.jpg").write_text("broken")
    target = tmp_path / "never"
    with pytest.raises(DataError, match="img09.jpg"):
        prepare_dataset("folder", target, folder_source, progress=False, workers=1)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_prepare_bad_parameters(folder_source, tmp_path):
    with pytest.raises(DataError, match="label fraction 0.01 leaves no labelled image"):
        prepare_dataset("folder", tmp_path / "x", folder_source, label_fractions=[0.01],
                        progress=False)
    with pytest.raises(DataError, match="crop_size"):
        prepare_dataset("folder", tmp_path / "x", folder_source, crop_size=4, progress=False)
    with pytest.raises(DataError, match="needs a source"):
        prepare_dataset("folder", tmp_path / "x", None, progress=False)
    assert not (tmp_path / "x").exists()


def test_empty_source_is_an_error(tmp_path):
    for d in ("images", "masks"):
        (tmp_path / "src" / d).mkdir(parents=True)
    (tmp_path / "src" / "classes.txt").write_text("0 background\n1 crack\n")
    with pytest.raises(DataError, match="no labelled image"):
        prepare_dataset("folder", tmp_path / "out", tmp_path / "src", progress=False)


def test_select_samples_rejects_unprepared_fraction(folder_source, tmp_path):
    m = load_manifest(prepare_dataset("folder", tmp_path / "p", folder_source,
                                      label_fractions=[0.5], progress=False))
    with pytest.raises(DataError, match="0.3 was not prepared"):
        select_samples(m, "train", 0.3)


def test_cli_prepare_synthetic(tmp_path, capsys):
    rc = cli(["prepare", "--dataset", "synthetic", "--out", str(tmp_path / "s"),
              "--synthetic-images", "40", "--synthetic-size", "64", "--fractions", "0.1", "0.5"])
    assert rc == 0
    assert "prepared 40 samples" in capsys.readouterr().out
    m = load_manifest(tmp_path / "s")
    assert m["dataset"] == "synthetic" and m["source"]["generator"]["n_labeled"] == 40
    _check_invariants(m)


def test_cli_reports_bad_input(tmp_path, capsys):
    rc = cli(["prepare", "--dataset", "peerhub", "--source", str(tmp_path / "missing"),
              "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "missing: source folder not found" in capsys.readouterr().err


@pytest.mark.realdata
def test_prepare_whole_peerhub(tmp_path):
    out = prepare_dataset("peerhub", tmp_path / "peerhub", shared_dataset("peerhub_crack_spalling"),
                          progress=False)
    m = load_manifest(out)
    assert len(m["samples"]) == 2192
    assert m["counts"] == {"train": 1535, "val": 219, "test": 438}
    _check_invariants(m)
    assert sum(s["pixels"]["crack"] > 0 for s in m["samples"]) == 1900
    assert sum(s["pixels"]["spalling"] > 0 for s in m["samples"]) == 1291
    assert json.loads((out / "manifest.json").read_text())["source_classes"] == \
        ["background", "crack", "spalling"]


@pytest.mark.realdata
def test_prepare_mdmcs_tiles_contain_rebar(tmp_path):
    out = prepare_dataset("mdmcs", tmp_path / "mdmcs", shared_dataset("mdmcs_mini"),
                          crop_size=512, label_fractions=[0.1, 0.2], progress=False)
    m = load_manifest(out)
    assert all(s["tile"][2:] == [512, 512] for s in m["samples"])
    assert sum(s["pixels"]["rebar"] > 0 for s in m["samples"]) > 10
    _check_invariants(m)


def test_preparing_the_same_recipe_again_keeps_the_existing_dataset(folder_source, tmp_path):
    out = prepare_dataset("folder", tmp_path / "p", folder_source, crop_size=64,
                          label_fractions=[0.5], progress=False)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    again = prepare_dataset("folder", out, folder_source, crop_size=64, label_fractions=[0.5],
                            progress=False)  # no overwrite needed, nothing rebuilt
    assert again == out and (out / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="exists and is not empty"):
        prepare_dataset("folder", out, folder_source, crop_size=64, label_fractions=[0.5],
                        seed=1, progress=False)
    prepare_dataset("folder", out, folder_source, crop_size=64, label_fractions=[0.5], seed=1,
                    overwrite=True, progress=False)
    assert load_manifest(out)["parameters"]["seed"] == 1
