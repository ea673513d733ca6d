"""Methods: the contract every registered method keeps (one step, gradients,
optimisers, a short run whose best checkpoint reloads for inference), the EMA
teacher's arithmetic and Semi-SegDefect's step with every switch."""

import json
import math

import pytest
import torch
from torch import nn

from semiseg_helpers.classes import IGNORE_INDEX, NUM_CLASSES
from semiseg_helpers.config import make_config
from semiseg_helpers.methods import METHODS, Batch, build_method, ema_decay, ema_update
from semiseg_helpers.methods.base import encoder_head_groups
from semiseg_helpers.predict import load_run_model
from semiseg_helpers.runs import RunDir
from semiseg_helpers.train import Trainer
from tests.methods import short_run_config, step_inputs, tiny_config, tiny_method

# ------------------------------------------------------------------ contract

def _frozen(method: nn.Module) -> set[str]:
    return {n for n, p in method.named_parameters() if not p.requires_grad}


def _step(name):
    method = tiny_method(name)
    labelled, unlabelled = step_inputs(method)
    method.zero_grad(set_to_none=True)
    return method, method.training_step(labelled, unlabelled, 0,
                                         torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_contract_logs_are_plain_finite_floats(name):
    _, out = _step(name)
    assert out.logs and all(type(v) is float and math.isfinite(v) for v in out.logs.values())


@pytest.mark.parametrize("name", sorted(METHODS))
def test_contract_a_step_gives_a_finite_loss_and_exact_gradients(name):
    method, out = _step(name)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in out.logs.values())
    out.loss.backward()
    with_grad = {n for n, p in method.named_parameters() if p.grad is not None}
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert not with_grad & _frozen(method)              # e.g. the mean teacher: none
    assert trainable <= with_grad, trainable - with_grad  # no parameter left untrained
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_contract_optimizers_hold_every_trainable_parameter_once(name):
    method = tiny_method(name)
    optimizers = method.optimizers()
    held = [id(p) for o in optimizers.values() for g in o.param_groups for p in g["params"]]
    assert len(held) == len(set(held))
    assert set(held) == {id(p) for p in method.parameters() if p.requires_grad}
    first = next(iter(optimizers.values()))
    assert first.param_groups[0]["lr"] == method.config.optim.lr


@pytest.mark.parametrize("name", sorted(METHODS))
def test_contract_sgd_with_a_head_scale_splits_every_network_at_its_encoder(name):
    method = tiny_method(name, **{"optim.name": "sgd", "optim.head_lr_scale": 10.0,
                                  "optim.weight_decay": 1e-4})
    main = method.optimizers()["main"]
    assert isinstance(main, torch.optim.SGD) and main.defaults["momentum"] == 0.9
    encoder, head = main.param_groups
    assert (encoder["lr"], head["lr"]) == pytest.approx((1e-3, 1e-2))
    names = {id(p): n for n, p in method.named_parameters()}
    assert all("encoder" in names[id(p)].split(".") for p in encoder["params"])
    assert head["params"] and not any("encoder" in names[id(p)].split(".")
                                      for p in head["params"])


def test_network_optimizer_defaults_to_one_adamw_group():
    main = tiny_method("supervised").optimizers()["main"]
    assert isinstance(main, torch.optim.AdamW) and len(main.param_groups) == 1


@pytest.mark.parametrize("key,value,message", [
    ("optim.name", "adam", "optim.name must be one of"),
    ("optim.head_lr_scale", 0.0, "optim.head_lr_scale must be positive"),
    ("optim.momentum", 1.0, "optim.momentum must be in"),
    ("optim.lr", -1e-3, "optim.lr must be positive"),
    ("optim.weight_decay", -1.0, "optim.weight_decay must be >= 0"),
])
def test_optimiser_settings_out_of_range_are_named(key, value, message):
    with pytest.raises(ValueError, match=message):
        make_config("smoke", {key: value}, method="supervised")


def test_head_scale_without_an_encoder_is_an_error():
    head = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="needs encoder and non-encoder"):
        encoder_head_groups(list(head.named_parameters()), 1e-3, 10.0)


