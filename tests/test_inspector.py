"""The mask inspector headless: pictures (pixel values), numbers (IoU), lazy
predictions, the ranking, the widgets driven from Python, a real run, and
notebook 12 through papermill."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from semiseg_helpers.classes import CLASS_COLOURS, IGNORE_INDEX
from semiseg_helpers.inspector import (CONFUSED, CORRECT, ERROR_COLOURS, FALSE_ALARM, MISSED,
                                       InMemoryImages, InspectorState, InspectorView,
                                       error_codes, per_image_table, worst_figure)
from semiseg_helpers.notebooks import NOTEBOOK_DIR, notebook_parameters, run_notebook
from semiseg_helpers.predict import evaluate_run
from tests.methods import tiny_config

H, W = 6, 8
GREY = 120
CRACK, SPALLING = np.array(CLASS_COLOURS["crack"]), np.array(CLASS_COLOURS["spalling"])


def toy_images() -> InMemoryImages:
    """Three 6x8 grey photos (green channel = their index, for the lookup
    predictor) and their truth:

    0: crack on rows 0-1 (16 px), spalling on rows 4-5 x cols 0-3 (8 px),
       one ignored pixel (5, 7), background elsewhere (23 px);
    1: background only;
    2: crack only.
    """
    images, masks = [], []
    for k in range(3):
        image = np.full((H, W, 3), GREY, np.uint8)
        image[..., 1] = k
        images.append(image)
    first = np.zeros((H, W), np.uint8)
    first[0:2] = 1
    first[4:6, 0:4] = 2
    first[5, 7] = IGNORE_INDEX
    masks = [first, np.zeros((H, W), np.uint8), np.ones((H, W), np.uint8)]
    return InMemoryImages(images, masks, ["first", "empty", "all-crack"])


def first_prediction() -> np.ndarray:
    """For image 0: half the crack found (rows 0-1, cols 0-3), half missed,
    a false crack on background (rows 2-3, cols 0-1), the spalling taken for crack."""
    mask = np.zeros((H, W), np.uint8)
    mask[0:2, 0:4] = 1
    mask[2:4, 0:2] = 1
    mask[4:6, 0:4] = 1
    return mask


def lookup_predictor(masks: dict[int, np.ndarray]):
    """Predicts the mask stored for the photo's index (its green channel)."""
    return lambda image: masks[int(image[0, 0, 1])]


def constant_predictor(value: int):
    return lambda image: np.full(image.shape[:2], value, np.uint8)


@pytest.fixture
def state() -> InspectorState:
    masks = {0: first_prediction(), 1: np.zeros((H, W), np.uint8), 2: np.ones((H, W), np.uint8)}
    return InspectorState(toy_images(), lookup_predictor(masks), ("crack", "spalling", "rebar"))


# --------------------------------------------------------------------------- #
# Numbers


def test_a_constant_background_predictor_scores_zero_on_every_defect():
    st = InspectorState(toy_images(), constant_predictor(0))
    s = st.scores(0)
    assert s.iou["background"] == pytest.approx(23 / 47)   # 23 right of 47 labelled pixels
    assert s.iou["crack"] == 0 and s.iou["spalling"] == 0
    assert math.isnan(s.iou["rebar"])                      # in neither mask
    assert s.score == 0
    assert s.truth_pixels == {"background": 23, "crack": 16, "spalling": 8, "rebar": 0}
    assert s.predicted_pixels == {"background": 47, "crack": 0, "spalling": 0, "rebar": 0}
    assert math.isnan(st.scores(1).score)                   # nothing to find, nothing found
    assert st.scores(2).score == 0


def test_a_constant_crack_predictor_scores_the_crack_share():
    st = InspectorState(toy_images(), constant_predictor(1))
    s = st.scores(0)
    assert s.iou["crack"] == pytest.approx(16 / 47)         # the ignored pixel counts nowhere
    assert s.iou["spalling"] == 0 and s.iou["background"] == 0
    assert s.score == pytest.approx((16 / 47 + 0) / 2)
    st.shown = ["crack"]
    assert st.scores(0).score == pytest.approx(16 / 47)
    assert st.scores(1).score == 0                           # a false alarm on a clean photo
    assert st.scores(2).score == 1


