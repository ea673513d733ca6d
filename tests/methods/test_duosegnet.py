"""Duo-SegNet: disjoint labelled halves with a full batch each, cross pseudo
supervision, soft Dice with gradient, the critic's min-max in one backward
and its own RMSprop, network A as the inference model (the ensemble as an
option), its config section, and a short training run through the loop."""

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from semiseg_helpers.classes import IGNORE_INDEX, NUM_CLASSES
from semiseg_helpers.data.dataset import ManifestDataset
from semiseg_helpers.losses import supervised_ce
from semiseg_helpers.methods import METHODS, Batch, build_method
from semiseg_helpers.methods.duosegnet import (
    DuoEnsemble,
    DuoSegNet,
    critic_input,
    cross_pseudo_ce,
    partition_by_source,
    sigmoid_rampup,
    soft_dice_loss,
    weighted_bce,
)
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


@pytest.fixture(scope="module")
def method():
    return tiny_method("duosegnet")


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


# ---------------------------------------------------------------- pure pieces

def test_labelled_set_splits_into_disjoint_balanced_halves_by_source_photo():
    # photo 7 has three tiles, photos 2 and 5 two, photos 0, 1, 3 one
    sources = [7, 0, 2, 7, 5, 2, 1, 7, 5, 3]
    a, b = partition_by_source(sources)
    assert sorted(a + b) == list(range(10)) and not set(a) & set(b)
    photos_a, photos_b = {sources[i] for i in a}, {sources[i] for i in b}
    assert not photos_a & photos_b                      # every photo's tiles together
    assert abs(len(a) - len(b)) <= 1
    assert a == [0, 1, 3, 6, 7] and b == [2, 4, 5, 8, 9]   # largest photo first
    assert partition_by_source(sources) == [a, b]
    assert partition_by_source([4, 4, 4], 2) == [[0, 1, 2], []]


def test_labelled_partition_needs_two_photos(method):
    assert method.labelled_partition([0, 1, 1]) == [[1, 2], [0]]
    with pytest.raises(ValueError, match="photo"):
        method.labelled_partition([3, 3])


def test_sigmoid_rampup_schedule():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(100, 100) == 1.0 == sigmoid_rampup(500, 100)
    assert sigmoid_rampup(0, 0) == 1.0


def test_soft_dice_matches_a_hand_computed_value_and_ignores_invalid_pixels():
    # two classes, three pixels; the third is outside the image and must not count
    p_a = torch.tensor([[0.8, 0.2, 0.0], [0.2, 0.8, 1.0]]).view(1, 2, 1, 3)
    p_b = torch.tensor([[0.6, 0.6, 1.0], [0.4, 0.4, 0.0]]).view(1, 2, 1, 3)
    valid = torch.tensor([[[True, True, False]]])
    # class 0: 2 * (0.48 + 0.12) / (0.68 + 0.72); class 1: 2 * (0.08 + 0.32) / (0.68 + 0.32)
    expected = 1 - (1.2 / 1.4 + 0.8 / 1.0) / 2
    assert soft_dice_loss(p_a, p_b, valid, eps=0.0).item() == pytest.approx(expected)
    identical = soft_dice_loss(p_a, p_a, valid, eps=0.0)
    assert identical.item() == pytest.approx(0.0, abs=1e-7)


def test_soft_dice_carries_gradient_to_both_maps():
    p_a = torch.rand(2, 4, 5, 5).softmax(1).requires_grad_(True)
    p_b = torch.rand(2, 4, 5, 5).softmax(1).requires_grad_(True)
    soft_dice_loss(p_a, p_b, torch.ones(2, 5, 5, dtype=torch.bool)).backward()
    assert p_a.grad.abs().sum() > 0 and p_b.grad.abs().sum() > 0


