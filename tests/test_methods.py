"""Methods: the EMA teacher's arithmetic and Semi-SegDefect's step with every switch."""

import pytest
import torch
from torch import nn

from semiseg_helpers.classes import IGNORE_INDEX, NUM_CLASSES
from semiseg_helpers.config import make_config
from semiseg_helpers.methods import Batch, build_method, ema_decay, ema_update


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
