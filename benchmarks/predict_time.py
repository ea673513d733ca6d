"""Time ``semiseg predict``'s sliding-window inference on one photo.

    python benchmarks/predict_time.py --run records/peerhub-cpu/models-of-record/semisegdefect-f0.05-s0 \\
        --size 1080 720 --threads 2 --json figures/benchmarks/predict_time.json

The photo is random (the time does not depend on its content), of ``--size``
width x height; the run's own window (``data.eval_size`` or the crop) and
precision are used, as ``semiseg predict`` does. Reports the median of
``--repeat`` predictions after one warm-up, and the number of windows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import semiseg_helpers  # noqa: F401  (torchvision fix first)
import torch

from semiseg_helpers.classes import NUM_CLASSES
from semiseg_helpers.evaluate import eval_window, run_logits_fn, sliding_window_logits
from semiseg_helpers.predict import load_run_model
from semiseg_helpers.precision import autocast_dtype, precision_name
from semiseg_helpers.runs import atomic_write_text


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run folder (checkpoints or model.safetensors)")
    parser.add_argument("--size", nargs=2, type=int, default=(1080, 720), metavar=("W", "H"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--overlap", type=float, default=1 / 3)
    parser.add_argument("--window", type=int, default=None, help="default: the run's")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, config = load_run_model(args.run, "cpu")
    device = torch.device("cpu")
    forward = run_logits_fn(model, config, device)
    window = args.window or eval_window(config)
    w, h = args.size
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    calls = []

    def counted(t):
        calls.append(1)
        return forward(t)

    def once():
        with torch.no_grad():
            return sliding_window_logits(counted, x, window, NUM_CLASSES, args.overlap).argmax(1)

    once()
    windows = len(calls)
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    result = {"run": args.run, "size": [w, h], "window": window, "overlap": args.overlap,
              "windows": windows, "seconds": statistics.median(times),
              "precision": precision_name(autocast_dtype(config.precision, device)),
              "threads": torch.get_num_threads()}
    for k, v in result.items():
        print(f"{k:<10} {v:.3f}" if isinstance(v, float) else f"{k:<10} {v}")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