def test_cross_pseudo_ce_targets_the_others_argmax_without_gradient_to_it():
    logits = torch.zeros(1, 4, 1, 3, requires_grad=True)
    other = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 0], [0, 0, 5.0]]).view(1, 4, 1, 3)
    other.requires_grad_(True)
    valid = torch.tensor([[[True, True, False]]])
    loss = cross_pseudo_ce(logits, other, valid)
    assert loss.item() == pytest.approx(math.log(4))        # uniform logits, 2 valid pixels
    loss.backward()
    assert other.grad is None
    # the gradient pushes each valid pixel towards the other's class: 0, then 1
    assert logits.grad[0, 0, 0, 0] < 0 and logits.grad[0, 1, 0, 1] < 0
    assert torch.equal(logits.grad[..., 2], torch.zeros(1, 4, 1))


def test_weighted_bce_by_hand():
    logits = torch.tensor([0.0, 2.0, -1.0])
    loss = weighted_bce(logits, 1.0, torch.tensor([1.0, 1.0, 0.0]))
    assert loss.item() == pytest.approx((math.log(2) + math.log1p(math.exp(-2))) / 2)
    assert weighted_bce(logits, 0.0, torch.zeros(3)).item() == 0.0


def test_critic_input_blanks_image_and_mask_outside_valid_pixels():
    images, masks = torch.ones(1, 3, 2, 2), torch.full((1, 4, 2, 2), 0.25)
    valid = torch.tensor([[[True, False], [True, True]]])
    x = critic_input(images, masks, valid)
    assert x.shape == (1, 7, 2, 2)
    assert torch.equal(x[0, :, 0, 1], torch.zeros(7))
    assert torch.equal(x[0, :3, 1, 1], torch.ones(3)) and x[0, 3, 1, 1] == 0.25


# ------------------------------------------------------------------ networks

def test_the_two_networks_start_different_but_reproducibly(method):
    a, b = dict(method.net_a.named_parameters()), dict(method.net_b.named_parameters())
    assert a.keys() == b.keys()
    assert not torch.equal(a["classifier.weight"], b["classifier.weight"])
    again = tiny_method("duosegnet")
    for name, p in again.net_b.named_parameters():
        assert torch.equal(p, b[name])


def test_inference_model_is_network_a_unless_the_ensemble_is_asked_for(method):
    assert method.config.duosegnet.inference == "a"
    assert method.inference_model() is method.net_a
    state = method.inference_model().state_dict()
    assert state.keys() == method.net_a.state_dict().keys()
    ensemble = tiny_method("duosegnet", **{"duosegnet.inference": "ensemble"})
    assert isinstance(ensemble.inference_model(), DuoEnsemble)
    with pytest.raises(ValueError, match="inference"):
        tiny_method("duosegnet", **{"duosegnet.inference": "b"})


def test_ensemble_logits_are_the_log_of_the_mean_probability(method):
    ensemble = method.ensemble
    assert isinstance(ensemble, DuoEnsemble)
    x = tiny_batches()[0].images
    ensemble.eval()
    with torch.no_grad():
        probs = ensemble(x, return_rep=False).logits.exp()
        expected = (method.net_a(x, return_rep=False).logits.softmax(1)
                    + method.net_b(x, return_rep=False).logits.softmax(1)) / 2
    torch.testing.assert_close(probs, expected)
    assert not method.net_a.training and not method.net_b.training
    ensemble.train()
    assert method.net_a.training and method.net_b.training
    with pytest.raises(ValueError):
        ensemble(x, perturb=True)


def test_ensemble_state_dict_round_trips_into_a_fresh_method(method):
    state = method.ensemble.state_dict()
    assert {k.split(".")[0] for k in state} == {"a", "b"}
    config = tiny_config("duosegnet", **{"duosegnet.inference": "ensemble"})
    fresh = build_method(config, NUM_CLASSES).inference_model()
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.b.classifier.weight, method.net_b.classifier.weight)


# ---------------------------------------------------------------- the step

