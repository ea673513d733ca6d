"""Time and peak memory of the pixel contrastive loss alone at each of Table 6's
anchors / negatives settings, at a profile's batch and crop sizes.

    python benchmarks/contrastive_cost.py --profile cpu --threads 1 \
        --json figures/benchmarks/contrastive_cost.json
    python benchmarks/contrastive_cost.py --profile paper --device cuda   # on a GPU

The settings are the cases of ``grids/table6_anchors.yaml`` (``--grid``), so
the benchmark and the sweep measure the same ones. The loss
(:func:`~semiseg_helpers.losses.pixel_contrastive_loss`) gets what a training
step gives it: the representation of the labelled and unlabelled images
together (``data.batch_size + data.unlabelled_batch_size`` maps of
``model.rep_dim`` channels at 1/4 of the crop), labels with every class
present, teacher confidences of which most pass the 0.7 reliability bar and
student confidences of which most are "hard". Times are medians of the
loss's forward and backward over ``--repeat`` calls after ``--warmup``;
peak memory is the most the call holds above its inputs: on CUDA the
allocator's peak, on the CPU the process's peak resident memory (Linux:
``/proc/self/status`` VmHWM, reset before each call through
``/proc/self/clear_refs``, with glibc returning freed blocks at once so
that it tracks what the loss holds; ``null`` where /proc is not available,
and ``peak_is_exact`` false where glibc's setting was not).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

import semiseg_helpers  # noqa: F401  (torchvision fix first)
import torch

from semiseg_helpers.classes import NUM_CLASSES
from semiseg_helpers.config import make_config
from semiseg_helpers.losses import pixel_contrastive_loss
from semiseg_helpers.runs import atomic_write_text
from semiseg_helpers.sweep import load_grid

GRID = Path(__file__).resolve().parent.parent / "grids" / "table6_anchors.yaml"


def inputs(batch: int, dim: int, side: int, device: torch.device, seed: int = 0):
    """A representation and the label and confidence maps the loss reads, with
    every class present in blocks (as defects are) and random confidences."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.zeros(batch, side, side, dtype=torch.long)
    for b in range(batch):
        for cls in range(1, NUM_CLASSES):
            y, x = torch.randint(0, side - side // 4, (2,), generator=gen).tolist()
            labels[b, y:y + side // 4, x:x + side // 4] = cls
    weak = 0.5 + 0.5 * torch.rand(batch, side, side, generator=gen)
    strong = torch.rand(batch, side, side, generator=gen)
    rep = torch.randn(batch, dim, side, side, generator=gen)
    return (rep.to(device).requires_grad_(), labels.to(device), weak.to(device),
            strong.to(device))


M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number."""


def release_freed_memory() -> bool:
    """Make glibc give large freed blocks back to the system at once (every
    block of 64 KiB or more is its own mapping, a fixed threshold), so that
    resident memory follows what the loss holds instead of what the allocator
    kept from earlier calls. Returns whether it could (glibc only)."""
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 64 * 1024))
    except (OSError, AttributeError):
        return False


def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(),
                         re.M).group(1))


class PeakMemory:
    """Peak memory (MiB) a block holds above what was held when it started."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mib: float | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")   # VmHWM := VmRSS
            self.start = _status_kib("VmRSS")
        except (OSError, AttributeError):
            self.start = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self.start) / 2 ** 20
        elif self.start is not None:
            self.mib = (_status_kib("VmHWM") - self.start) / 1024
        return False


def measure(tensors, num_anchors: int, num_negatives: int, config, device: torch.device,
            warmup: int, repeat: int) -> dict:
    """Median forward + backward time (ms) and the largest peak memory of the loss."""
    rep, labels, weak, strong = tensors
    semi = config.semi
    gen = torch.Generator(device=device).manual_seed(0)

    def step():
        rep.grad = None
        result = pixel_contrastive_loss(
            rep, labels, weak, strong, num_anchors=num_anchors, num_negatives=num_negatives,
            temperature=semi.temperature, weak_threshold=semi.weak_threshold,
            strong_threshold=semi.strong_threshold, generator=gen)
        result.loss.backward()
        return result.num_anchors

    times, peaks, anchors = [], [], 0
    for i in range(warmup + repeat):
        with PeakMemory(device) as peak:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            anchors = step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - started
        if i >= warmup:
            times.append(seconds)
            peaks.append(peak.mib)
    known = [p for p in peaks if p is not None]
    return {"num_anchors": num_anchors, "num_negatives": num_negatives,
            "anchors_drawn": anchors, "ms": round(1000 * statistics.median(times), 3),
            "peak_mib": round(max(known), 2) if known else None}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu", help="batch, crop and rep_dim of this profile")
    parser.add_argument("--grid", type=Path, default=GRID,
                        help="grid file whose cases give semi.num_anchors / semi.num_negatives")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeat < 1 or args.warmup < 0:
        parser.error("--repeat must be >= 1 and --warmup >= 0")
    grid = load_grid(args.grid)
    settings = [(label or f"{case['semi.num_anchors']}/{case['semi.num_negatives']}", case)
                for label, case in zip(grid.labels, grid.cases or ())
                if {"semi.num_anchors", "semi.num_negatives"} <= set(case)]
    if not settings:
        raise SystemExit(f"{args.grid}: no case sets semi.num_anchors and semi.num_negatives")
    config = make_config(args.profile)
    device = torch.device(args.device)
    exact = device.type == "cuda" or release_freed_memory()
    batch = config.data.batch_size + config.data.unlabelled_batch_size
    side = config.data.crop_size // 4
    dim = config.model.rep_dim
    tensors = inputs(batch, dim, side, device)
    rows = []
    for label, case in settings:
        row = {"label": label, **measure(tensors, int(case["semi.num_anchors"]),
                                         int(case["semi.num_negatives"]), config, device,
                                         args.warmup, args.repeat)}
        rows.append(row)
        peak = "n/a" if row["peak_mib"] is None else f"{row['peak_mib']:.1f} MiB"
        print(f"{label:>10}: {row['ms']:8.2f} ms forward+backward, peak {peak} "
              f"({row['anchors_drawn']} anchors drawn)", flush=True)
    result = {"profile": args.profile, "device": str(device),
              "threads": torch.get_num_threads(), "rep_shape": [batch, dim, side, side],
              "warmup": args.warmup, "repeat": args.repeat, "grid": str(args.grid),
              "peak_is_exact": exact,
              "torch": torch.__version__, "settings": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
