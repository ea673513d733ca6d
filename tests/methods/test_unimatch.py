"""UniMatch: thresholded pseudo-label CE, its own strong augmentation with
CutMix partners from a second unlabelled batch labelled in eval mode, the fp
stream, the loss arithmetic, its config section, and a short training run
through the loop."""

import json
import math

import pytest
import torch

from semiseg_helpers.augment import (
    StrongAugmentConfig,
    colour_jitter,
    cutmix,
    gaussian_blur,
    random_greyscale,
    strong_view,
)
from semiseg_helpers.classes import IGNORE_INDEX, NUM_CLASSES
from semiseg_helpers.config import UniMatchConfig
from semiseg_helpers.methods import METHODS, build_method
from semiseg_helpers.methods.unimatch import UniMatch, pseudo_labels, thresholded_pseudo_ce
from semiseg_helpers.runs import RunDir
from semiseg_helpers.train import Trainer, train
from tests.methods import (
    short_run_config,
    step_inputs,
    tiny_batches,
    tiny_config,
    tiny_dataset,
    tiny_method,
)

THRESHOLD = UniMatchConfig().conf_threshold


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
    t = THRESHOLD
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


def test_config_section_holds_unimatchs_published_settings(method):
    u = method.config.unimatch
    assert (u.conf_threshold, u.strong_weight, u.fp_weight, u.loss_divisor) == (0.95, 0.25, 0.5, 2)
    assert (u.brightness, u.contrast, u.saturation, u.hue, u.jitter_p) == (0.5, 0.5, 0.5, 0.25, 0.8)
    assert (u.grey_p, u.blur_p, u.cutmix_p) == (0.2, 0.5, 0.5)
    assert tuple(u.blur_sigma_range) == (0.1, 2.0)
    assert method.augment.grey_p == 0.2 and method.augment.hue == 0.25
    assert method.augment != StrongAugmentConfig()         # not Semi-SegDefect's shared view
    assert method.student.fp_dropout == 0.5
    assert method.unlabelled_streams == 2


def _weak_inputs(n=2, size=64):
    images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))
    mix = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(2))
    labels = torch.zeros(n, size, size, dtype=torch.long)
    mix_labels = torch.full((n, size, size), 2)
    return (images, labels, torch.full((n, size, size), 0.5),
            mix, mix_labels, torch.full((n, size, size), 0.99))


def test_strong_views_paste_boxes_of_the_second_batch_with_its_pseudo_labels():
    # photometric noise off, CutMix always: the box holds the partner batch's pixels
    method = tiny_method("unimatch", **{"unimatch.jitter_p": 0.0, "unimatch.grey_p": 0.0,
                                        "unimatch.blur_p": 0.0, "unimatch.cutmix_p": 1.0})
    images, labels, conf, mix, mix_labels, mix_conf = _weak_inputs()
    s1, s2 = method.strong_views(images, labels, conf, mix, mix_labels, mix_conf,
                                 torch.Generator().manual_seed(0))
    assert not torch.equal(s1.boxes, s2.boxes)
    for view in (s1, s2):
        assert view.partner.tolist() == [0, 1]           # image i mixes with partner i
        for i in range(2):
            y0, x0, y1, x1 = view.boxes[i].tolist()
            assert y1 > y0 and x1 > x0
            area = (y1 - y0) * (x1 - x0) / 64 ** 2
            assert 0.015 <= area <= 0.41
            inside = torch.zeros(64, 64, dtype=torch.bool)
            inside[y0:y1, x0:x1] = True
            assert torch.equal(view.images[i], torch.where(inside, mix[i], images[i]))
            assert torch.equal(view.labels[i], torch.where(inside, 2, 0))
            assert torch.equal(view.confidences[i] == 0.99, inside)


