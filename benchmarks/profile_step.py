"""Where a training step's time goes: torch.profiler over a few steps of
supervised training and of Semi-SegDefect, in fp32 eager and on the fast
path, grouped into kinds of work.

    python benchmarks/profile_step.py --profile cpu --threads 2 \\
        --json figures/benchmarks/profile_step.json

Every operator's *self* CPU time (time in the operator itself, not in the
operators it calls) is summed into a group by its name: convolutions
(forward and backward; depth-wise ones apart, told by their recorded weight
shape), normalisation, interpolation (the bilinear
up-sampling of logits and ASPP, the weak view's grid sample), element-wise
and activation work, dtype conversion (autocast's copies), losses and
softmax, the optimiser, and the rest. Shares are of the total self time.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import semiseg_helpers  # noqa: F401  (torchvision fix first)
import torch
from torch.profiler import ProfilerActivity, profile

from step_time import StepBench, make_raw  # the sibling script (benchmarks/ is on sys.path)
from semiseg_helpers.augment import weak_view
from semiseg_helpers.config import make_config, parse_overrides
from semiseg_helpers.methods import Batch
from semiseg_helpers.runs import atomic_write_text
from semiseg_helpers.train import resolve_device

GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("convolution", ("conv", "mkldnn_convolution", "_convolution", "thnn_conv")),
    ("normalisation", ("batch_norm", "native_batch_norm", "layer_norm", "group_norm")),
    ("interpolation / grid sample", ("upsample", "interpolate", "grid_sampler", "grid_sample")),
    ("dtype conversion", ("_to_copy", "to", "copy_", "clone", "contiguous")),
    ("loss / softmax", ("cross_entropy", "nll_loss", "softmax", "log_softmax", "_log_softmax")),
    ("optimiser (AdamW, EMA)", ("_foreach", "adam", "lerp")),
    ("reductions / indexing", ("sum", "mean", "max", "gather", "index", "scatter", "sort",
                               "argsort", "nonzero", "bincount", "cumsum", "randperm",
                               "multinomial", "mm", "matmul", "bmm", "addmm")),
    ("element-wise / activation", ("add", "mul", "div", "sub", "relu", "hardtanh", "clamp",
                                   "where", "fill", "zero", "threshold", "sigmoid", "silu",
                                   "neg", "pow", "sqrt", "exp", "log", "cat", "stack", "pad")),
)


def group_of(name: str) -> str:
    op = name.split("::")[-1].lower()
    for group, keys in GROUPS:
        if any(op == k or op.startswith(k) or k in op for k in keys):
            return group
    return "other"


def _depthwise(shapes) -> bool:
    """Whether a convolution's recorded inputs hold a depth-wise weight
    ``(C, 1, k, k)`` with ``k > 1`` (forward: the second input; backward: the third)."""
    return any(len(s) == 4 and s[1] == 1 and s[2] > 1 and s[0] > 1 for s in shapes[1:3]
               if isinstance(s, (list, tuple)))


def breakdown(bench: StepBench, labelled: Batch, unlabelled: Batch, gen, steps: int) -> dict:
    """Self CPU seconds per group, per step, over ``steps`` profiled steps."""
    lab, unl = bench.batches(labelled, unlabelled)
    for _ in range(2):                       # warm-up: oneDNN primitives, allocator
        bench.step(lab, unl, gen)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            bench.step(lab, unl, gen)
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages(group_by_input_shape=True):
        group = group_of(event.key)
        if group == "convolution" and _depthwise(event.input_shapes):
            group = "convolution (depth-wise)"
        totals[group] += event.self_cpu_time_total / 1e6 / steps
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the breakdown here")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.overrides)
    config = make_config(args.profile, overrides)
    device = resolve_device(config.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator(device=device).manual_seed(0)
    d = config.data
    xl, yl = make_raw(d.batch_size, d.crop_size, device, gen)
    xu, _ = make_raw(d.unlabelled_batch_size, d.crop_size, device, gen)
    wl = weak_view(xl, yl, crop_size=d.crop_size, generator=gen)
    wu = weak_view(xu, torch.full_like(xu[:, 0], 255, dtype=torch.long), crop_size=d.crop_size,
                   generator=gen)
    labelled, unlabelled = Batch(wl.images, wl.labels, wl.valid), Batch(wu.images, wu.labels,
                                                                       wu.valid)
    results: dict = {"profile": args.profile, "threads": torch.get_num_threads()}
    for precision in ("fp32", "auto"):
        for method in ("supervised", "semisegdefect"):
            bench = StepBench(args.profile, overrides, device, method, precision)
            key = f"{method}/{'fp32' if precision == 'fp32' else 'fast'}"
            results[key] = breakdown(bench, labelled, unlabelled, gen, args.steps)
            total = sum(results[key].values())
            print(f"\n{key}: {total:.3f} s of self CPU time per step")
            for group, seconds in results[key].items():
                print(f"  {group:<30} {seconds:7.3f} s  {100 * seconds / total:5.1f} %")
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
