"""Time a run's network in PyTorch (fp32 eager, and at the run's precision)
and its ONNX export in onnxruntime, on the CPU, as ``semiseg predict`` uses them.

    python benchmarks/export_latency.py --run records/peerhub-cpu/models-of-record/semisegdefect-f0.05-s0 \\
        --threads 2 --json figures/benchmarks/export_latency.json

The run is exported to a temporary ONNX file first (:func:`export_run_onnx`).
Two inputs: a 224 x 224 image (one pass) and a 1080 x 720 photo segmented by
sliding windows of the run's size (35 windows of 224 px at 1/3 overlap, what
``semiseg predict`` does). Images are random (the time does not depend on the
content). Each engine is timed on its own, ``--repeat`` predictions in a row
after one warm-up and a pause: taking turns call by call, each engine's idle
threads (onnxruntime's spin for a while after a run, as OpenMP's do) slowed the
next one down on 2 cores. For the same reason onnxruntime is timed with PyTorch,
which then only cuts the windows and adds up their logits, on one thread: its
OpenMP threads beside onnxruntime's own took twice the time otherwise, a cost
a user of onnxruntime alone does not pay. The median (``seconds``) and the
fastest (``fastest_seconds``) are reported, with the load average seen before
and after (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import semiseg_helpers  # noqa: F401  (torchvision fix first)
import onnxruntime
import torch

from semiseg_helpers.classes import NUM_CLASSES
from semiseg_helpers.evaluate import eval_window, logits_fn, run_logits_fn, sliding_window_logits
from semiseg_helpers.export import Forward, export_run_onnx, onnx_logits_fn, onnx_session
from semiseg_helpers.precision import autocast_dtype, precision_name
from semiseg_helpers.predict import load_run_model
from semiseg_helpers.runs import atomic_write_text

SIZES: dict[str, tuple[int, int]] = {"224x224": (224, 224), "1080x720": (1080, 720)}
"""Inputs timed, width x height."""

PAUSE_S = 1.0
"""Seconds of rest before an engine is timed."""


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (empty where unknown)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def time_engines(engines: dict[str, tuple[Forward, int]], image: torch.Tensor, window: int,
                 overlap: float, repeat: int) -> dict[str, list[float]]:
    """Seconds of each of ``repeat`` sliding-window predictions (logits and
    argmax) of ``image`` by each engine, one engine after the other; an
    engine is ``(forward, PyTorch's threads meanwhile)``."""
    def predict(forward: Forward) -> torch.Tensor:
        with torch.no_grad():
            return sliding_window_logits(forward, image, window, NUM_CLASSES, overlap).argmax(1)

    times: dict[str, list[float]] = {name: [] for name in engines}
    threads = torch.get_num_threads()
    for name, (forward, torch_threads) in engines.items():
        torch.set_num_threads(torch_threads)
        predict(forward)                                   # warm-up
        time.sleep(PAUSE_S)                                # the last engine's threads settle
        for _ in range(repeat):
            start = time.perf_counter()
            predict(forward)
            times[name].append(time.perf_counter() - start)
    torch.set_num_threads(threads)
    return times


def count_windows(window: int, image: torch.Tensor, overlap: float) -> int:
    calls = []

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape)
        return torch.zeros(x.shape[0], NUM_CLASSES, *x.shape[2:])

    sliding_window_logits(counted, image, window, NUM_CLASSES, overlap)
    return len(calls)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run folder (checkpoints or model.safetensors)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--overlap", type=float, default=1 / 3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    model, config = load_run_model(args.run, "cpu")
    window = eval_window(config)
    run_precision = precision_name(autocast_dtype(config.precision, cpu))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = export_run_onnx(args.run, Path(tmp) / "model.onnx")
        export_seconds = time.perf_counter() - start
        engines = {"pytorch_fp32": (logits_fn(model), args.threads),
                   f"pytorch_{run_precision}": (run_logits_fn(model, config, cpu), args.threads),
                   "onnxruntime_fp32": (onnx_logits_fn(onnx_session(path, args.threads)), 1)}
        cases = []
        for label, (w, h) in SIZES.items():
            image = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
            times = time_engines(engines, image, window, args.overlap, args.repeat)
            cases.append({"input": label, "size": [w, h],
                          "windows": count_windows(window, image, args.overlap),
                          "seconds": {k: statistics.median(t) for k, t in times.items()},
                          "fastest_seconds": {k: min(t) for k, t in times.items()}})
    result = {"run": args.run, "threads": args.threads, "repeat": args.repeat,
              "window": window, "overlap": args.overlap, "run_precision": run_precision,
              "export_seconds": export_seconds, "cases": cases, "cpu": cpu_name(),
              "load_average_before": load_before[0], "load_average_after": os.getloadavg()[0],
              "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    for case in cases:
        print(f"{case['input']:<10} ({case['windows']} windows) " + "  ".join(
            f"{name} {1000 * s:.0f} ms" for name, s in case["seconds"].items()))
    print(f"load average {result['load_average_before']:.1f} -> "
          f"{result['load_average_after']:.1f} on {os.cpu_count()} cores")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