def test_strong_views_use_unimatchs_augmentation_and_cutmix_probability(method):
    images, labels, conf, mix, mix_labels, mix_conf = _weak_inputs(n=64, size=16)
    s1, s2 = method.strong_views(images, labels, conf, mix, mix_labels, mix_conf,
                                 torch.Generator().manual_seed(0))
    boxed = torch.cat([s1.boxes, s2.boxes])
    mixed = (boxed[:, 2] > boxed[:, 0]).float().mean().item()
    assert 0.35 < mixed < 0.65                          # p 0.5 per view and image
    # each view: its own photometric noise, on the images and on their partners
    assert not torch.equal(s1.images, s2.images)
    unboxed = (s1.boxes[:, 2] == s1.boxes[:, 0])
    assert not torch.equal(s1.images[unboxed], images[unboxed])


def test_random_greyscale_turns_a_share_of_images_grey():
    images = torch.rand(200, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    out = random_greyscale(images, p=0.2, generator=torch.Generator().manual_seed(1))
    grey = (out[:, 0] == out[:, 1]).all(-1).all(-1) & (out[:, 1] == out[:, 2]).all(-1).all(-1)
    assert 0.1 < grey.float().mean().item() < 0.3
    assert torch.equal(out[~grey], images[~grey])
    luma = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    torch.testing.assert_close(out[grey][:, 0], luma[grey])


def test_shared_strong_view_draws_the_same_numbers_as_before():
    """Semi-SegDefect's view (grey_p 0, partners rolled from the batch) is unchanged."""
    images, labels, conf, *_ = _weak_inputs()
    view = strong_view(images, labels, conf, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    expected = cutmix(gaussian_blur(colour_jitter(images, generator=g), generator=g),
                      labels, conf, generator=g)
    assert torch.equal(view.images, expected.images)
    assert torch.equal(view.labels, expected.labels) and view.partner.tolist() == [1, 0]


def test_cutmix_partner_batch_must_match():
    images, labels, conf, mix, mix_labels, _ = _weak_inputs()
    with pytest.raises(ValueError, match="partner_confidences"):
        cutmix(images, labels, conf, partner_images=mix, partner_labels=mix_labels)
    with pytest.raises(ValueError, match="partner_images"):
        cutmix(images, partner_images=mix[:1])


def test_partner_pseudo_labels_are_an_eval_mode_prediction_without_gradient(method):
    _, (_, mix) = step_inputs(method)
    with torch.no_grad():
        method.student.eval()
        eval_logits = method.student(mix.images, return_rep=False).logits
        method.student.train()
    labels, conf = method.mix_pseudo_labels(mix)
    assert method.student.training                      # back in training mode
    expected_labels, expected_conf = pseudo_labels(eval_logits, mix.valid)
    assert torch.equal(labels, expected_labels)
    torch.testing.assert_close(conf, expected_conf)
    # BatchNorm's batch statistics would give other confidences
    with torch.no_grad():
        train_logits = method.student(mix.images, return_rep=False).logits
    assert not torch.allclose(conf, pseudo_labels(train_logits, mix.valid)[1])
    assert not conf.requires_grad


def test_step_takes_cutmix_partners_from_the_second_batch_labelled_in_eval_mode(method,
                                                                               monkeypatch):
    labelled, (main, mix) = step_inputs(method)
    with torch.no_grad():
        method.student.eval()
        expected = pseudo_labels(method.student(mix.images, return_rep=False).logits, mix.valid)
        method.student.train()
    seen = {}
    original = method.strong_views

    def spy(images, labels, conf, mix_images, mix_labels, mix_conf, generator):
        seen.update(images=images, mix_images=mix_images, mix_labels=mix_labels,
                    mix_conf=mix_conf, training=method.student.training)
        return original(images, labels, conf, mix_images, mix_labels, mix_conf, generator)

    monkeypatch.setattr(method, "strong_views", spy)
    method.training_step(labelled, (main, mix), 0, torch.Generator().manual_seed(0))
    assert torch.equal(seen["images"], main.images)
    assert torch.equal(seen["mix_images"], mix.images)
    assert torch.equal(seen["mix_labels"], expected[0])
    torch.testing.assert_close(seen["mix_conf"], expected[1])
    assert seen["training"] and method.student.training


def test_step_needs_two_unlabelled_batches(method):
    labelled, (main, _) = step_inputs(method)
    with pytest.raises(ValueError, match="two unlabelled batches"):
        method.training_step(labelled, main, 0, torch.Generator())


def test_feature_perturbation_changes_the_logits(method):
    labelled, _ = tiny_batches()
    out = method.student(labelled.images, perturb=True, return_rep=False)
    assert out.logits_fp.shape == out.logits.shape
    assert (out.logits_fp - out.logits).abs().max() > 1e-3


def test_total_loss_is_the_published_combination_of_its_terms():
    # Threshold 0: every pseudo-label counts, so all three unsupervised terms are non-zero.
    method = tiny_method("unimatch", **{"unimatch.conf_threshold": 0.0})
    out = method.training_step(*step_inputs(method), 0, torch.Generator().manual_seed(0))
    logs = out.logs
    assert logs["mask_ratio"] == 1.0
    assert min(logs["loss_s1"], logs["loss_s2"], logs["loss_fp"]) > 0
    assert logs["loss_s1"] != logs["loss_s2"]        # two different strong views
    expected = (logs["loss_sup"] + 0.25 * logs["loss_s1"] + 0.25 * logs["loss_s2"]
                + 0.5 * logs["loss_fp"]) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_config_weights_change_the_combination():
    method = tiny_method("unimatch", **{"unimatch.conf_threshold": 0.0,
                                        "unimatch.strong_weight": 0.1, "unimatch.fp_weight": 0.7,
                                        "unimatch.loss_divisor": 4.0})
    out = method.training_step(*step_inputs(method), 0, torch.Generator().manual_seed(0))
    logs = out.logs
    expected = (logs["loss_sup"] + 0.1 * (logs["loss_s1"] + logs["loss_s2"])
                + 0.7 * logs["loss_fp"]) / 4
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert tiny_method("unimatch", **{"unimatch.fp_dropout": 0.2}).student.fp_dropout == 0.2


def test_training_step_backpropagates_and_stays_in_training_mode(method):
    method.zero_grad(set_to_none=True)
    out = method.training_step(*step_inputs(method), 0, torch.Generator().manual_seed(0))
    assert set(out.logs) == {"loss_sup", "loss_s1", "loss_s2", "loss_fp", "mask_ratio"}
    assert all(math.isfinite(v) for v in out.logs.values())
    assert 0.0 <= out.logs["mask_ratio"] <= 1.0
    out.loss.backward()
    # every parameter learns: the contrastive representation head, which UniMatch
    # never runs, is not built
    assert method.student.representation is None
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in method.parameters())
    assert method.student.training
    assert method.inference_model() is method.student


def test_mask_ratio_counts_confident_pixels_inside_the_image():
    method = tiny_method("unimatch", **{"unimatch.conf_threshold": 0.0})
    labelled, unlabelled = step_inputs(method)
    assert not unlabelled[0].valid.all()     # padding must not count as confident
    out = method.training_step(labelled, unlabelled, 0, torch.Generator().manual_seed(0))
    assert out.logs["mask_ratio"] == 1.0
    method = tiny_method("unimatch", **{"unimatch.conf_threshold": 1.01})
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
    saved = json.loads(run.config.read_text())["unimatch"]
    assert saved["conf_threshold"] == 0.95 and saved["grey_p"] == 0.2
    fresh = build_method(config, NUM_CLASSES).inference_model()
    fresh.load_state_dict(torch.load(run.best, weights_only=True))   # strict: keys match


def test_loop_draws_two_unlabelled_streams_of_their_own(synthetic_prepared, tmp_path):
    trainer = Trainer(short_run_config("unimatch"), synthetic_prepared, tmp_path / "run",
                      progress=False)
    labelled, unlabelled = trainer.open_streams()
    assert len(labelled) == 1 and len(unlabelled) == 2
    first = [[next(s)["index"].tolist() for s in unlabelled] for _ in range(4)]
    assert any(a != b for a, b in first)                 # two streams, two seeds
    trainer.step = 2                                     # a resumed run restarts at its step
    _, again = trainer.open_streams()
    assert [[next(s)["index"].tolist() for s in again] for _ in range(2)] == first[2:]
