"""Time a supervised and a Semi-SegDefect training step in fp32 eager and on
the fast path, on the same batch, and the non-network parts of a semi step.

    python benchmarks/step_time.py --profile cpu --threads 2 --json step_time.json
    python benchmarks/step_time.py --profile paper --device cuda   # on a GPU
    python benchmarks/step_time.py --threads 1 --clock cpu          # cores shared with runs

The fast path is what a run of the profile uses by default
(``precision=auto``: bf16 autocast where the hardware has it, channels-last
where it pays; ``--compile`` adds torch.compile). Targets (issue 9): the fast
step at most 40 % of fp32 eager's for both methods, and the fast semi step
at most 2.5x the fast supervised one. Batches are random tensors of the
profile's crop size (no data set needed); timings are medians over
``--repeat`` steps after ``--warmup``, each a whole optimiser step as the
training loop runs it (forward, loss, backward, AdamW, EMA). ``--clock cpu``
times by the process's CPU time instead of the wall clock: the figure to take
where other work shares the cores, at one thread (at more it sums the threads).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import semiseg_helpers  # noqa: F401  (torchvision fix first)
import torch

from semiseg_helpers.augment import strong_view, weak_view
from semiseg_helpers.classes import NUM_CLASSES
from semiseg_helpers.config import make_config, parse_overrides
from semiseg_helpers.methods import Batch, build_method
from semiseg_helpers.precision import (autocast_dtype, hardware, precision_name,
                                       use_channels_last)
from semiseg_helpers.runs import atomic_write_text
from semiseg_helpers.train import compile_networks, resolve_device


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn, device, warmup: int, repeat: int, clock=time.perf_counter) -> float:
    """Median seconds of ``fn()`` by ``clock`` (synchronising CUDA around each call)."""
    times = []
    for i in range(warmup + repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = clock()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(clock() - t)
    return statistics.median(times)


def make_raw(n: int, size: int, device, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and masks 1.4x the crop (so the weak view really crops)."""
    side = int(size * 1.4)
    images = torch.rand(n, 3, side, side, generator=gen, device=device)
    labels = torch.randint(0, 3, (n, side, side), generator=gen, device=device)
    return images, labels