def test_representation_heads_are_not_built(method):
    assert method.net_a.representation is None and method.net_b.representation is None


def test_training_step_logs_finite_terms_and_trains_every_player(method):
    method.zero_grad(set_to_none=True)
    out = method.training_step(*step_inputs(method), 0, torch.Generator().manual_seed(0))
    assert set(out.logs) >= {"loss_sup_a", "loss_sup_b", "loss_cps", "loss_dice", "loss_adv",
                             "loss_critic"}
    assert all(math.isfinite(v) for v in out.logs.values())
    out.loss.backward()
    for name, module in (("a", method.net_a), ("b", method.net_b), ("critic", method.critic)):
        grads = _grads(module)
        assert grads, name
        assert all(torch.isfinite(g).all() for g in grads.values()), name
        assert any(g.abs().sum() > 0 for g in grads.values()), name
    assert all(p.grad is not None for p in method.parameters())


def test_each_network_learns_from_its_own_labelled_batch(method):
    (half_a, half_b), unlabelled = step_inputs(method)
    out = method.training_step((half_a, half_b), unlabelled, 0, torch.Generator())
    with torch.no_grad():   # train mode: the same batch statistics as in the step
        logits_a, _ = method.predict(method.net_a, half_a.images, unlabelled.images)
        logits_b, _ = method.predict(method.net_b, half_b.images, unlabelled.images)
        swapped, _ = method.predict(method.net_a, half_b.images, unlabelled.images)
    assert out.logs["loss_sup_a"] == pytest.approx(supervised_ce(logits_a, half_a.labels).item())
    assert out.logs["loss_sup_b"] == pytest.approx(supervised_ce(logits_b, half_b.labels).item())
    assert supervised_ce(swapped, half_b.labels).item() != pytest.approx(out.logs["loss_sup_a"])


def test_step_needs_one_labelled_batch_per_network(method):
    labelled, unlabelled = tiny_batches()
    with pytest.raises(ValueError, match="two labelled batches"):
        method.training_step(labelled, unlabelled, 0, torch.Generator())


def test_ignored_labels_count_nowhere(method):
    (half_a, half_b), unlabelled = step_inputs(method)
    ignored = Batch(half_b.images, torch.full_like(half_b.labels, IGNORE_INDEX), half_b.valid,
                    half_b.source)                      # network B's batch: nothing labelled
    out = method.training_step((half_a, ignored), unlabelled, 0, torch.Generator())
    assert out.logs["loss_sup_b"] == 0.0 and out.logs["loss_sup_a"] > 0
    assert all(math.isfinite(v) for v in out.logs.values())


def test_dice_term_reaches_both_networks(method):
    _, unlabelled = tiny_batches()
    method.zero_grad(set_to_none=True)
    empty = unlabelled.images[:0]
    _, logits_a = method.predict(method.net_a, empty, unlabelled.images)
    _, logits_b = method.predict(method.net_b, empty, unlabelled.images)
    soft_dice_loss(logits_a.softmax(1), logits_b.softmax(1), unlabelled.valid).backward()
    for net in (method.net_a, method.net_b):
        assert net.classifier.weight.grad.abs().sum() > 0


def test_critic_gradients_come_only_from_the_critic_loss(method, monkeypatch):
    """Same inputs, adversarial weight 0.1 vs 0: the critic's gradients are equal,
    the networks' are not — the adversarial term never trains the critic."""
    batches = step_inputs(method)
    end_of_ramp = method.config.steps       # ramp factor 1
    config = method.config

    def step_grads(adv_weight):
        monkeypatch.setattr(method, "config", replace(
            config, duosegnet=replace(config.duosegnet, adv_weight=adv_weight)))
        method.zero_grad(set_to_none=True)
        method.training_step(*batches, end_of_ramp, torch.Generator()).loss.backward()
        return _grads(method.critic), _grads(method.net_a)

    critic_adv, net_adv = step_grads(0.1)
    critic_none, net_none = step_grads(0.0)
    assert critic_adv.keys() == critic_none.keys() and critic_adv
    for name in critic_adv:
        torch.testing.assert_close(critic_adv[name], critic_none[name])
    assert any(not torch.allclose(net_adv[n], net_none[n]) for n in net_adv)


