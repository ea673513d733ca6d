"""Data-parallel training over several processes, as ``torchrun`` starts them.

::

    torchrun --nproc-per-node 4 -m semiseg_helpers.cli train --data ... --out ...

:func:`setup` joins the process group torchrun describes in the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``):
NCCL with one GPU per process (``cuda:LOCAL_RANK``), gloo on the CPU. Without
torchrun (``WORLD_SIZE`` unset or 1) nothing here does anything, and a run is
exactly the single-process one.

What the training loop (:mod:`semiseg_helpers.train`) does with it:

* **data** — ``data.batch_size`` and ``data.unlabelled_batch_size`` are
  *global*: every stream yields the single-process batch of each step and
  rank ``k`` keeps its ``k``-th equal share, weak views included (drawn for
  the whole batch, this share's rows kept), so ``N`` ranks see exactly the
  images and weak views one process would;
* **gradients** — after ``loss.backward()`` the gradient of every trainable
  parameter is averaged over the ranks (:func:`average_gradients`). This
  works for any method, whatever networks, frozen teacher and optimisers it
  holds, without wrapping them (``DistributedDataParallel`` would rename the
  checkpoint's keys and expects one forward per backward); every rank then
  takes the same optimiser steps, so the networks stay identical;
* **buffers** — BatchNorm running statistics are averaged after each
  optimiser step (:func:`average_buffers`), before the method's hook, so
  the mean teacher's EMA of the student is the same on every rank;
  :func:`check_in_sync` verifies at each checkpoint that the ranks agree bit
  for bit and stops the run if not;
* **BatchNorm** — per rank, over its share of the batch, unless
  ``sync_bn=true`` (:func:`convert_sync_batchnorm`: torch's ``SyncBatchNorm``,
  CUDA only);
* **files** — rank 0 alone writes the run folder; every rank resumes from
  its ``last.pt``, which holds each rank's random states; validation and test
  run on rank 0 while the others wait.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

TIMEOUT = timedelta(minutes=60)
"""How long a rank waits in a collective: the others wait while rank 0 validates."""
BUCKET_BYTES = 64 * 2 ** 20
"""Gradients are averaged in flat buckets of about this size."""


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank, the world size and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files, validates and shows progress."""
        return self.rank == 0

    @property
    def share(self) -> tuple[int, int]:
        """``(rank, world)``: which equal share of each global batch is this rank's."""
        return self.rank, self.world

    def gather(self, obj: Any) -> list | None:
        """Every rank's ``obj`` (picklable), in rank order, on rank 0; ``None`` elsewhere."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def all_gather(self, obj: Any) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (picklable) on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean_logs(self, loss: float, logs: dict[str, float]) -> tuple[float, dict[str, float]]:
        """The step's loss and logged scalars averaged over the ranks (each key
        over the ranks that logged it): what one process would log, for
        per-image means, and the mean of the ranks' values for batch statistics."""
        if self.world == 1:
            return loss, logs
        gathered = self.all_gather((loss, logs))
        keys = list(dict.fromkeys(k for _, rank_logs in gathered for k in rank_logs))
        mean = {k: float(np.mean([g[k] for _, g in gathered if k in g])) for k in keys}
        return float(np.mean([rank_loss for rank_loss, _ in gathered])), mean

    def rank_seed(self, seed: int, *salt: int) -> int:
        """A seed (< 2**32) for this rank's own random draws, distinct per
        (seed, rank, salt); rank 0's without salt is ``seed`` itself, so its
        draws are a single process's."""
        if self.rank == 0 and not salt:
            return seed
        return int(np.random.SeedSequence([seed, self.rank, *salt]).generate_state(1)[0])