def test_the_poly_schedule_keeps_the_head_at_its_multiple(synthetic_prepared, tmp_path):
    config = tiny_config("supervised", steps=4, eval_every=4, checkpoint_every=4, threads=1,
                         **{"optim.name": "sgd", "optim.head_lr_scale": 10.0})
    trainer = Trainer(config, synthetic_prepared, tmp_path / "run", progress=False)
    trainer.fit(stop_after=2)
    encoder, head = trainer.optimizers["main"].param_groups
    assert encoder["lr"] == pytest.approx(1e-3 * 0.5 ** config.optim.poly_power)
    assert head["lr"] == pytest.approx(10 * encoder["lr"])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_contract_a_short_run_reloads_its_best_checkpoint_for_inference(name, synthetic_prepared,
                                                                        tmp_path):
    torch.set_num_threads(1)
    config = short_run_config(name)
    trainer = Trainer(config, synthetic_prepared, tmp_path / "run", progress=False)
    summary = trainer.fit()
    run = RunDir(tmp_path / "run")
    assert run.summary.is_file() and summary["method"] == name
    assert math.isfinite(summary["val"]["miou"])
    saved = json.loads(run.config.read_text())
    assert {"semi", "unimatch", "duosegnet", "optim"} <= set(saved)    # every method's section
    model, _ = load_run_model(run.path, device="cpu")
    trained = trainer.method.inference_model().eval()   # holds the best weights after fit
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x, return_rep=False).logits,
                                   trained(x, return_rep=False).logits)


# ------------------------------------------------------------------ the rest


def test_ema_decay_schedule():
    assert ema_decay(0, 0.99) == 0.0  # the teacher starts as the student
    assert ema_decay(1, 0.99) == pytest.approx(0.5)
    assert ema_decay(9, 0.99) == pytest.approx(0.9)
    assert ema_decay(10_000, 0.99) == 0.99


def test_ema_update_arithmetic_on_parameters_and_buffers():
    teacher, student = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([1.0, 2.0]))
        student.weight.copy_(torch.tensor([3.0, 6.0]))
        teacher.running_mean.copy_(torch.tensor([0.0, 0.0]))
        student.running_mean.copy_(torch.tensor([1.0, -1.0]))
    student.num_batches_tracked.fill_(7)
    ema_update(teacher, student, 0.75)
    torch.testing.assert_close(teacher.weight.data, torch.tensor([1.5, 3.0]))
    torch.testing.assert_close(teacher.running_mean, torch.tensor([0.25, -0.25]))
    assert int(teacher.num_batches_tracked) == 7


def _batches(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2 * n, 3, size, size, generator=g)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    labels[:, 10:13, :] = 1
    labels[:, 30:50, 20:40] = 2
    valid = torch.ones(n, size, size, dtype=torch.bool)
    return (Batch(images[:n], labels, valid),
            Batch(images[n:], torch.full_like(labels, IGNORE_INDEX), valid))


def _method(**overrides):
    base = {"model.pretrained": None, "model.encoder": "convnext_zepto_rms",
            "model.aspp_rates": [1, 2, 3]}
    return build_method(make_config("smoke", {**base, **overrides}, method="semisegdefect"),
                        NUM_CLASSES)


def test_semisegdefect_step_logs_every_term_and_trains_only_the_student():
    method = _method()
    labelled, unlabelled = _batches()
    out = method.training_step(labelled, unlabelled, 0, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    for key in ("loss_sup", "loss_unsup", "loss_contrast", "w_u", "anchors", "pseudo_conf"):
        assert key in out.logs
    assert 0.0 <= out.logs["w_u"] <= 1.0 and out.logs["anchors"] > 0
    out.loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    assert any(p.grad is not None for p in method.student.parameters())
    assert not method.teacher.training
    method.train()
    assert method.student.training and not method.teacher.training


@pytest.mark.parametrize("switch, zero_key", [("semi.contrastive_loss", "loss_contrast"),
                                              ("semi.unsupervised_loss", "loss_unsup"),
                                              ("semi.supervised_loss", "loss_sup")])
def test_loss_branches_switch_off(switch, zero_key):
    method = _method(**{switch: False})
    out = method.training_step(*_batches(), 0, torch.Generator().manual_seed(0))
    assert out.logs[zero_key] == 0.0
    assert torch.isfinite(out.loss)


def test_fixed_unsupervised_weight_replaces_the_confidence_fraction():
    method = _method(**{"semi.unsup_weight": 1.0})
    out = method.training_step(*_batches(), 0, torch.Generator().manual_seed(0))
    assert out.logs["w_u"] == 1.0


def test_contrastive_needs_a_representation():
    with pytest.raises(ValueError, match="representation"):
        _method(**{"model.arch": "deeplabv3plus"})


def test_after_step_moves_the_teacher_towards_the_student():
    method = _method()
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.teacher.parameters()]
    method.after_optimizer_step(0)  # decay 0: the teacher becomes the student
    for t, s in zip(method.teacher.parameters(), method.student.parameters()):
        torch.testing.assert_close(t, s)
    assert any(not torch.equal(b, t) for b, t in zip(before, method.teacher.parameters()))