def test_adversarial_term_alone_leaves_the_critic_without_gradient(method):
    _, unlabelled = tiny_batches()
    method.zero_grad(set_to_none=True)
    probs = torch.rand(2, NUM_CLASSES, 64, 64).softmax(1).requires_grad_(True)
    fake = critic_input(unlabelled.images, probs, unlabelled.valid)
    method.adversarial_loss(fake, fake, unlabelled.valid).backward()
    assert all(p.grad is None for p in method.critic.parameters())
    assert probs.grad.abs().sum() > 0


def test_critic_loss_sends_no_gradient_to_the_predictions(method):
    """Otherwise the critic's loss would teach the networks to look fake."""
    _, unlabelled = tiny_batches()
    probs = torch.rand(2, NUM_CLASSES, 64, 64).softmax(1).requires_grad_(True)
    real = critic_input(unlabelled.images, probs.detach(), unlabelled.valid)
    fake = critic_input(unlabelled.images, probs, unlabelled.valid)
    method.zero_grad(set_to_none=True)
    method.critic_loss(real, unlabelled.valid, fake, unlabelled.valid).backward()
    assert probs.grad is None
    assert all(p.grad is not None for p in method.critic.parameters())


def test_critic_loss_ignores_what_lies_outside_valid_pixels(method):
    _, unlabelled = tiny_batches()
    valid = unlabelled.valid                 # right-most 8 columns outside the image
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    real = critic_input(unlabelled.images, F.one_hot(labels, 4).permute(0, 3, 1, 2), valid)
    probs = torch.rand(2, NUM_CLASSES, 64, 64).softmax(1)
    changed = probs.clone()
    changed[..., -8:] = torch.rand(2, NUM_CLASSES, 64, 8)
    with torch.no_grad():
        loss = method.critic_loss(real, valid, critic_input(unlabelled.images, probs, valid),
                                  valid)
        loss_changed = method.critic_loss(real, valid,
                                          critic_input(unlabelled.images, changed, valid), valid)
    assert loss.item() == loss_changed.item()
    weights = method.patch_weights(valid, (8, 8))
    assert torch.equal(weights[..., -1], torch.zeros(2, 8)) and weights[..., :-1].eq(1).all()


def test_unsupervised_weights_ramp_up_over_a_fifth_of_training(method):
    steps = method.config.steps
    assert method.ramp(0) == pytest.approx(math.exp(-5))
    assert method.ramp(round(0.2 * steps)) == 1.0
    out = method.training_step(*step_inputs(method), 0, torch.Generator())
    logs = out.logs
    unsup = 0.4 * logs["loss_cps"] + 0.4 * logs["loss_dice"] + 0.1 * logs["loss_adv"]
    expected = logs["loss_sup_a"] + logs["loss_sup_b"] + math.exp(-5) * unsup + logs["loss_critic"]
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_config_weights_and_ramp_change_the_loss():
    method = tiny_method("duosegnet", **{"duosegnet.cps_weight": 1.0,
                                         "duosegnet.dice_weight": 0.0,
                                         "duosegnet.adv_weight": 0.5,
                                         "duosegnet.ramp_fraction": 0.0})
    assert method.ramp(0) == 1.0
    out = method.training_step(*step_inputs(method), 0, torch.Generator())
    logs = out.logs
    expected = (logs["loss_sup_a"] + logs["loss_sup_b"] + logs["loss_cps"]
                + 0.5 * logs["loss_adv"] + logs["loss_critic"])
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert tiny_method("duosegnet", **{"duosegnet.critic_width": 8}).critic.net[0].out_channels == 8