def test_per_class_numbers_of_a_partial_prediction(state):
    s = state.scores(0)
    # crack: 8 found, 8 missed, 4 + 8 false (rows 2-3, and the spalling block)
    assert s.iou["crack"] == pytest.approx(8 / (8 + 8 + 12))
    assert s.iou["spalling"] == 0
    assert s.truth_pixels["crack"] == 16 and s.predicted_pixels["crack"] == 20
    rows = state.table(0)
    assert [r["class"] for r in rows] == ["background", "crack", "spalling", "rebar"]
    assert rows[1]["iou"] == pytest.approx(2 / 7)
    assert state.confusion(0).sum() == H * W - 1


def test_error_codes_name_each_kind_of_mistake():
    truth, pred = np.array([[1, 1, 0, 2, 0, 255, 2]]), np.array([[1, 0, 1, 1, 0, 1, 3]])
    assert error_codes(truth, pred, [1, 2, 3]).tolist() == \
        [[CORRECT, MISSED, FALSE_ALARM, CONFUSED, 0, 0, CONFUSED]]
    # spalling only: the crack pixels are not drawn, spalling taken for crack is
    assert error_codes(truth, pred, [2]).tolist() == [[0, 0, 0, CONFUSED, 0, 0, CONFUSED]]


# --------------------------------------------------------------------------- #
# Pictures


def test_layers_give_the_expected_pixels(state):
    state.layers = {"image": False, "truth": True, "prediction": False, "errors": False}
    state.opacity = 1.0
    truth = state.render(0)
    assert (truth[0:2] == CRACK).all() and (truth[4:6, 0:4] == SPALLING).all()
    assert (truth[2:4] == 0).all() and (truth[5, 7] == 0).all()   # background, ignored: black
    assert state.predictions_computed == 0                          # the truth needs no model

    state.show_layer("prediction")
    both = state.render(0)
    assert (both[0:6, 0:4][first_prediction()[0:6, 0:4] == 1] == CRACK).all()
    assert (both[0:2, 4:8] == CRACK).all()          # the missed crack: truth shows through

    state.show_layer("errors")
    errors = state.render(0)
    expected = {(0, 0): CORRECT, (1, 5): MISSED, (3, 1): FALSE_ALARM, (4, 2): CONFUSED}
    for (y, x), code in expected.items():
        assert tuple(errors[y, x]) == ERROR_COLOURS[code], (y, x)
    assert (errors[2:4, 2:] == 0).all()


def test_opacity_blends_over_the_photo_and_the_class_filter_hides(state):
    state.layers = {"image": True, "truth": True, "prediction": False, "errors": False}
    state.opacity = 0.25
    picture = state.render(0).astype(float)
    photo = toy_images().images[0].astype(float)
    assert np.abs(picture[0, 0] - (0.75 * photo[0, 0] + 0.25 * CRACK)).max() <= 0.5
    assert np.abs(picture[4, 0] - (0.75 * photo[4, 0] + 0.25 * SPALLING)).max() <= 0.5
    assert (picture[2:4] == photo[2:4]).all()
    state.shown = ["spalling"]
    filtered = state.render(0)
    assert (filtered[0:2] == toy_images().images[0][0:2]).all()    # crack no longer drawn
    assert (filtered[4:6, 0:4] == picture[4:6, 0:4]).all()
    state.opacity = 0.0
    assert (state.render(0) == toy_images().images[0]).all()