def world_size() -> int:
    """The world size torchrun announced (1 without torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0, or no torchrun at all."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def setup(device: torch.device) -> Context:
    """Join torchrun's process group (once per process) and pick this rank's device.

    ``device`` is the configured one, resolved: under torchrun a CUDA device
    becomes ``cuda:LOCAL_RANK`` (naming one GPU, ``cuda:1``, is an error:
    each process gets its own), the CPU stays the CPU (gloo)."""
    world = world_size()
    if world == 1:
        return Context(device=device)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch has no torch.distributed")
    if device.type == "cuda":
        if device.index is not None:
            raise ValueError(f"device={device} with {world} processes: under torchrun each "
                             "process uses cuda:LOCAL_RANK; set device=cuda or auto")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return Context(dist.get_rank(), dist.get_world_size(), device)


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_batch_sizes(config, world: int, uses_unlabelled: bool) -> None:
    """Each global batch must split into ``world`` equal shares."""
    sizes = [("data.batch_size", config.data.batch_size)]
    if uses_unlabelled:
        sizes.append(("data.unlabelled_batch_size", config.data.unlabelled_batch_size))
    for key, size in sizes:
        if size % world:
            raise ValueError(f"{key}={size} is not divisible by the {world} processes: it is "
                             "the global batch, each process takes an equal share; use a "
                             f"multiple of {world}")


def convert_sync_batchnorm(module: nn.Module, ctx: Context) -> nn.Module:
    """``module`` with every BatchNorm synchronised across the ranks (timm's
    converter: torch's ``SyncBatchNorm``, keeping timm's fused BatchNorm +
    activation layers whole). The parameters and buffers stay the same
    tensors, so the state dict, hence checkpoints, keep their keys. Only
    with several ranks; torch synchronises BatchNorm on GPUs only."""
    if ctx.world == 1:
        return module
    if ctx.device.type != "cuda":
        raise ValueError("sync_bn=true needs GPUs: torch's SyncBatchNorm runs on CUDA only "
                         "(on the CPU set sync_bn=false: each process normalises over its "
                         "share of the batch)")
    from timm.layers import convert_sync_batchnorm as timm_convert

    return timm_convert(module)


def _buckets(tensors: Sequence[Tensor], cap: int) -> Iterable[list[Tensor]]:
    """Consecutive runs of ``tensors`` of one dtype and device, about ``cap`` bytes each."""
    bucket: list[Tensor] = []
    size = 0
    for t in tensors:
        if bucket and (size + t.numel() * t.element_size() > cap
                       or (t.dtype, t.device) != (bucket[0].dtype, bucket[0].device)):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel() * t.element_size()
    if bucket:
        yield bucket


def _average(tensors: Sequence[Tensor], world: int) -> None:
    """Replace each tensor by its mean over the ranks (bucketed, all at once)."""
    pending = []
    for bucket in _buckets(tensors, BUCKET_BYTES):
        flat = _flatten_dense_tensors(bucket)
        pending.append((bucket, flat, dist.all_reduce(flat, async_op=True)))
    for bucket, flat, work in pending:
        work.wait()
        flat.div_(world)
        for t, mean in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
            t.copy_(mean)


def average_gradients(params: Sequence[nn.Parameter], ctx: Context) -> None:
    """Average the gradients of ``params`` over the ranks, after ``backward()``.

    ``params`` must be the same list, in the same order, on every rank. A
    parameter without a gradient counts as a zero gradient where another
    rank has one, and keeps ``None`` where no rank has (so an optimiser
    skips it exactly as a single process would)."""
    if ctx.world == 1 or not params:
        return
    has = torch.tensor([float(p.grad is not None) for p in params], device=ctx.device)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    dist.all_reduce(has)
    _average(grads, ctx.world)
    for p, g, h in zip(params, grads, has.tolist()):
        p.grad = g if h > 0 else None


def average_buffers(module: nn.Module, ctx: Context) -> None:
    """Average the running statistics of ``module``'s BatchNorm layers in
    training mode over the ranks: the buffers a forward pass changes, each
    rank from its own share (a synchronised or an eval-mode one, like a mean
    teacher's, is the same on every rank already)."""
    if ctx.world == 1:
        return
    buffers = [b for m in module.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
               and m.track_running_stats and not isinstance(m, nn.SyncBatchNorm)
               for b in (m.running_mean, m.running_var) if b is not None]
    if buffers:
        _average(buffers, ctx.world)


def broadcast_module(module: nn.Module, ctx: Context) -> None:
    """Rank 0's parameters and buffers on every rank (a guard at the start:
    every rank builds the networks from the same seed)."""
    if ctx.world == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def check_in_sync(module: nn.Module, ctx: Context) -> None:
    """Raise ``RuntimeError`` unless every rank holds the same state dict
    (compared by a float64 sum per tensor)."""
    if ctx.world == 1:
        return
    state = module.state_dict()
    names = list(state)
    sums = torch.stack([state[n].detach().double().sum() for n in names]).to(ctx.device)
    gathered = [torch.empty_like(sums) for _ in range(ctx.world)]
    dist.all_gather(gathered, sums)
    ref = gathered[0]
    same = torch.ones_like(ref, dtype=torch.bool)
    for other in gathered[1:]:
        same &= (other == ref) | (other.isnan() & ref.isnan())
    differ = [names[i] for i in (~same).nonzero().flatten().tolist()]
    if differ:
        raise RuntimeError(f"the {ctx.world} processes no longer hold the same model: "
                           f"{len(differ)} tensor(s) differ, e.g. {differ[:3]}")


__all__ = ["Context", "average_buffers", "average_gradients", "broadcast_module",
           "check_batch_sizes", "check_in_sync", "convert_sync_batchnorm", "is_main_process",
           "setup", "shutdown", "world_size"]
