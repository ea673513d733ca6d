"""UniMatch: thresholded pseudo-label CE, two strong views, the fp stream,
the loss arithmetic, and a short training run through the loop."""

import math

import pytest
import torch

from semiseg_helpers.classes import IGNORE_INDEX, NUM_CLASSES
from semiseg_helpers.methods import METHODS, build_method
from semiseg_helpers.methods.unimatch import UniMatch, pseudo_labels, thresholded_pseudo_ce
from semiseg_helpers.runs import RunDir
from semiseg_helpers.train import train
from tests.methods import short_run_config, tiny_batches, tiny_config, tiny_dataset, tiny_method


@pytest.fixture(scope="module")
def method():
    return tiny_method("unimatch")


def test_pseudo_labels_are_argmax_and_max_softmax_with_padding_ignored():
    logits = torch.zeros(1, 4, 1, 3)
    logits[0, 2, 0, 0] = math.log(7.0)     # softmax (1, 1, 7, 1) / 10
    logits[0, 1, 0, 1] = math.log(2.0)     # softmax (1, 2, 1, 1) / 5
    logits.requires_grad_(True)
    valid = torch.tensor([[[True, True, False]]])
    labels, confidence = pseudo_labels(logits, valid)
    assert labels.tolist() == [[[2, 1, IGNORE_INDEX]]]
    torch.testing.assert_close(confidence, torch.tensor([[[0.7, 0.4, 0.0]]]))
    assert not confidence.requires_grad


def test_thresholded_ce_keeps_pixels_at_or_above_threshold_over_all_valid_pixels():
    t = UniMatch.CONF_THRESHOLD
    logits = torch.zeros(1, NUM_CLASSES, 1, 5)          # uniform: CE = log 4 everywhere
    labels = torch.tensor([[[0, 1, 2, IGNORE_INDEX, 3]]])
    confidence = torch.tensor([[[t - 0.01, t, t + 0.01, 0.99, 0.5]]])
    loss = thresholded_pseudo_ce(logits, labels, confidence, t)
    # kept: the pixels at t and t + 0.01; divided by the 4 non-ignored pixels
    assert loss.item() == pytest.approx(2 * math.log(4) / 4)


def test_thresholded_ce_is_a_finite_zero_with_gradient_when_nothing_is_valid():
    logits = torch.randn(1, NUM_CLASSES, 2, 2, requires_grad=True)
    labels = torch.full((1, 2, 2), IGNORE_INDEX)
    loss = thresholded_pseudo_ce(logits, labels, torch.ones(1, 2, 2), 0.95)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_thresholded_ce_names_a_shape_mismatch():
    with pytest.raises(ValueError, match="confidence"):
        thresholded_pseudo_ce(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long),
                              torch.zeros(1, 2, 3), 0.95)


def test_two_strong_views_have_their_own_boxes_and_carry_their_pseudo_labels(method):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    labels = torch.stack([torch.zeros(64, 64, dtype=torch.long), torch.full((64, 64), 2)])
    confidence = torch.stack([torch.full((64, 64), 0.5), torch.full((64, 64), 0.99)])
    s1, s2 = method.strong_views(images, labels, confidence, torch.Generator().manual_seed(0))
    assert not torch.equal(s1.boxes, s2.boxes)
    assert not torch.equal(s1.images, s2.images)
    for view in (s1, s2):
        y0, x0, y1, x1 = view.boxes[0].tolist()
        assert y1 > y0 and x1 > x0
        inside = torch.zeros(64, 64, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        # image 0's box holds image 1's pseudo-label and confidence, the rest its own
        assert torch.equal(view.labels[0], torch.where(inside, 2, 0))
        assert torch.equal(view.confidences[0] == 0.99, inside)


def test_feature_perturbation_changes_the_logits(method):
    labelled, _ = tiny_batches()
    out = method.student(labelled.images, perturb=True, return_rep=False)
    assert out.logits_fp.shape == out.logits.shape
    assert (out.logits_fp - out.logits).abs().max() > 1e-3


def test_total_loss_is_the_published_combination_of_its_terms(method, monkeypatch):
    # Threshold 0: every pseudo-label counts, so all three unsupervised terms are non-zero.
    monkeypatch.setattr(method, "CONF_THRESHOLD", 0.0)
    out = method.training_step(*tiny_batches(), 0, torch.Generator().manual_seed(0))
    logs = out.logs
    assert logs["mask_ratio"] == 1.0
    assert min(logs["loss_s1"], logs["loss_s2"], logs["loss_fp"]) > 0
    assert logs["loss_s1"] != logs["loss_s2"]        # two different strong views
    expected = (logs["loss_sup"] + 0.25 * logs["loss_s1"] + 0.25 * logs["loss_s2"]
                + 0.5 * logs["loss_fp"]) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_training_step_backpropagates_and_stays_in_training_mode(method):
    method.zero_grad(set_to_none=True)
    out = method.training_step(*tiny_batches(), 0, torch.Generator().manual_seed(0))
    assert set(out.logs) == {"loss_sup", "loss_s1", "loss_s2", "loss_fp", "mask_ratio"}
    assert all(math.isfinite(v) for v in out.logs.values())
    assert 0.0 <= out.logs["mask_ratio"] <= 1.0
    out.loss.backward()
    # every parameter learns except the contrastive representation head, which
    # UniMatch never runs (return_rep=False)
    no_grad = {n for n, p in method.named_parameters() if p.grad is None}
    assert no_grad and all(n.startswith("student.representation.") for n in no_grad)
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)
    assert method.student.training
    assert method.inference_model() is method.student


def test_mask_ratio_counts_confident_pixels_inside_the_image(method, monkeypatch):
    monkeypatch.setattr(method, "CONF_THRESHOLD", 0.0)
    labelled, unlabelled = tiny_batches()
    assert not unlabelled.valid.all()     # padding must not count as confident
    out = method.training_step(labelled, unlabelled, 0, torch.Generator().manual_seed(0))
    assert out.logs["mask_ratio"] == 1.0
    monkeypatch.setattr(method, "CONF_THRESHOLD", 1.01)
    out = method.training_step(labelled, unlabelled, 0, torch.Generator().manual_seed(0))
    assert out.logs["mask_ratio"] == 0.0
    assert out.logs["loss_s1"] == out.logs["loss_s2"] == out.logs["loss_fp"] == 0.0
    assert out.loss.item() == pytest.approx(out.logs["loss_sup"] / 2, rel=1e-6)


def test_needs_the_feature_perturbation_network():
    with pytest.raises(ValueError, match="model.arch"):
        build_method(tiny_config("unimatch", **{"model.arch": "deeplabv3plus"}), NUM_CLASSES)


def test_built_by_name():
    assert METHODS["unimatch"] is UniMatch
    built = build_method(tiny_config("unimatch"), NUM_CLASSES)
    assert isinstance(built, UniMatch) and built.uses_unlabelled


def test_short_training_run_saves_and_reloads_its_network(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    config = short_run_config("unimatch")
    summary = train(config, data, tmp_path / "run", progress=False)
    assert summary["method"] == "unimatch" and summary["best_step"] in (2, 4)
    assert math.isfinite(summary["val"]["miou"]) and math.isfinite(summary["test"]["miou"])
    run = RunDir(tmp_path / "run")
    logged = [m for m in run.read_metrics() if "loss_fp" in m]
    assert logged and all(math.isfinite(m["loss"]) for m in logged)
    fresh = build_method(config, NUM_CLASSES).inference_model()
    fresh.load_state_dict(torch.load(run.best, weights_only=True))   # strict: keys match