def test_bad_settings_are_refused_by_name(state):
    with pytest.raises(IndexError, match="image index 3 outside 0..2"):
        state.index = 3
    with pytest.raises(IndexError, match="image index -1 outside 0..2"):
        state.render(-1)
    with pytest.raises(ValueError, match="opacity"):
        state.opacity = 1.5
    with pytest.raises(ValueError, match=r"cannot show \['background'\]"):
        state.shown = ["background"]
    with pytest.raises(ValueError, match="unknown layer 'mask'"):
        state.show_layer("mask")
    with pytest.raises(ValueError, match="defect classes"):
        InspectorState(toy_images(), constant_predictor(0), ["crack", "corrosion"])
    wrong = InspectorState(toy_images(), lambda image: np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"first: predicted mask \(2, 2\) is not the ground "
                                         r"truth's \(6, 8\)"):
        wrong.scores(0)


# --------------------------------------------------------------------------- #
# Laziness and ranking


def test_predictions_are_made_only_for_what_is_looked_at_once_each(state):
    assert state.predictions_computed == 0 and state.scored == frozenset()
    state.render(2)
    state.render(2)
    state.scores(2)
    assert state.predictions_computed == 1 and state.scored == {2}
    assert state.ranking() == [2, 0, 1]            # scored first, then the rest in order
    state.score_all()
    assert state.predictions_computed == 3         # only the two not scored yet


def test_a_bounded_cache_forgets_masks_but_keeps_scores():
    st = InspectorState(toy_images(), constant_predictor(1), cache_size=1)
    st.prediction(0), st.prediction(1)
    assert st.predictions_computed == 2
    st.scores(0)                                   # its numbers were kept
    assert st.predictions_computed == 2
    st.render(0)                                   # its mask was not
    assert st.predictions_computed == 3
    st.score_all()                                 # scores image 2 without caching its mask,
    st.render(0)                                   # so the one viewed stays
    assert st.predictions_computed == 4


def test_ranking_is_worst_first_and_follows_the_class_filter(state):
    progress = []
    state.score_all(lambda done, total: progress.append((done, total)))
    assert progress == [(1, 3), (2, 3), (3, 3)]
    # scores: first = mean(2/7 crack, 0 spalling) = 1/7, empty = NaN, all-crack = 1
    assert state.ranking() == [0, 2, 1]
    table = per_image_table(state)
    assert list(table["image"]) == ["first", "all-crack", "empty"]
    assert table["score"].iloc[0] == pytest.approx(1 / 7) and math.isnan(table["score"].iloc[2])
    state.shown = ["spalling"]          # spalling is only in the first image, and missed there
    assert state.scores(0).score == 0 and math.isnan(state.scores(2).score)
    assert state.ranking() == [0, 1, 2]


def test_worst_figure_draws_the_scored_images(state):
    state.score_all()
    fig = worst_figure(state, n=5)
    assert len(fig.axes) == 2 * 4            # two images have a score, four panels each
    assert fig.axes[0].get_ylabel() == "first\nIoU 0.14"
    assert [ax.get_title() for ax in fig.axes[:4]] == ["image", "ground truth", "prediction",
                                                       "error map"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:3] == ["crack", "spalling", "rebar"] and "wrong defect class" in labels


# --------------------------------------------------------------------------- #
# The widgets, driven from Python (no browser)


