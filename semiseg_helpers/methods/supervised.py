"""Supervised-only training on the labelled subset: the baselines' method.

With ``model.arch`` = ``deeplabv3plus`` or ``fpn`` it is the paper's fully
supervised smp baselines; with ``semisegdefect`` it is Semi-SegDefect's own
network without any unlabelled data (the fair ablation of the method).
"""

from __future__ import annotations

import torch

from semiseg_helpers.losses import supervised_ce
from semiseg_helpers.methods.base import Batch, Method, StepOutput, build_network


class Supervised(Method):
    uses_unlabelled = False

    def __init__(self, config, num_classes):
        super().__init__(config, num_classes)
        self.student = build_network(config, num_classes)

    def training_step(self, labelled: Batch, unlabelled: Batch | None, step: int,
                      generator: torch.Generator) -> StepOutput:
        logits = self.student(labelled.images, return_rep=False).logits
        loss = supervised_ce(logits, labelled.labels)
        return StepOutput(loss, {"loss_sup": loss.item()})

    def inference_model(self):
        return self.student
