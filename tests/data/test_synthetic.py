"""The procedural concrete-defect generator: determinism, labels that obey
the physics it claims (thin cracks, rebar only in spalls), a dataset that is
not trivially separable, and the on-disk layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from semiseg_helpers.classes import CLASS_NAMES, class_index
from semiseg_helpers.data import synthetic
from semiseg_helpers.data.synthetic import (
    SYNTHETIC_CLASSES,
    UNLABELED_INDEX_OFFSET,
    generate_dataset,
    render_sample,
)

CRACK, SPALLING, REBAR = (class_index(n) for n in ("crack", "spalling", "rebar"))
N_SAMPLES = 30


@pytest.fixture(scope="module")
def samples() -> list[tuple[np.ndarray, np.ndarray]]:
    """30 images at the default size, rendered once for the statistical tests."""
    return [render_sample(seed=0, index=i) for i in range(N_SAMPLES)]


# --- single samples ----------------------------------------------------------

def test_synthetic_classes_are_the_schema():
    assert SYNTHETIC_CLASSES == ("background", "crack", "spalling", "rebar")
    assert [class_index(n) for n in SYNTHETIC_CLASSES] == [0, 1, 2, 3]
    assert set(SYNTHETIC_CLASSES) <= set(CLASS_NAMES)


@pytest.mark.parametrize("size", [32, 50, 128])
def test_shapes_and_dtypes(size):
    image, mask = render_sample(seed=1, index=2, size=size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert mask.shape == (size, size) and mask.dtype == np.uint8


def test_same_seed_and_index_give_identical_arrays():
    first = render_sample(seed=7, index=3, size=64)
    second = render_sample(seed=7, index=3, size=64)
    assert np.array_equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])


@pytest.mark.parametrize("other", [(8, 3), (7, 4)])
def test_different_seed_or_index_gives_different_images(other):
    image, mask = render_sample(seed=7, index=3, size=64)
    other_image, other_mask = render_sample(*other, size=64)
    assert not np.array_equal(image, other_image)
    assert not np.array_equal(mask, other_mask)


def test_which_defects_appear_does_not_depend_on_size():
    # The plan (defects, nuisances, light) has its own random stream.
    for index in range(6):
        small = set(np.unique(render_sample(0, index, size=64)[1]))
        large = set(np.unique(render_sample(0, index, size=128)[1]))
        assert small == large, index


@pytest.mark.parametrize("kwargs, name", [
    ({"seed": -1, "index": 0}, "seed"),
    ({"seed": 0, "index": -1}, "index"),
    ({"seed": 0, "index": 0, "size": 31}, "size"),
])
def test_render_sample_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        render_sample(**kwargs)


def test_render_sample_rejects_non_integer_size():
    with pytest.raises(TypeError, match="size"):
        render_sample(0, 0, size=64.0)


# --- statistics over 30 samples ---------------------------------------------

def test_mask_values_are_class_indices(samples):
    values = set(np.unique(np.stack([mask for _, mask in samples])).tolist())
    assert values <= {0, 1, 2, 3}


def test_every_image_has_a_crack_or_spall(samples):
    for index, (_, mask) in enumerate(samples):
        assert np.isin(mask, (CRACK, SPALLING)).any(), index


def test_all_defect_classes_appear(samples):
    images_with = {c: sum(bool((mask == c).any()) for _, mask in samples)
                   for c in (CRACK, SPALLING, REBAR)}
    assert all(n >= 3 for n in images_with.values()), images_with
    # Not every image has everything: cracks only, spalls only and both occur.
    assert images_with[CRACK] < N_SAMPLES and images_with[SPALLING] < N_SAMPLES


def test_rebar_is_enclosed_by_spalling(samples):
    seen = 0
    for index, (_, mask) in enumerate(samples):
        rebar = mask == REBAR
        if not rebar.any():
            continue
        seen += 1
        ring = ndimage.binary_dilation(rebar, structure=np.ones((3, 3), bool)) & ~rebar
        assert np.all(mask[ring] == SPALLING), index
        assert not (rebar[0].any() or rebar[-1].any() or rebar[:, 0].any() or rebar[:, -1].any())
    assert seen > 0


def test_cracks_are_thin(samples):
    depths = []
    for index, (_, mask) in enumerate(samples):
        crack = mask == CRACK
        if crack.any():
            depth = ndimage.distance_transform_edt(crack)
            assert depth.max() <= 4.0, index  # no crack wider than ~7 px
            depths.append(depth[crack])
    depths = np.concatenate(depths)
    # Distance 1 is an edge pixel, so most crack pixels sit within 1-2 px of an edge.
    assert np.mean(depths <= 2.0) > 0.9


def _best_threshold_iou(grey: np.ndarray, truth: np.ndarray) -> float:
    """IoU of the best "darker than t" classifier, t over all grey levels."""
    best = 0.0
    for t in range(1, 256):
        predicted = grey < t
        union = np.count_nonzero(predicted | truth)
        if union:
            best = max(best, np.count_nonzero(predicted & truth) / union)
    return best


def test_best_threshold_iou_helper_on_a_hand_made_case():
    grey = np.array([[10, 10, 200], [10, 200, 200]], np.uint8)
    assert _best_threshold_iou(grey, grey < 100) == 1.0
    truth = np.array([[True, False, False], [False, False, False]])
    assert _best_threshold_iou(grey, truth) == pytest.approx(1 / 3)


def test_intensity_alone_does_not_segment_cracks(samples):
    # Pores, formwork joints, shadows and stains are as dark as crack cores:
    # the best global darkness threshold, chosen with the answer known, stays poor.
    grey = np.stack([image.mean(axis=2) for image, _ in samples]).round().astype(np.uint8)
    cracks = np.stack([mask == CRACK for _, mask in samples])
    assert _best_threshold_iou(grey, cracks) < 0.3
    # ...and in many crack images some background is darker than the median crack pixel.
    confusing = [
        grey[i][mask == 0].min() <= np.median(grey[i][mask == CRACK])
        for i, (_, mask) in enumerate(samples) if (mask == CRACK).any()
    ]
    assert np.mean(confusing) > 0.3


# --- generate_dataset ----------------------------------------------------------

def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_generate_dataset_writes_the_generic_layout(tmp_path):
    out = generate_dataset(tmp_path / "synth", n_labeled=3, n_unlabeled=2, size=32, seed=5)
    assert out == tmp_path / "synth"
    assert _files(out) == [
        "README.txt", "classes.txt",
        "images/synth_00000.png", "images/synth_00001.png", "images/synth_00002.png",
        "masks/synth_00000.png", "masks/synth_00001.png", "masks/synth_00002.png",
        "unlabeled/synth_u00000.png", "unlabeled/synth_u00001.png",
    ]
    assert (out / "classes.txt").read_text() == "0 background\n1 crack\n2 spalling\n3 rebar\n"
    assert "seed=5" in (out / "README.txt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]  # no staging left

    image, mask = render_sample(5, 1, size=32)
    with Image.open(out / "images" / "synth_00001.png") as png:
        assert png.mode == "RGB" and np.array_equal(np.asarray(png), image)
    with Image.open(out / "masks" / "synth_00001.png") as png:
        assert png.mode == "L" and np.array_equal(np.asarray(png), mask)
    with Image.open(out / "unlabeled" / "synth_u00001.png") as png:
        unlabeled = np.asarray(png)
    assert np.array_equal(unlabeled, render_sample(5, UNLABELED_INDEX_OFFSET + 1, size=32)[0])
    assert not np.array_equal(unlabeled, image)


def test_image_k_does_not_depend_on_how_many_are_generated(tmp_path):
    few = generate_dataset(tmp_path / "few", n_labeled=3, size=32)
    many = generate_dataset(tmp_path / "many", n_labeled=10, n_unlabeled=1, size=32)
    for sub in ("images", "masks"):
        for k in range(3):
            name = f"{sub}/synth_{k:05d}.png"
            assert (few / name).read_bytes() == (many / name).read_bytes(), name


def test_no_unlabeled_folder_without_unlabeled_images(tmp_path):
    out = generate_dataset(tmp_path / "d", n_labeled=1, size=32)
    assert not (out / "unlabeled").exists()


def test_unlabeled_only_dataset(tmp_path):
    out = generate_dataset(tmp_path / "d", n_labeled=0, n_unlabeled=2, size=32)
    assert _files(out / "unlabeled") == ["synth_u00000.png", "synth_u00001.png"]
    assert _files(out / "images") == [] and _files(out / "masks") == []


def test_an_existing_empty_directory_is_filled(tmp_path):
    (tmp_path / "d").mkdir()
    generate_dataset(tmp_path / "d", n_labeled=1, size=32)
    assert (tmp_path / "d" / "masks" / "synth_00000.png").is_file()


def test_refuses_a_non_empty_out_dir(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="out_dir.*d'"):
        generate_dataset(out, n_labeled=1, size=32)
    assert _files(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"


def test_refuses_a_file_as_out_dir(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="out_dir"):
        generate_dataset(tmp_path / "f", n_labeled=1, size=32)


def test_a_failed_run_leaves_nothing_behind(tmp_path, monkeypatch):
    real = synthetic.render_sample

    def failing(seed, index, size=128):
        if index == 2:
            raise RuntimeError("disk on fire")
        return real(seed, index, size)

    monkeypatch.setattr(synthetic, "render_sample", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate_dataset(tmp_path / "d", n_labeled=4, size=32)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, name", [
    ({"n_labeled": -1}, "n_labeled"),
    ({"n_unlabeled": -2}, "n_unlabeled"),
    ({"size": 16}, "size"),
    ({"seed": -3}, "seed"),
    ({"n_labeled": 0, "n_unlabeled": 0}, r"n_labeled \+ n_unlabeled"),
])
def test_generate_dataset_rejects_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        generate_dataset(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()


def test_progress_bar_reports_every_image(tmp_path, capsys):
    generate_dataset(tmp_path / "d", n_labeled=2, n_unlabeled=1, size=32, progress=True)
    assert "3/3" in capsys.readouterr().err
