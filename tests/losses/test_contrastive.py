"""Pixel contrastive loss: hand-computed InfoNCE and the sampling rules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import semiseg_helpers  # noqa: F401
from semiseg_helpers.classes import IGNORE_INDEX
from semiseg_helpers.losses.contrastive import (
    label_class_probability,
    pixel_contrastive_loss,
    select_anchors,
)

HARD, EASY = 0.5, 0.99          # strong-view confidences below / above 0.97


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _row(vectors: list[list[float]], labels: list[int], strong: list[float],
         weak: list[float] | None = None):
    """A batch of one 1 x N map: rep (1, D, 1, N), labels, weak and strong conf."""
    rep = torch.tensor(vectors, dtype=torch.float32).T[None, :, None, :].contiguous()
    rep.requires_grad_(True)
    n = len(labels)
    weak_conf = torch.tensor(weak if weak is not None else [1.0] * n).view(1, 1, n)
    return (rep, torch.tensor(labels).view(1, 1, n), weak_conf,
            torch.tensor(strong).view(1, 1, n))


def _random_case(seed: int, classes: int = 3, size: int = 6, dim: int = 5):
    torch.manual_seed(seed)
    rep = torch.randn(2, dim, size, size, requires_grad=True)
    labels = torch.randint(0, classes, (2, size, size))
    labels[0, 0] = IGNORE_INDEX
    weak = torch.rand(2, size, size)
    strong = torch.rand(2, size, size)
    return rep, labels, weak, strong


def test_infonce_matches_a_hand_computed_toy_embedding() -> None:
    # Class 0: (3, 0) and (0, 2); class 1: (-5, 0). Only pixel 0 is hard.
    # q = (1, 0); the class-0 mean embedding is (1.5, 1), so cos(q, positive)
    # = 1.5 / sqrt(3.25); every negative is (-1, 0), cos = -1. Two valid
    # classes, one with an anchor: ReCo divides the class sum by |C| = 2.
    rep, labels, weak, strong = _row([[3, 0], [0, 2], [-5, 0]], [0, 0, 1],
                                     [HARD, EASY, EASY])
    result = pixel_contrastive_loss(rep, labels, weak, strong, num_negatives=2,
                                    temperature=0.5, generator=_gen())
    positive, negative = (1.5 / math.sqrt(3.25)) / 0.5, -1 / 0.5
    expected = -math.log(math.exp(positive) / (math.exp(positive) + 2 * math.exp(negative))) / 2
    assert result.loss.item() == pytest.approx(expected, rel=1e-5)
    assert result.anchors.index.tolist() == [0]
    assert result.negative_index.tolist() == [[2, 2]]
    assert (result.num_anchors, result.num_classes) == (1, 2)


def test_loss_averages_anchors_within_a_class_then_sums_over_valid_classes() -> None:
    rep, labels, weak, strong = _random_case(seed=3)
    result = pixel_contrastive_loss(rep, labels, weak, strong, num_anchors=30,
                                    num_negatives=6, temperature=0.3, generator=_gen(1))
    # Classes with different anchor counts tell "per class, then over
    # classes" apart from a plain mean over all anchors.
    assert result.anchors.per_class.unique().numel() >= 2
    feats = F.normalize(rep.detach().permute(0, 2, 3, 1).reshape(-1, rep.shape[1]), dim=1)
    flat = labels.flatten()
    valid = (flat != IGNORE_INDEX) & (weak.flatten() > 0.7)
    per_class: dict[int, list[float]] = {}
    for anchor, cls, negatives in zip(result.anchors.index.tolist(),
                                      result.anchors.classes.tolist(),
                                      result.negative_index.tolist()):
        raw = rep.detach().permute(0, 2, 3, 1).reshape(-1, rep.shape[1])
        mean = F.normalize(raw[valid & (flat == cls)].mean(0), dim=0)
        q = feats[anchor]
        logits = torch.cat([(q @ mean)[None], feats[negatives] @ q]) / 0.3
        per_class.setdefault(cls, []).append(-logits.log_softmax(0)[0].item())
    num_valid_classes = flat[valid].unique().numel()
    expected = sum(sum(v) / len(v) for v in per_class.values()) / num_valid_classes
    assert len(per_class) >= 2
    assert result.loss.item() == pytest.approx(expected, rel=1e-5)


def test_active_anchors_are_exactly_the_reliable_but_hard_pixels() -> None:
    #          0     1     2     3     4     5     6     7
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    weak = [0.9, 0.70, 0.9, 0.9, 1.0, 0.9, 0.71, 0.6]     # 0.70 is not > 0.7
    strong = [0.1, 0.10, 0.97, 0.96, 0.5, 0.99, 0.2, 0.1]  # 0.97 is not < 0.97
    rep, labels_t, weak_t, strong_t = _row([[1.0, float(i)] for i in range(8)],
                                           labels, strong, weak)
    result = pixel_contrastive_loss(rep, labels_t, weak_t, strong_t, generator=_gen())
    assert sorted(result.anchors.index.tolist()) == [0, 3, 4, 6]
    assert result.anchors.per_class.tolist() == [2, 2, 0, 0]
    randomly = pixel_contrastive_loss(rep, labels_t, weak_t, strong_t, active_query=False,
                                      generator=_gen())
    assert sorted(randomly.anchors.index.tolist()) == [0, 2, 3, 4, 5, 6]


def test_select_anchors_caps_each_class_without_replacement_uniformly() -> None:
    labels = torch.tensor([[[0, 0, 0, 0, 0, 1, 1, 2]]])
    candidates = torch.tensor([[[True, True, True, True, True, True, False, True]]])
    hits = torch.zeros(8)
    for seed in range(400):
        chosen = select_anchors(candidates, labels, num_anchors=2, generator=_gen(seed))
        assert chosen.per_class.tolist() == [2, 1, 1, 0]
        assert chosen.index.unique().numel() == 4
        assert torch.equal(labels.flatten()[chosen.index], chosen.classes)
        hits[chosen.index] += 1
    # Class 0 has 5 candidates for 2 slots: each is picked 2/5 of the time.
    torch.testing.assert_close(hits[:5] / 400, torch.full((5,), 0.4), atol=0.08, rtol=0)
    assert hits[5] == 400 and hits[6] == 0 and hits[7] == 400


def test_negatives_are_valid_and_never_of_the_anchor_class() -> None:
    rep, labels, weak, strong = _random_case(seed=5, classes=4, size=8)
    flat, flat_weak = labels.flatten(), weak.flatten()
    for seed, active in [(0, True), (1, False), (2, True)]:
        result = pixel_contrastive_loss(rep, labels, weak, strong, num_anchors=8,
                                        num_negatives=64, active_key=active,
                                        generator=_gen(seed))
        negatives = result.negative_index
        assert negatives.shape == (result.num_anchors, 64)
        assert torch.all(flat[negatives] != result.anchors.classes[:, None])
        assert torch.all(flat[negatives] != IGNORE_INDEX)
        assert torch.all(flat_weak[negatives] > 0.7)


def _three_classes(counts: tuple[int, int, int]):
    """Class 0 (anchors) at 0 deg, class 1 at 30 deg (close), class 2 at 180 deg (far)."""
    angles = {0: 0.0, 1: math.pi / 6, 2: math.pi}
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    vectors = [[math.cos(angles[c]), math.sin(angles[c])] for c in labels]
    strong = [HARD if c == 0 else EASY for c in labels]
    return _row(vectors, labels, strong)


def test_active_keys_draw_most_negatives_from_the_confusable_class() -> None:
    rep, labels, weak, strong = _three_classes((4, 3, 3))
    result = pixel_contrastive_loss(rep, labels, weak, strong, num_negatives=512,
                                    temperature=0.5, generator=_gen(7))
    from_close = (labels.flatten()[result.negative_index] == 1).float().mean().item()
    # softmax([cos 30 deg, cos 180 deg] / 0.5) gives the close class this share.
    expected = 1 / (1 + math.exp((-1 - math.cos(math.pi / 6)) / 0.5))
    assert expected > 0.97
    assert from_close == pytest.approx(expected, abs=0.01)


def test_random_keys_draw_negatives_in_proportion_to_pixel_counts() -> None:
    rep, labels, weak, strong = _three_classes((4, 1, 3))
    result = pixel_contrastive_loss(rep, labels, weak, strong, num_negatives=512,
                                    active_key=False, generator=_gen(7))
    from_close = (labels.flatten()[result.negative_index] == 1).float().mean().item()
    assert from_close == pytest.approx(1 / 4, abs=0.03)


@pytest.mark.parametrize("case", ["one class", "nothing labelled", "teacher unsure",
                                  "nothing hard"])
def test_degenerate_batches_give_exact_zero_never_nan(case: str) -> None:
    rep, labels, weak, strong = _random_case(seed=2)
    if case == "one class":
        labels = torch.where(labels == IGNORE_INDEX, labels, 1)
    elif case == "nothing labelled":
        labels = torch.full_like(labels, IGNORE_INDEX)
    elif case == "teacher unsure":
        weak = torch.full_like(weak, 0.7)
    else:
        strong = torch.full_like(strong, 0.97)
    result = pixel_contrastive_loss(rep, labels, weak, strong, generator=_gen())
    assert result.loss.item() == 0.0
    assert result.num_anchors == 0
    result.loss.backward()
    assert torch.equal(rep.grad, torch.zeros_like(rep))


def test_gradient_reaches_the_representation_only_through_the_queries() -> None:
    rep, labels, weak, strong = _random_case(seed=4, size=8)
    result = pixel_contrastive_loss(rep, labels, weak, strong, num_anchors=3,
                                    num_negatives=16, generator=_gen(3))
    result.loss.backward()
    touched = rep.grad.abs().sum(dim=1).flatten() > 0
    expected = torch.zeros_like(touched)
    expected[result.anchors.index] = True
    assert result.num_anchors > 0
    assert torch.equal(touched, expected)


def test_same_generator_state_gives_the_same_loss() -> None:
    rep, labels, weak, strong = _random_case(seed=6)
    first = pixel_contrastive_loss(rep, labels, weak, strong, generator=_gen(11))
    again = pixel_contrastive_loss(rep, labels, weak, strong, generator=_gen(11))
    assert torch.equal(first.loss, again.loss)
    assert torch.equal(first.negative_index, again.negative_index)


def test_label_class_probability_reads_the_label_column() -> None:
    logits = torch.log(torch.tensor([[0.7, 0.1], [0.2, 0.3], [0.1, 0.6]]))[None, :, None, :]
    labels = torch.tensor([[[0, IGNORE_INDEX]]])
    probability = label_class_probability(logits, labels)
    torch.testing.assert_close(probability, torch.tensor([[[0.7, 0.0]]]))
    confidently_wrong = label_class_probability(logits, torch.tensor([[[2, 1]]]))
    torch.testing.assert_close(confidently_wrong, torch.tensor([[[0.1, 0.3]]]))


def test_mismatched_shapes_are_named() -> None:
    rep, labels, weak, strong = _random_case(seed=0)
    with pytest.raises(ValueError, match="strong_conf"):
        pixel_contrastive_loss(rep, labels, weak, strong[:, :3])

