"""How a run computes: bf16 autocast where the hardware does it fast, fp32
elsewhere; channels-last memory where it pays.

``precision`` (a :class:`~semiseg_helpers.config.TrainConfig` field) is one of

* ``auto``: bf16 autocast on a CUDA GPU that supports it and on a CPU with
  AMX or AVX512-BF16 instructions, fp32 otherwise;
* ``fp32``: plain fp32 (the reference);
* ``bf16``: bf16 autocast, asked for explicitly.

Autocast runs convolutions and matrix products in bf16; weights, optimiser
state, the EMA teacher, losses (inputs cast back to fp32) and metrics stay in
fp32. On the CPU, oneDNN's bf16 convolutions are fast only on channels-last
tensors (measured on a 2-core AMD EPYC with AVX512-BF16 and no AMX, the ``cpu``
profile's network forward+backward on 16 images of 160 px: fp32 1.55 s, bf16 2.77 s,
bf16 + channels-last 0.48 s, fp32 + channels-last 1.77 s), so
``channels_last=None`` ("auto") turns it on exactly with bf16 or on CUDA.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import NamedTuple

import torch

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")

CPU_BF16_FLAGS: tuple[str, ...] = ("amx_bf16", "avx512_bf16")
"""CPU feature flags (``/proc/cpuinfo``) of native bf16 arithmetic."""


class _CpuInfo(NamedTuple):
    model: str | None
    bf16_flags: frozenset[str]


def cpu_bf16_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """Which of :data:`CPU_BF16_FLAGS` this CPU reports (empty where unknown);
    ``cpuinfo``: another file to read than ``/proc/cpuinfo`` (read once)."""
    return _read_cpuinfo(cpuinfo).bf16_flags if cpuinfo is not None else _this_cpu().bf16_flags


@functools.lru_cache(maxsize=1)
def _this_cpu() -> _CpuInfo:
    return _read_cpuinfo("/proc/cpuinfo")


def _read_cpuinfo(cpuinfo: str) -> _CpuInfo:
    """The first processor's model name and native bf16 flags, from one read of
    ``cpuinfo`` (neither where it cannot be read)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return _CpuInfo(None, frozenset())
    model, flags = None, frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip() or None
        elif key == "flags" and not flags:
            flags = frozenset(set(value.split()) & set(CPU_BF16_FLAGS))
        elif not line and model is not None:
            break                                   # the first processor's block ends
    return _CpuInfo(model, flags)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``; ``None``: plain fp32.

    Raises:
        ValueError: an unknown ``precision``, or ``bf16`` on a GPU without it.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        if precision == "bf16" and not supported:
            raise ValueError(f"precision='bf16' but {torch.cuda.get_device_name(device)} "
                             "has no bf16; use 'fp32' or 'auto'")
        return torch.bfloat16 if supported else None
    if device.type == "cpu":
        return torch.bfloat16 if precision == "bf16" or cpu_bf16_flags() else None
    return torch.bfloat16 if precision == "bf16" else None


def use_channels_last(setting: bool | None, device: torch.device,
                      dtype: torch.dtype | None) -> bool:
    """``setting``, or for ``None`` (auto): on CUDA, and on the CPU with bf16."""
    if setting is not None:
        return bool(setting)
    return device.type == "cuda" or dtype == torch.bfloat16


def cpu_cores() -> int:
    """Cores this process may run on: its affinity mask (``taskset``, a SLURM
    allocation, a pinned test worker), not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def precision_name(dtype: torch.dtype | None) -> str:
    """``"bf16"`` or ``"fp32"``: what a run really computed in (for its records)."""
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def hardware(device: torch.device, cpuinfo: str | None = None) -> dict[str, object]:
    """What a run ran on, for its records: the CPU's model name and native bf16
    flags, the GPU's name on CUDA, and torch's version. Wall-clock seconds
    compare only between runs of the same hardware (the same ``cpu`` profile
    run took 4-5x longer per step on an AVX2-only CPU, in fp32, than on one with
    AVX512-BF16 on the fast path), and ``precision="auto"`` resolves by it.
    ``cpuinfo``: another file to read than ``/proc/cpuinfo``."""
    info = _read_cpuinfo(cpuinfo) if cpuinfo is not None else _this_cpu()
    return {"cpu": info.model or platform.processor() or None,
            "cpu_bf16": sorted(info.bf16_flags),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torch": torch.__version__}


def hardware_label(record: dict | None) -> str:
    """One line naming what a run's seconds were measured on (its summary's
    ``hardware``): the GPU, or the CPU with its native bf16 flags; empty for a
    run recorded before its hardware was. Runs of one precision but another
    label ran at another speed (bf16 on an AMX Xeon and on an AVX512-BF16 EPYC)."""
    if not record:
        return ""
    if record.get("gpu"):
        return str(record["gpu"])
    cpu = record.get("cpu") or "an unnamed CPU"
    flags = record.get("cpu_bf16") or []
    return f"{cpu} ({', '.join(flags)})" if flags else f"{cpu} (no native bf16)"


__all__ = ["CPU_BF16_FLAGS", "PRECISIONS", "autocast_dtype", "cpu_bf16_flags",
           "hardware", "hardware_label", "precision_name", "use_channels_last"]
