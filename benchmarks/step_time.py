"""Time a supervised step, a Semi-SegDefect step and the non-network parts
on the same batch, and print the semi/supervised step-time ratio.

    python benchmarks/step_time.py --profile cpu --threads 2
    python benchmarks/step_time.py --profile paper --device cuda   # on a GPU

The network alone makes a semi step about 2.3x a supervised one (student
forward+backward on twice the images plus a teacher forward); the target
is that augmentation, pseudo-labelling and contrastive sampling add under
10 % on top. Batches are random tensors of the profile's crop size (no
data set needed); timings are medians over ``--repeat`` steps after
``--warmup``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import semiseg_helpers  # noqa: F401  (torchvision fix first)
import torch

from semiseg_helpers.augment import strong_view, weak_view
from semiseg_helpers.classes import NUM_CLASSES
from semiseg_helpers.config import make_config, parse_overrides
from semiseg_helpers.methods import Batch, build_method
from semiseg_helpers.train import resolve_device


def timed(fn, device, warmup: int, repeat: int) -> float:
    """Median seconds of ``fn()`` (synchronising CUDA around each call)."""
    times = []
    for i in range(warmup + repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def make_raw(n: int, size: int, device, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and masks of ~300 px (so the weak view really crops)."""
    side = int(size * 1.4)
    images = torch.rand(n, 3, side, side, generator=gen, device=device)
    labels = torch.randint(0, 3, (n, side, side), generator=gen, device=device)
    return images, labels


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)

    config = make_config(args.profile, parse_overrides(args.overrides), device=args.device)
    device = resolve_device(config.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    autocast = torch.bfloat16 if (config.amp and device.type == "cuda") else None
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
    results: dict[str, float] = {}

    def step_of(method_name: str):
        cfg = make_config(args.profile, parse_overrides(args.overrides), device=args.device,
                          method=method_name)
        method = build_method(cfg, NUM_CLASSES).to(device).train()
        opt = torch.optim.AdamW(method.trainable_parameters(), lr=1e-4)
        counter = iter(range(10 ** 9))

        def step():
            with torch.autocast(device.type, dtype=autocast or torch.bfloat16,
                                enabled=autocast is not None):
                out = method.training_step(labelled, unlabelled, next(counter), gen)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            method.after_optimizer_step(0)
        return method, step

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sup_method, sup_step = step_of("supervised")
    results["supervised_step_s"] = timed(sup_step, device, args.warmup, args.repeat)
    del sup_method
    semi, semi_step = step_of("semisegdefect")
    results["semisegdefect_step_s"] = timed(semi_step, device, args.warmup, args.repeat)
    if device.type == "cuda":
        results["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30

    # The non-network parts, on the same batch.
    results["weak_views_s"] = timed(weak, device, args.warmup, args.repeat)
    with torch.no_grad(), torch.autocast(device.type, dtype=autocast or torch.bfloat16,
                                         enabled=autocast is not None):
        pseudo, conf = semi.pseudo_label(unlabelled)
        results["teacher_forward_s"] = timed(lambda: semi.pseudo_label(unlabelled), device,
                                             args.warmup, args.repeat)
        strong = strong_view(unlabelled.images, pseudo, conf, generator=gen)
        out = semi.student(torch.cat([labelled.images, strong.images]))
    results["strong_view_s"] = timed(
        lambda: strong_view(unlabelled.images, pseudo, conf, generator=gen),
        device, args.warmup, args.repeat)
    rep = out.rep.detach().float().requires_grad_(True)
    logits = out.logits.detach().float()

    def contrast():
        res = semi.contrastive(rep, logits, labelled.labels, strong.labels, strong.confidences,
                               gen)
        res.loss.backward()
    results["contrastive_s"] = timed(contrast, device, args.warmup, args.repeat)

    extra = results["weak_views_s"] + results["strong_view_s"] + results["contrastive_s"]
    results["semi_over_supervised"] = results["semisegdefect_step_s"] / results["supervised_step_s"]
    results["non_network_share_of_semi_step"] = extra / results["semisegdefect_step_s"]
    results.update(profile=args.profile, device=str(device), threads=torch.get_num_threads(),
                   crop=crop, batch=[d.batch_size, d.unlabelled_batch_size],
                   encoder=config.model.encoder)

    width = max(map(len, results))
    for k, v in results.items():
        print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
