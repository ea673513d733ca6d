"""Duo-SegNet (Peiris et al., MICCAI 2021): two segmentation networks that
teach each other on unlabelled images, and a critic — a Table 9 baseline.

Networks A and B share the configured architecture but not their
initialisation. Every setting is in ``config.duosegnet``
(:class:`~semiseg_helpers.config.DuoSegNetConfig`). One step:

1. the labelled set is split once into two disjoint halves by source photo
   (:func:`partition_by_source`; the "dual views" of the labelled data), and
   the loop draws a *full* labelled batch from each half every step, from a
   stream of its own (:meth:`DuoSegNet.labelled_partition`): A learns only
   from its half, B only from the other, as the public code gives each
   network its own labelled loader;
2. each network sees ``[its labelled batch, x_u]`` in one forward pass;
3. on the unlabelled weak view ``x_u`` each network is supervised by the
   other's hard pseudo-labels (cross pseudo supervision: CE against the
   argmax of the other's softmax, detached), and a soft Dice term pulls the
   two probability maps together;
4. a critic learns to tell ground-truth masks from predicted ones, each shown
   with its image; the networks get an adversarial term that makes their
   unlabelled predictions look real to it.

Loss = sup_A + sup_B + r(t) · (0.4·cps + 0.4·dice + 0.1·adv) + critic, with
``r(t)`` the sigmoid ramp-up of :func:`sigmoid_rampup` over the first 20 % of
training. Every pixel outside the image or labelled
:data:`~semiseg_helpers.classes.IGNORE_INDEX` is left out of every term.

What is evaluated, selected and saved as ``best.pt`` is network A alone,
as the public code evaluates one network (``duosegnet.inference=a``);
``duosegnet.inference=ensemble`` evaluates both networks' averaged softmax
(:class:`DuoEnsemble`) instead, a different model to be reported as such.

Departures from the public Duo-SegNet code, which is binary-only: classes
are multi-class (softmax, argmax pseudo-labels, per-class Dice); its
cross-network consistency goes through ``.item()`` and so carries no
gradient, here both the pseudo-label CE and the Dice term do; its critic is a
stack of 1×1 convolutions on the mask alone, which can judge only how sharp
each pixel is, while this one sees (image, mask) pairs through 4×4 strided
convolutions and judges patches, and learns its fakes from predictions on
the labelled images (as the public critic does) and on the unlabelled ones
(the images the adversarial term has it judge); the public consistency weight 0.4 is kept
for both consistency terms, while its adversarial 0.2 (paired with that
per-pixel critic) becomes 0.1 — our choice, at the small end where
adversarial segmentation losses are usually weighted, so the critic shapes
predictions without overriding the segmentation losses; the supervised
loss is the CE every Table 9 method uses (the public code adds a Dice term
to BCE); the ramp-up is new (the public consistency term had no gradient,
so it never needed one).

Two optimisers, as published — the networks' (the loop's AdamW with
``config.optim``) and the critic's (RMSprop at lr 5e-5,
``duosegnet.critic_*``), both under the poly schedule
(:meth:`DuoSegNet.optimizers`) — but one backward, which is how the
min-max game fits in one loss:

* the critic's loss is computed on *detached* predictions, so its
  gradient reaches only the critic's parameters;
* the networks' adversarial term runs the critic through
  :func:`torch.func.functional_call` with *detached* critic parameters, so
  its gradient reaches only the networks (through their predictions) and
  never pushes the critic towards calling fakes real.

Summing the two gives every parameter exactly the gradient of its own
player's objective, which is what the public code's two backward passes
compute.

Halves by photo rather than by tile keep the tiles of one photo with one
network, so the two networks never share an image region.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from semiseg_helpers.classes import IGNORE_INDEX
from semiseg_helpers.losses import pseudo_label_ce, supervised_ce
from semiseg_helpers.methods.base import Batch, Method, StepOutput, build_network
from semiseg_helpers.models import SegOutput

__all__ = ["DuoEnsemble", "DuoSegNet", "MaskCritic", "critic_input", "cross_pseudo_ce",
           "partition_by_source", "second_network_seed", "sigmoid_rampup", "soft_dice_loss",
           "weighted_bce"]


# --------------------------------------------------------------------------
# pure pieces
# --------------------------------------------------------------------------

def partition_by_source(sources: Sequence[int], parts: int = 2) -> list[list[int]]:
    """Sample indices in ``parts`` disjoint groups that keep every photo's samples
    together and hold as equal a number of samples as whole photos allow.

    Photos are dealt, most samples first (ties: first appearance first), each
    to the group with the fewest samples so far (ties: the lower group).
    Deterministic: the same labelled list always splits the same way. Each
    group's indices are ascending.
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    members: dict[int, list[int]] = {}
    for i, source in enumerate(sources):
        members.setdefault(int(source), []).append(i)
    groups: list[list[int]] = [[] for _ in range(parts)]
    # dicts keep first appearance order; sorted() is stable
    for photo in sorted(members, key=lambda key: -len(members[key])):
        smallest = min(range(parts), key=lambda g: len(groups[g]))
        groups[smallest] += members[photo]
    return [sorted(group) for group in groups]