def decoded(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_the_view_opens_with_one_prediction_and_follows_its_controls(state):
    view = InspectorView(state, display_size=80)
    zoom = 80 // W
    assert state.predictions_computed == 1
    assert [label for label, _ in view.dropdown.options] == \
        ["first · IoU 0.143", "empty · not scored yet", "all-crack · not scored yet"]
    assert (decoded(view.picture.value) == np.repeat(np.repeat(state.render(0), zoom, 0),
                                                    zoom, 1)).all()

    view.slider.value = 2                       # the slider moves the dropdown and the picture
    assert state.index == 2 and view.dropdown.value == 2
    assert (decoded(view.picture.value)[::zoom, ::zoom] == state.render(2)).all()
    assert "all-crack" in view.numbers.value and "1.000" in view.numbers.value

    view.dropdown.value = 0                     # and the dropdown the slider
    assert state.index == 0 and view.slider.value == 0

    before = view.picture.value
    view.layer_boxes["errors"].value = True
    assert state.layers["errors"] and view.picture.value != before
    view.opacity.value = 1.0
    assert tuple(decoded(view.picture.value)[0, 0]) == ERROR_COLOURS[CORRECT]
    view.class_boxes["crack"].value = False
    assert state.shown == ("spalling", "rebar")
    assert tuple(decoded(view.picture.value)[0, 0]) == (GREY, 0, GREY)   # crack not drawn

    view.score_button.click()
    assert state.scored == {0, 1, 2} and view.score_button.description == "all images scored"
    assert [v for _, v in view.dropdown.options] == state.ranking()
    assert view.dropdown.value == 0 and view.slider.value == 0


# --------------------------------------------------------------------------- #
# A real run and notebook 12


@pytest.fixture(scope="module")
def tiny_run(synthetic_prepared, tmp_path_factory):
    """A two-step Semi-SegDefect run of the tiny network on the synthetic set
    (in fp32: CPU bf16 convolutions make its validation and test several times slower)."""
    from semiseg_helpers.train import train

    out = tmp_path_factory.mktemp("inspect") / "run"
    train(tiny_config("semisegdefect", steps=2, eval_every=2, checkpoint_every=2,
                      precision="fp32"), synthetic_prepared, out, progress=False)
    return out


def test_a_runs_per_image_matrices_add_up_to_its_score(tiny_run, synthetic_prepared):
    state = InspectorState.from_run(tiny_run, synthetic_prepared, "val", device="cpu")
    assert state.classes == ("crack", "spalling", "rebar") and len(state) == 7
    assert state.predictions_computed == 0
    state.score_all()
    total = sum(state.confusion(i) for i in range(len(state)))
    reference = np.array(evaluate_run(tiny_run, synthetic_prepared, "val", "cpu")["confusion"])
    assert total.sum() == reference.sum()
    # the same model at the same precision; one image at a time instead of batches
    assert np.abs(total - reference).sum() <= 1e-3 * reference.sum()


def test_notebook_defaults_point_at_the_demo_run():
    params = notebook_parameters(NOTEBOOK_DIR / "12_inspect_masks.py")
    assert params["data_dir"] == "results/demo/data" and params["profile"] == "smoke"
    assert params["run_dir"] is None   # notebook 09's run beside output_dir, wherever the demo is
    source = (NOTEBOOK_DIR / "12_inspect_masks.py").read_text()
    assert '"09_comparison" / "runs" / profile' in source
    assert "method=semisegdefect,label_fraction=0.1,seed=0" in source
    assert params["score_all"] is False


@pytest.mark.slow
def test_inspector_notebook_on_a_tiny_run(tiny_run, synthetic_prepared, tmp_path):
    out = tmp_path / "12"
    run_notebook(NOTEBOOK_DIR / "12_inspect_masks.py", out / "12.ipynb",
                 {"data_dir": str(synthetic_prepared), "run_dir": str(tiny_run),
                  "output_dir": str(out), "score_all": True, "n_worst": 2, "device": "cpu"},
                 progress=False)
    record = json.loads((out / "record.json").read_text())
    assert record["n_images"] == 14 and record["n_scored"] == 14
    assert record["predictions_at_open"] == 14       # all scored before the view opened, once
    assert record["score_all_seconds"] > 0
    table = pd.read_csv(out / "per_image_iou.csv")
    assert len(table) == 14 and list(table["rank"]) == list(range(1, 15))
    scored = table["score"].dropna()
    assert list(scored) == sorted(scored) and len(record["worst"]) == 2
    assert (out / "worst_images.png").stat().st_size > 5_000
    # the notebook's numbers are the package's
    state = InspectorState.from_run(tiny_run, synthetic_prepared, "test", device="cpu")
    first = state.scores(0).iou
    for c, v in record["first_image_iou"].items():
        assert (v is None and math.isnan(first[c])) or v == pytest.approx(first[c], abs=1e-3)
