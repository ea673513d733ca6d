"""Random draws from an explicit :class:`torch.Generator`, on any device.

A generator lives on one device and torch samples only there; these draw on
the generator's device (or on ``device`` when no generator is given) and move
the result to where it is used. So a CPU generator keeps augmentations and
anchor sampling reproducible whether the tensors live on the CPU or a GPU.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def rand(shape: tuple[int, ...], generator: torch.Generator | None,
         device: torch.device) -> Tensor:
    """Uniform ``[0, 1)`` float32 numbers of ``shape``, on ``device``."""
    return torch.rand(shape, generator=generator,
                      device=_draw_device(generator, device)).to(device)


def randperm(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """A random permutation of ``0 … n-1``, on ``device``."""
    return torch.randperm(n, generator=generator,
                          device=_draw_device(generator, device)).to(device)


def multinomial(weights: Tensor, num_samples: int, generator: torch.Generator | None) -> Tensor:
    """``num_samples`` categorical draws per row of ``weights``, with replacement,
    on ``weights``' device."""
    drawn = torch.multinomial(weights.to(_draw_device(generator, weights.device)), num_samples,
                              replacement=True, generator=generator)
    return drawn.to(weights.device)