def test_critic_has_its_own_rmsprop_at_the_published_lr(method):
    optimizers = method.optimizers()
    assert set(optimizers) == {"main", "critic"}
    critic = optimizers["critic"]
    assert isinstance(critic, torch.optim.RMSprop)
    assert critic.param_groups[0]["lr"] == 5e-5
    critic_params = {id(p) for p in method.critic.parameters()}
    assert {id(p) for g in critic.param_groups for p in g["params"]} == critic_params
    main = optimizers["main"]
    assert isinstance(main, torch.optim.AdamW) and main.param_groups[0]["lr"] == 1e-3
    assert {id(p) for g in main.param_groups for p in g["params"]} == {
        id(p) for p in method.ensemble.parameters()}
    other = tiny_method("duosegnet", **{"duosegnet.critic_lr": 2e-4,
                                        "duosegnet.critic_optimizer": "adamw"}).optimizers()
    assert isinstance(other["critic"], torch.optim.AdamW)
    assert other["critic"].param_groups[0]["lr"] == 2e-4
    with pytest.raises(ValueError, match="critic_optimizer"):
        tiny_method("duosegnet", **{"duosegnet.critic_optimizer": "sgd"})


def test_loop_gives_each_network_a_full_batch_from_its_own_half(synthetic_prepared, tmp_path):
    config = short_run_config("duosegnet")
    trainer = Trainer(config, synthetic_prepared, tmp_path / "run", progress=False)
    sources = ManifestDataset(trainer.root, trainer.labelled).sources
    half_a, half_b = trainer.labelled_parts
    assert sorted(half_a + half_b) == list(range(len(sources)))
    assert not {sources[i] for i in half_a} & {sources[i] for i in half_b}
    labelled, unlabelled = trainer.open_streams()
    assert len(labelled) == 2 and len(unlabelled) == 1
    drawn = []
    for _ in range(8):
        batches = [next(stream) for stream in labelled]
        for batch, half in zip(batches, (half_a, half_b)):
            assert len(batch["index"]) == config.data.batch_size          # a full batch
            assert set(batch["index"].tolist()) <= set(half)               # its own half
            assert {sources[i] for i in batch["index"].tolist()} == set(batch["source"].tolist())
        drawn.append([b["index"].tolist() for b in batches])
    trainer.step = 5                                    # a resumed run restarts at its step
    again, _ = trainer.open_streams()
    assert [[next(s)["index"].tolist() for s in again] for _ in range(3)] == drawn[5:]


def test_built_by_name():
    assert METHODS["duosegnet"] is DuoSegNet
    assert isinstance(build_method(tiny_config("duosegnet"), NUM_CLASSES), DuoSegNet)


def test_short_training_run_saves_and_reloads_network_a(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    config = short_run_config("duosegnet")
    summary = train(config, data, tmp_path / "run", progress=False)
    assert summary["method"] == "duosegnet" and summary["best_step"] in (2, 4)
    assert math.isfinite(summary["val"]["miou"]) and math.isfinite(summary["test"]["miou"])
    run = RunDir(tmp_path / "run")
    logged = [m for m in run.read_metrics() if "loss_critic" in m]
    assert logged and all(math.isfinite(m["loss"]) for m in logged)
    assert all(m["lr_critic"] < m["lr"] for m in logged)
    saved = json.loads(run.config.read_text())["duosegnet"]
    assert saved["inference"] == "a" and saved["critic_lr"] == 5e-5
    fresh = build_method(config, NUM_CLASSES).inference_model()
    fresh.load_state_dict(torch.load(run.best, weights_only=True))   # strict: keys match
    # both optimisers' states are checkpointed (the critic's is RMSprop's)
    state = torch.load(run.last, weights_only=False)
    assert set(state["optimizers"]) == set(state["schedulers"]) == {"main", "critic"}
    assert all("square_avg" in s for s in state["optimizers"]["critic"]["state"].values())