class StepBench:
    """One method's optimiser step at one precision, on fixed weak views."""

    def __init__(self, profile: str, overrides: dict, device: torch.device, method: str,
                 precision: str, compile_: bool = False):
        config = make_config(profile, {**overrides, "precision": precision}, method=method)
        self.device = device
        self.dtype = autocast_dtype(config.precision, device)
        self.channels_last = use_channels_last(config.channels_last, device, self.dtype)
        torch.manual_seed(0)
        self.method = build_method(config, NUM_CLASSES).to(device).train()
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        if compile_:
            compile_networks(self.method)
        self.optimizers = list(self.method.optimizers().values())
        self.step_index = 0

    def batches(self, labelled: Batch, unlabelled: Batch) -> tuple[Batch, Batch]:
        if not self.channels_last:
            return labelled, unlabelled
        cl = torch.channels_last
        return (Batch(labelled.images.contiguous(memory_format=cl), labelled.labels,
                      labelled.valid),
                Batch(unlabelled.images.contiguous(memory_format=cl), unlabelled.labels,
                      unlabelled.valid))

    def step(self, labelled: Batch, unlabelled: Batch, gen: torch.Generator) -> None:
        with torch.autocast(self.device.type, dtype=self.dtype or torch.bfloat16,
                            enabled=self.dtype is not None):
            out = self.method.training_step(labelled, unlabelled, self.step_index, gen)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        out.loss.backward()
        for opt in self.optimizers:
            opt.step()
        self.method.after_optimizer_step(self.step_index)
        self.step_index += 1


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precision", default="auto", help="the fast path's precision")
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="cpu: the process's CPU time, for cores shared with other work")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)

    overrides = parse_overrides(args.overrides)
    config = make_config(args.profile, overrides, device=args.device)
    device = resolve_device(config.device)
    if args.clock == "cpu" and device.type == "cuda":
        parser.error("--clock cpu times the host, not the GPU: use --clock wall on CUDA")
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator(device=device).manual_seed(0)
    d = config.data
    crop = d.crop_size
    xl, yl = make_raw(d.batch_size, crop, device, gen)
    xu, _ = make_raw(d.unlabelled_batch_size, crop, device, gen)
    sizes_l = torch.tensor([[xl.shape[2], xl.shape[3]]] * len(xl))
    sizes_u = torch.tensor([[xu.shape[2], xu.shape[3]]] * len(xu))

    def weak():
        wl = weak_view(xl, yl, crop_size=crop, scale_range=d.scale_range,
                       image_sizes=sizes_l, generator=gen)
        wu = weak_view(xu, torch.full_like(xu[:, 0], 255, dtype=torch.long), crop_size=crop,
                       scale_range=d.scale_range, image_sizes=sizes_u, generator=gen)
        return Batch(wl.images, wl.labels, wl.valid), Batch(wu.images, wu.labels, wu.valid)

    labelled, unlabelled = weak()
    results: dict = {}
    for key, precision, compile_ in (("fp32_", "fp32", False), ("", args.precision,
                                                                   args.compile)):
        for method, name in (("supervised", "supervised_s"), ("semisegdefect", "semi_s")):
            bench = StepBench(args.profile, overrides, device, method, precision, compile_)
            lab, unl = bench.batches(labelled, unlabelled)
            if compile_:
                t = clock()
                bench.step(lab, unl, gen)
                results[f"{key}{name[:-2]}_compile_s"] = clock() - t
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            results[key + name] = timed(lambda: bench.step(lab, unl, gen), device,
                                        args.warmup, args.repeat, clock)
            if device.type == "cuda":
                results[f"{key}{name[:-2]}_peak_memory_gib"] = (
                    torch.cuda.max_memory_allocated() / 2 ** 30)
            if key == "":
                results["precision"] = precision_name(bench.dtype)
                results["channels_last"] = bench.channels_last
                semi = bench
    results["supervised_speedup"] = results["fp32_supervised_s"] / results["supervised_s"]
    results["semi_speedup"] = results["fp32_semi_s"] / results["semi_s"]
    results["semi_over_supervised"] = results["semi_s"] / results["supervised_s"]

    # The non-network parts of a semi step, on the same batch, on the fast path.
    results["weak_views_s"] = timed(weak, device, args.warmup, args.repeat, clock)
    method = semi.method
    lab, unl = semi.batches(labelled, unlabelled)
    with torch.no_grad(), torch.autocast(device.type, dtype=semi.dtype or torch.bfloat16,
                                         enabled=semi.dtype is not None):
        pseudo, conf = method.pseudo_label(unl)
        results["teacher_forward_s"] = timed(lambda: method.pseudo_label(unl), device,
                                             args.warmup, args.repeat, clock)
        strong = strong_view(unl.images, pseudo, conf, generator=gen)
        out = method.student(torch.cat([lab.images, strong.images]))
    results["strong_view_s"] = timed(lambda: strong_view(unl.images, pseudo, conf, generator=gen),
                                     device, args.warmup, args.repeat, clock)
    rep = out.rep.detach().float().requires_grad_(True)
    logits = out.logits.detach().float()

    def contrast():
        method.contrastive(rep, logits, lab.labels, strong.labels, strong.confidences,
                           gen).loss.backward()
    results["contrastive_s"] = timed(contrast, device, args.warmup, args.repeat, clock)
    extra = results["weak_views_s"] + results["strong_view_s"] + results["contrastive_s"]
    results["non_network_share_of_semi_step"] = extra / results["semi_s"]
    results.update(profile=args.profile, device=str(device), threads=torch.get_num_threads(),
                   crop=crop, batch=[d.batch_size, d.unlabelled_batch_size],
                   encoder=config.model.encoder, compile=args.compile, clock=args.clock,
                   hardware=hardware(device))

    width = max(map(len, results))
    for k, v in results.items():
        print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
