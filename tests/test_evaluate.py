"""IoU over a whole evaluation set, and sliding-window inference."""

import numpy as np
import pytest
import torch

from semiseg_helpers.classes import IGNORE_INDEX
from semiseg_helpers.evaluate import (
    confusion_matrix,
    iou_per_class,
    sliding_window_logits,
    summarise,
)


def test_confusion_and_iou_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 1, IGNORE_INDEX]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 3]])
    cm = confusion_matrix(pred, target, num_classes=4)
    assert cm.sum() == 7  # the ignored pixel counts nowhere
    assert cm[1, 1] == 2 and cm[1, 0] == 1 and cm[0, 1] == 1 and cm[2, 0] == 1
    iou = iou_per_class(cm)
    # crack: TP 2, FP 1 (a background pixel), FN 1 -> 2/4
    assert iou[1] == pytest.approx(0.5)
    # spalling: TP 1, FN 1 -> 1/2; rebar: never in truth or prediction (ignored pixel) -> NaN
    assert iou[2] == pytest.approx(0.5) and np.isnan(iou[3])
    s = summarise(cm, ["crack", "spalling"])
    assert s["miou"] == pytest.approx(0.5) and s["iou"] == {"crack": 0.5, "spalling": 0.5}


def test_iou_accumulates_over_the_set_not_per_image():
    # image 1: a big crack, found; image 2: a tiny crack, missed
    t1, p1 = torch.ones(10, 10, dtype=torch.long), torch.ones(10, 10, dtype=torch.long)
    t2, p2 = torch.zeros(10, 10, dtype=torch.long), torch.zeros(10, 10, dtype=torch.long)
    t2[0, 0] = 1
    cm = confusion_matrix(p1, t1, 4) + confusion_matrix(p2, t2, 4)
    assert iou_per_class(cm)[1] == pytest.approx(100 / 101)  # a per-image mean would say 0.5


def _pointwise(x):
    """A 'model' whose logit at a pixel depends only on that pixel."""
    return torch.stack([x[:, 0], x[:, 1] * 2, x[:, 2] - x[:, 0], x.sum(1)], 1)


@pytest.mark.parametrize("shape", [(1, 3, 50, 70), (2, 3, 130, 97)])
def test_sliding_window_matches_a_single_pass_for_a_pointwise_model(shape):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    out = sliding_window_logits(_pointwise, x, window=48, num_classes=4)
    assert out.shape == (shape[0], 4, *shape[2:])
    torch.testing.assert_close(out, _pointwise(x))


def test_sliding_window_pads_to_the_encoder_stride():
    seen = []

    def model(x):
        seen.append(tuple(x.shape[-2:]))
        return _pointwise(x)

    sliding_window_logits(model, torch.rand(1, 3, 40, 45), window=64, num_classes=4)
    assert seen == [(64, 64)]


def test_miou_is_over_the_classes_the_ground_truth_has_for_every_model():
    # the split has crack and spalling, no rebar: one model predicts rebar, one does not
    target = torch.tensor([[0, 0, 1, 1, 2, 2]])
    quiet = torch.tensor([[0, 0, 1, 0, 2, 2]])
    noisy = torch.tensor([[0, 3, 1, 0, 2, 2]])     # a background pixel called rebar
    classes = ["crack", "spalling", "rebar"]
    a = summarise(confusion_matrix(quiet, target, 4), classes)
    b = summarise(confusion_matrix(noisy, target, 4), classes)
    assert a["miou_classes"] == b["miou_classes"] == ["crack", "spalling"]
    assert np.isnan(a["iou"]["rebar"]) and np.isnan(b["iou"]["rebar"])
    # the same denominator: the rebar false positive costs no MIoU (it was background)
    assert a["miou"] == b["miou"] == pytest.approx((0.5 + 1.0) / 2)
    # a missed class that the split has still counts, as 0
    missed = summarise(confusion_matrix(torch.tensor([[0, 0, 1, 1, 0, 0]]), target, 4), classes)
    assert missed["iou"]["spalling"] == 0.0 and missed["miou"] == pytest.approx(0.5)


def test_shared_inference_helpers():
    from types import SimpleNamespace

    from semiseg_helpers.evaluate import defect_classes, eval_window, logits_fn

    assert defect_classes({"source_classes": ["background", "crack", "spalling"]}) == \
        ["crack", "spalling"]
    data = SimpleNamespace(crop_size=96, eval_size=None)
    assert eval_window(SimpleNamespace(data=data)) == 96
    assert eval_window(SimpleNamespace(data=SimpleNamespace(crop_size=96, eval_size=224))) == 224

    class Net(torch.nn.Module):
        def forward(self, x, return_rep=True):
            assert return_rep is False
            return SimpleNamespace(logits=x.to(torch.bfloat16))

    out = logits_fn(Net())(torch.ones(1, 4, 2, 2))
    assert out.dtype == torch.float32 and out.shape == (1, 4, 2, 2)
