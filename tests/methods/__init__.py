"""Tests of the training methods, and the tiny inputs they share.

Everything here is sized for a CPU test: a 2.7M-parameter ConvNeXt at 64 px,
two labelled and two unlabelled images, random initialisation.
"""

from __future__ import annotations

from pathlib import Path

import torch

from semiseg_helpers.classes import IGNORE_INDEX, NUM_CLASSES
from semiseg_helpers.config import ARCH_OPTIONS, METHOD_ARCH, TrainConfig, make_config
from semiseg_helpers.methods import Batch, Method, build_method
from semiseg_helpers.methods.base import Batches

TINY_MODEL = {"model.pretrained": None, "model.encoder": "convnext_zepto_rms",
              "model.aspp_rates": [1, 2, 3], "model.decoder_channels": 32,
              "model.rep_dim": 16}
"""A random-init ConvNeXt small enough for a CPU test (ASPP rates for 64 px)."""


def tiny_config(method: str, **overrides) -> TrainConfig:
    """The smoke profile with :data:`TINY_MODEL` (the options the method's
    network has), 64 px crops, batches of 2 + 2."""
    arch = METHOD_ARCH.get(method, overrides.get("model.arch", "semisegdefect"))
    model = {k: v for k, v in TINY_MODEL.items()
             if k.split(".")[1] in ("pretrained", "encoder", *ARCH_OPTIONS[arch])}
    if not (method == "semisegdefect" and overrides.get("semi.contrastive_loss", True)):
        model.pop("model.rep_dim", None)           # only a contrastive run has a representation
    if arch == "fpn":
        model["model.decoder_channels"] = 64     # its GroupNorm needs a multiple of 64
    return make_config("smoke", {**model, "data.crop_size": 64, "data.batch_size": 2,
                                 "data.unlabelled_batch_size": 2, **overrides},
                       method=method, label_fraction=0.5)


def tiny_method(method: str, **overrides) -> Method:
    """``method`` built by name from :func:`tiny_config`, in training mode."""
    torch.manual_seed(0)
    return build_method(tiny_config(method, **overrides), NUM_CLASSES).train()


def tiny_batches(n: int = 2, size: int = 64, seed: int = 0) -> tuple[Batch, Batch]:
    """``n`` labelled images (a thin crack row and a spalling block, the last
    labelled row ignored) and ``n`` unlabelled ones whose right-most 8 columns
    lie outside the image."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2 * n, 3, size, size, generator=g)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    labels[:, 10:13, :] = 1
    labels[:, 30:50, 20:40] = 2
    labels[:, -1, :] = IGNORE_INDEX
    valid = torch.ones(n, size, size, dtype=torch.bool)
    valid_u = valid.clone()
    valid_u[..., -8:] = False
    images_u = images[n:] * valid_u[:, None]
    source = torch.arange(n)                          # every image its own photo
    return (Batch(images[:n], labels, valid, source),
            Batch(images_u, torch.full_like(labels, IGNORE_INDEX), valid_u, source))


def step_inputs(method: Method, n: int = 2, size: int = 64,
                seed: int = 0) -> tuple[Batches, Batches | None]:
    """Inputs of one ``training_step`` shaped as ``method`` declares them: one
    labelled batch per labelled stream and ``unlabelled_streams`` unlabelled
    batches (a tuple where there are several), each with its own images;
    every image its own photo."""
    streams = len(method.labelled_partition(list(range(4 * n))))
    labelled = []
    for k in range(streams):
        batch = tiny_batches(n, size, seed + k)[0]
        batch.source = batch.source + k * n
        labelled.append(batch)
    unlabelled = ([tiny_batches(n, size, seed + 100 + k)[1]
                   for k in range(method.unlabelled_streams)]
                  if method.uses_unlabelled else None)

    def pack(batches):
        return batches if batches is None else (
            batches[0] if len(batches) == 1 else tuple(batches))
    return pack(labelled), pack(unlabelled)


def tiny_dataset(out: Path) -> Path:
    """A prepared synthetic dataset of 24 labelled 64 px images, half labelled."""
    from semiseg_helpers.data.prepare import prepare_dataset

    return prepare_dataset("synthetic", out, label_fractions=[0.5], progress=False,
                           synthetic_options={"n_labeled": 24, "size": 64})


def short_run_config(method: str) -> TrainConfig:
    """Four steps with two validations and checkpoints: enough to save ``best.pt``
    twice and load it back at the end."""
    return tiny_config(method, steps=4, eval_every=2, checkpoint_every=2, threads=1)