def sigmoid_rampup(step: int, length: int) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = min(step / length, 1)``: ~0.007 at step 0,
    1 from ``length`` on (Laine & Aila's schedule). ``length <= 0``: always 1.

    The unsupervised terms start near zero because the networks' early
    pseudo-labels and predictions are noise, and the untrained critic's
    verdict is meaningless.
    """
    if length <= 0:
        return 1.0
    t = min(max(step, 0) / length, 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def cross_pseudo_ce(logits: Tensor, other_logits: Tensor, valid: Tensor) -> Tensor:
    """CE of ``logits`` against the argmax of ``other_logits`` (no gradient to
    the other network), over ``valid`` pixels. Cross pseudo supervision is
    ``cross_pseudo_ce(a, b, v) + cross_pseudo_ce(b, a, v)``."""
    with torch.no_grad():
        targets = other_logits.argmax(1).masked_fill(~valid, IGNORE_INDEX)
    return pseudo_label_ce(logits, targets)


def soft_dice_loss(probs_a: Tensor, probs_b: Tensor, valid: Tensor,
                   eps: float = 1.0) -> Tensor:
    """``1 - mean_c (2 Σ p_a p_b + eps) / (Σ p_a² + Σ p_b² + eps)`` between two
    probability maps ``(B, C, H, W)``, sums over the batch's ``valid`` pixels.

    Differentiable in both maps, so each network is pulled towards the other.
    The squared denominator (V-Net's soft Dice) makes it a pure agreement
    term: with ``eps = 0`` it is ``|p_a - p_b|² / (|p_a|² + |p_b|²)`` per class,
    zero exactly when the maps agree, however soft; the linear denominator
    would also reward sharpening, which the hard pseudo-labels of
    :func:`cross_pseudo_ce` already do. Per class, over the whole batch: a
    class that neither network predicts has Dice ``eps / eps = 1`` and costs
    nothing; ``eps = 1`` is negligible next to the thousands of pixels of a
    crop.
    """
    if probs_a.shape != probs_b.shape or probs_a.ndim != 4:
        raise ValueError(f"probs_a and probs_b must both be (B, C, H, W); got "
                         f"{tuple(probs_a.shape)} and {tuple(probs_b.shape)}")
    weight = valid[:, None].to(probs_a.dtype)
    a, b = probs_a * weight, probs_b * weight
    intersection = (a * b).sum(dim=(0, 2, 3))
    total = (a * a).sum(dim=(0, 2, 3)) + (b * b).sum(dim=(0, 2, 3))
    return 1.0 - ((2.0 * intersection + eps) / (total + eps)).mean()


def critic_input(images: Tensor, masks: Tensor, valid: Tensor) -> Tensor:
    """``(B, 3 + C, H, W)``: image and class-probability map, zero where not ``valid``.

    Real and predicted masks are blanked over the same pixels (padding,
    ignored labels), so the critic cannot tell them apart by where they are
    empty.
    """
    return torch.cat([images, masks.to(images.dtype)], dim=1) * valid[:, None].to(images.dtype)


def weighted_bce(logits: Tensor, target: float, weight: Tensor) -> Tensor:
    """Binary CE of every logit against the constant ``target``, mean weighted by
    ``weight`` (same shape); 0 with a gradient path when all weights are 0."""
    targets = torch.full_like(logits, target, dtype=torch.float32)
    total = F.binary_cross_entropy_with_logits(logits.float(), targets, weight=weight.float(),
                                               reduction="sum")
    return total / weight.sum().float().clamp(min=1e-6)


def second_network_seed(seed: int) -> int:
    """The torch seed network B is initialised under: far from any run's own seed,
    so B never repeats the first network of another small seed."""
    return seed + 2 ** 31


# --------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------

class MaskCritic(nn.Module):
    """Patch critic: (image, mask) ``(B, 3 + C, H, W)`` → realness logits ``(B, H/8, W/8)``.

    Three 4×4 stride-2 convolutions with LeakyReLU(0.2) (a PatchGAN-style
    discriminator, each output judging a ~46 px neighbourhood), then a 3×3
    convolution to one logit per patch. No normalisation layers: the critic
    is also run functionally with detached parameters for the adversarial
    term, and BatchNorm would mix real and fake statistics.
    """

    def __init__(self, num_classes: int, image_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        if num_classes < 1 or width < 1:
            raise ValueError(f"num_classes and width must be positive, got {num_classes}, "
                             f"{width}")
        channels = [image_channels + num_classes, width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1),
                       nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(channels[-1], 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)[:, 0]


class DuoEnsemble(nn.Module):
    """Both networks as one segmentation model, and the module holding them: with
    ``duosegnet.inference=ensemble`` what is validated, tested and saved as
    ``best.pt`` (keys ``a.*`` and ``b.*``).

    ``logits = log((softmax(A) + softmax(B)) / 2)``: the log of the mean
    probability, so argmax and softmax of the output are the ensemble's
    averaged prediction (not the mean of raw logits, whose scales differ
    between the networks).
    """

    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b
        self.num_classes = getattr(a, "num_classes", None)

    def forward(self, x: Tensor, perturb: bool = False, return_features: bool = False,
                return_rep: bool = False) -> SegOutput:
        """``(B, 3, H, W)`` in [0, 1] → :class:`SegOutput` with ``rep=None``
        (``return_rep`` is accepted for the common call signature)."""
        if perturb or return_features:
            raise ValueError("the Duo-SegNet ensemble has no feature perturbation "
                             "or returned features")
        log_a = self.a(x, return_rep=False).logits.float().log_softmax(1)
        log_b = self.b(x, return_rep=False).logits.float().log_softmax(1)
        return SegOutput(logits=torch.logaddexp(log_a, log_b) - math.log(2.0))


# --------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------

class DuoSegNet(Method):
    """Two networks, each on its own half of the labelled set, teaching each other
    on the unlabelled batch, and a critic. Works with any ``model.arch``.
    Settings: ``config.duosegnet``."""

    uses_unlabelled = True
    INFERENCE = ("a", "ensemble")
    CRITIC_OPTIMIZERS = ("rmsprop", "adamw")

    def __init__(self, config, num_classes):
        super().__init__(config, num_classes)
        d = config.duosegnet
        if d.inference not in self.INFERENCE:
            raise ValueError(f"duosegnet.inference must be one of {self.INFERENCE}, "
                             f"got {d.inference!r}")
        if d.critic_optimizer not in self.CRITIC_OPTIMIZERS:
            raise ValueError(f"duosegnet.critic_optimizer must be one of "
                             f"{self.CRITIC_OPTIMIZERS}, got {d.critic_optimizer!r}")
        net_a = build_network(config, num_classes)
        # With a pretrained encoder only the decoders differ; built from the same
        # random stream they would be identical and the two views would collapse.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(second_network_seed(config.seed))
            net_b = build_network(config, num_classes)
        # the representation head serves only Semi-SegDefect's contrastive loss
        self.ensemble = DuoEnsemble(net_a, net_b)
        self.critic = MaskCritic(num_classes, width=d.critic_width)

    def labelled_partition(self, sources: Sequence[int]) -> list[list[int]]:
        """Network A's half of the labelled set and network B's
        (:func:`partition_by_source`); the loop draws a full batch from each."""
        halves = partition_by_source(sources, 2)
        if not all(halves):
            raise ValueError("duosegnet splits the labelled set between its two networks by "
                             f"source photo; {len(sources)} labelled sample(s) from "
                             f"{len(set(sources))} photo(s) leave one network none")
        return halves

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """``main``: the networks' optimiser (``config.optim``) over both
        networks; ``critic``: the critic's own optimiser (``duosegnet.critic_*``;
        the public code's RMSprop at 5e-5)."""
        d = self.config.duosegnet
        networks = [(name, p) for name, p in self.ensemble.named_parameters(prefix="ensemble")
                    if p.requires_grad]
        critic = [p for p in self.critic.parameters() if p.requires_grad]
        if d.critic_optimizer == "rmsprop":
            critic_opt = torch.optim.RMSprop(critic, lr=d.critic_lr,
                                             weight_decay=d.critic_weight_decay)
        else:
            critic_opt = torch.optim.AdamW(critic, lr=d.critic_lr, betas=self.config.optim.betas,
                                           weight_decay=d.critic_weight_decay)
        return {"main": self.network_optimizer(networks), "critic": critic_opt}

    @property
    def net_a(self) -> nn.Module:
        return self.ensemble.a

    @property
    def net_b(self) -> nn.Module:
        return self.ensemble.b

    @staticmethod
    def predict(network: nn.Module, labelled: Tensor, unlabelled: Tensor) -> tuple[Tensor, Tensor]:
        """One network's logits on its labelled images (possibly none) and the
        unlabelled batch, from one forward pass (which also keeps BatchNorm's
        batch at the unlabelled batch's size or more)."""
        logits = network(torch.cat([labelled, unlabelled]), return_rep=False).logits
        return logits.split([labelled.shape[0], unlabelled.shape[0]])

    def ramp(self, step: int) -> float:
        """The unsupervised and adversarial weights' factor at ``step``."""
        return sigmoid_rampup(step, round(self.config.duosegnet.ramp_fraction
                                          * self.config.steps))

    def frozen_critic(self, x: Tensor) -> Tensor:
        """The critic with detached parameters: gradients reach ``x`` only."""
        params = {name: p.detach() for name, p in self.critic.named_parameters()}
        return functional_call(self.critic, params, (x,))

    @staticmethod
    def patch_weights(valid: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
        """Fraction of valid pixels under each critic output of grid ``size``:
        patches that are all padding or ignore do not count."""
        return F.adaptive_avg_pool2d(valid[:, None].float(), tuple(size))[:, 0]

    def critic_loss(self, real: Tensor, real_valid: Tensor, fake: Tensor,
                    fake_valid: Tensor) -> Tensor:
        """BCE(real → 1) + BCE(fake → 0), each a patch-weighted mean; ``fake`` is
        detached here so that this loss trains the critic only."""
        scores = self.critic(torch.cat([real, fake.detach()]))
        real_scores, fake_scores = scores.split([real.shape[0], fake.shape[0]])
        size = scores.shape[-2:]
        return (weighted_bce(real_scores, 1.0, self.patch_weights(real_valid, size))
                + weighted_bce(fake_scores, 0.0, self.patch_weights(fake_valid, size)))

    def adversarial_loss(self, fake_a: Tensor, fake_b: Tensor, valid: Tensor) -> Tensor:
        """BCE(→ real) of each network's critic inputs through the frozen critic,
        summed over the two networks (one critic pass)."""
        scores_a, scores_b = self.frozen_critic(torch.cat([fake_a, fake_b])).chunk(2)
        weights = self.patch_weights(valid, scores_a.shape[-2:])
        return weighted_bce(scores_a, 1.0, weights) + weighted_bce(scores_b, 1.0, weights)

    def training_step(self, labelled: tuple[Batch, Batch], unlabelled: Batch | None,
                      step: int, generator: torch.Generator) -> StepOutput:
        """``labelled``: network A's batch and network B's, each from its own half."""
        if not isinstance(labelled, tuple) or len(labelled) != 2:
            raise ValueError("duosegnet needs two labelled batches per step, one from each "
                             "network's half of the labelled set")
        if unlabelled is None:
            raise ValueError("duosegnet needs an unlabelled batch")
        half_a, half_b = labelled
        x_u, valid_u = unlabelled.images, unlabelled.valid
        logits_la, logits_ua = self.predict(self.net_a, half_a.images, x_u)
        logits_lb, logits_ub = self.predict(self.net_b, half_b.images, x_u)

        loss_sup_a = supervised_ce(logits_la, half_a.labels)
        loss_sup_b = supervised_ce(logits_lb, half_b.labels)
        loss_cps = (cross_pseudo_ce(logits_ua, logits_ub, valid_u)
                    + cross_pseudo_ce(logits_ub, logits_ua, valid_u))
        probs_ua, probs_ub = logits_ua.float().softmax(1), logits_ub.float().softmax(1)
        loss_dice = soft_dice_loss(probs_ua, probs_ub, valid_u)
        fake_ua = critic_input(x_u, probs_ua, valid_u)
        fake_ub = critic_input(x_u, probs_ub, valid_u)
        loss_adv = self.adversarial_loss(fake_ua, fake_ub, valid_u)

        # The critic's fakes: each network's prediction on its own labelled images
        # (the same images as the real masks, in the same order) and on the
        # unlabelled batch.
        images_l = torch.cat([half_a.images, half_b.images])
        labels_l = torch.cat([half_a.labels, half_b.labels])
        labelled_valid = labels_l != IGNORE_INDEX
        one_hot = F.one_hot(labels_l.masked_fill(~labelled_valid, 0),
                            self.num_classes).permute(0, 3, 1, 2)
        probs_l = torch.cat([logits_la, logits_lb]).float().softmax(1)
        real = critic_input(images_l, one_hot, labelled_valid)
        fake = torch.cat([critic_input(images_l, probs_l, labelled_valid), fake_ua, fake_ub])
        fake_valid = torch.cat([labelled_valid, valid_u, valid_u])
        loss_critic = self.critic_loss(real, labelled_valid, fake, fake_valid)

        d = self.config.duosegnet
        ramp = self.ramp(step)
        unsup = d.cps_weight * loss_cps + d.dice_weight * loss_dice + d.adv_weight * loss_adv
        loss = loss_sup_a + loss_sup_b + ramp * unsup + loss_critic
        return StepOutput(loss, {"loss_sup_a": loss_sup_a.item(), "loss_sup_b": loss_sup_b.item(),
                                 "loss_cps": loss_cps.item(), "loss_dice": loss_dice.item(),
                                 "loss_adv": loss_adv.item(), "loss_critic": loss_critic.item(),
                                 "ramp": float(ramp)})

    def inference_model(self) -> nn.Module:
        """Network A (``duosegnet.inference=a``, as the public code evaluates), or
        both networks' averaged softmax (``ensemble``, :class:`DuoEnsemble`)."""
        return self.net_a if self.config.duosegnet.inference == "a" else self.ensemble
