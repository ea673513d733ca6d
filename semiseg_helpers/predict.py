"""Putting a trained run to work: score it on any prepared dataset, or
segment a folder of photos of any size by sliding window.

Every dataset is mapped onto the one class schema when it is prepared, so a
model trained on one dataset is scored on another by class name: MIoU is
taken over the defect classes the *evaluated* dataset has, those in the
evaluated split's ground truth (:func:`~semiseg_helpers.evaluate.summarise`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from semiseg_helpers.classes import CLASS_NAMES, NUM_CLASSES, colourise, overlay
from semiseg_helpers.config import TrainConfig, config_from_dict
from semiseg_helpers.data.dataset import ManifestDataset, eval_loader
from semiseg_helpers.data.prepare import load_manifest, select_samples
from semiseg_helpers.data.readers import IMAGE_SUFFIXES, load_image
from semiseg_helpers.evaluate import (defect_classes, eval_window, evaluate, run_logits_fn,
                                      sliding_window_logits)
from semiseg_helpers.methods import build_method
from semiseg_helpers.runs import RunDir
from semiseg_helpers.train import resolve_device


def load_run_model(run_dir: str | Path, device: str = "auto",
                   checkpoint: str = "best") -> tuple[torch.nn.Module, TrainConfig]:
    """The run's inference network with its best (or ``last``) weights, in eval mode.

    The method is rebuilt from ``config.json`` and the checkpoint loaded into
    it, so every method works, whatever its inference network is (one
    network, a mean teacher, Duo-SegNet's pair). Pretrained encoder weights
    are not loaded again (the checkpoint holds every weight), so a run can be
    used on a machine without the weights package.
    """
    run = RunDir(run_dir)
    config = config_from_dict(run.read_config())
    method = build_method(replace(config, model=replace(config.model, pretrained=None)),
                          NUM_CLASSES)
    model = method.inference_model()
    if checkpoint == "best" and not run.best.is_file() and run.weights.is_file():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(run.weights)))   # half -> the model's float32
        return model.to(resolve_device(device)).eval(), config
    path = run.best if checkpoint == "best" else run.last
    if not path.is_file():
        raise FileNotFoundError(f"{run.path}: no {path.name}" + (
            f" and no {run.weights.name}" if checkpoint == "best" else "")
            + " (has the run validated yet?)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if checkpoint == "best":
        model.load_state_dict(state)
    else:
        method.load_state_dict(state["method"])
    return model.to(resolve_device(device)).eval(), config


def export_weights(run_dir: str | Path) -> Path:
    """Write the run's best inference weights to ``RUN/model.safetensors`` in
    half precision, and return its path.

    This is what a model of record commits (a few MB: no optimiser state, no
    student beside the teacher), so that :func:`load_run_model` — hence
    ``semiseg evaluate`` / ``predict`` and the notebooks — works from a fresh
    clone without training. Floating tensors are stored as float16 and read
    back into float32; integer buffers keep their type.
    """
    from safetensors.torch import save_file

    run = RunDir(run_dir)
    if not run.best.is_file():
        raise FileNotFoundError(f"{run.path}: no {run.best.name} to export")
    model, _ = load_run_model(run.path, "cpu")
    state = {k: (v.half() if v.is_floating_point() else v).contiguous()
             for k, v in model.state_dict().items()}
    tmp = run.weights.with_name(f".{run.weights.name}.tmp")
    save_file(state, str(tmp), metadata={"dtype": "float16", "source": run.best.name})
    tmp.replace(run.weights)
    return run.weights


def evaluate_run(run_dir: str | Path, data_dir: str | Path, split: str = "test",
                 device: str = "auto", window: int | None = None) -> dict:
    """Per-class IoU and MIoU of a run's best checkpoint on a prepared dataset's split."""
    model, config = load_run_model(run_dir, device)
    manifest = load_manifest(data_dir)
    samples = select_samples(manifest, split)
    if not samples:
        raise ValueError(f"{data_dir}: split {split!r} has no labelled sample")
    dev = next(model.parameters()).device
    result = evaluate(run_logits_fn(model, config, dev),
                      eval_loader(ManifestDataset(manifest["root"], samples)),
                      defect_classes(manifest), dev, window or eval_window(config), NUM_CLASSES)
    result.update(run=str(run_dir), data=str(data_dir), split=split, n_images=len(samples))
    return result


@torch.no_grad()
def predict_folder(run_dir: str | Path, images: str | Path, out: str | Path,
                   device: str = "auto", window: int | None = None, overlap: float = 1 / 3,
                   progress: bool = True) -> list[Path]:
    """Segment every photo in ``images`` into ``out``: ``<name>.png`` (class
    indices, see ``classes.txt`` written beside them), ``<name>_overlay.jpg``
    and ``<name>_mask.png`` (colours). Also writes ``predictions.json`` with
    each photo's class pixel shares."""
    model, config = load_run_model(run_dir, device)
    dev = next(model.parameters()).device
    window = window or eval_window(config)
    forward = run_logits_fn(model, config, dev)
    files = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(CLASS_NAMES)))
    report, written = {}, []
    for path in tqdm(files, desc="predicting", disable=not progress):
        rgb = load_image(path)
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(dev).float().div_(255)
        logits = sliding_window_logits(forward, x, window, NUM_CLASSES, overlap)
        mask = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
        Image.fromarray(mask, mode="L").save(out / f"{path.stem}.png")
        Image.fromarray(colourise(mask)).save(out / f"{path.stem}_mask.png")
        Image.fromarray(overlay(rgb, mask)).save(out / f"{path.stem}_overlay.jpg", quality=92)
        counts = np.bincount(mask.ravel(), minlength=NUM_CLASSES)
        report[path.name] = {c: float(counts[i] / mask.size) for i, c in enumerate(CLASS_NAMES)}
        written.append(out / f"{path.stem}.png")
    (out / "predictions.json").write_text(json.dumps(report, indent=1))
    return written
