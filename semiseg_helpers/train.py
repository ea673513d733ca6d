"""One training loop for every method: data → weak views → method step →
optimiser, EMA, periodic validation, checkpoints, resume, run folder.

:func:`train` is what ``semiseg train`` and the notebooks call. A run killed
midway and started again with the same arguments resumes from its last
checkpoint and ends, on CPU with the same seed, exactly where a straight run
ends: batches come from a stream that can start at any step
(:class:`~semiseg_helpers.data.dataset.StreamBatchSampler`), each step's
augmentation draws from a generator seeded by (seed, step), and the
checkpoint holds every other random state.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from semiseg_helpers.augment import weak_view
from semiseg_helpers.classes import NUM_CLASSES
from semiseg_helpers.config import TrainConfig, config_from_dict
from semiseg_helpers.data.dataset import ManifestDataset, eval_loader, stream_loader
from semiseg_helpers.data.prepare import load_manifest, select_samples
from semiseg_helpers.evaluate import evaluate
from semiseg_helpers.methods import Batch, Method, build_method, resolve_method_config
from semiseg_helpers.runs import RunDir, atomic_torch_save, atomic_write_text

LOG_EVERY = 10


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available on this machine")
    return device


def defect_classes(manifest: dict) -> list[str]:
    """The classes MIoU is averaged over: the defect classes the source has."""
    return [c for c in manifest["source_classes"] if c != "background"]


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The augmentation/sampling generator of one step (resume-exact)."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)


def poly_lambda(steps: int, power: float):
    """The poly schedule's factor at each step: (1 - step / steps) ** power."""
    return lambda step: max(0.0, 1.0 - step / steps) ** power


def _random_states() -> dict:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
              "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_random_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _experiment(config: TrainConfig) -> TrainConfig:
    """``config`` without the settings that say where and how fast a run
    executes (device, CPU threads, loader workers): a run may resume on
    another machine or with more threads, but not with other hyperparameters.
    """
    return replace(config, device="auto", threads=None,
                   data=replace(config.data, workers=0))


def _to_batch(raw: dict, device: torch.device, config: TrainConfig,
              generator: torch.Generator) -> Batch:
    """A collated uint8 batch → its weak view on ``device`` (flip, scale, crop)."""
    images = raw["image"].to(device, non_blocking=True).float().div_(255)
    labels = raw["mask"].to(device, non_blocking=True).long()
    view = weak_view(images, labels, crop_size=config.data.crop_size,
                     scale_range=config.data.scale_range, image_sizes=raw["size"],
                     generator=generator)
    images = view.images
    if device.type == "cuda" and config.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return Batch(images, view.labels, view.valid, raw["source"].to(device))


class Trainer:
    """State of one run; :func:`train` is the usual way in."""

    def __init__(self, config: TrainConfig, data_dir: str | Path, out_dir: str | Path,
                 progress: bool = True):
        if config.steps < 1:
            raise ValueError(f"steps must be >= 1, got {config.steps}")
        config = resolve_method_config(config)
        self.config = config
        self.run = RunDir(out_dir)
        self.progress = progress
        self.manifest = load_manifest(data_dir)
        self.root = Path(self.manifest["root"])
        self.classes = defect_classes(self.manifest)
        self.device = resolve_device(config.device)
        self.autocast = (torch.bfloat16 if config.amp and self.device.type == "cuda" else None)

        self.labelled = select_samples(self.manifest, "train", config.label_fraction)
        self.unlabelled = select_samples(self.manifest, "train", config.label_fraction,
                                         labelled=False)
        self.val = select_samples(self.manifest, "val")
        self.test = select_samples(self.manifest, "test")
        if not self.labelled:
            raise ValueError(f"{data_dir}: no labelled training sample at label fraction "
                             f"{config.label_fraction}")
        if not self.val:
            raise ValueError(f"{data_dir}: the validation split is empty")

        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        random.seed(config.seed)
        if config.threads:
            torch.set_num_threads(config.threads)
        self.method: Method = build_method(config, NUM_CLASSES).to(self.device)
        if self.method.uses_unlabelled and not self.unlabelled:
            raise ValueError(f"{config.method} needs unlabelled images but label fraction "
                             f"{config.label_fraction} leaves none")
        if self.device.type == "cuda" and config.channels_last:
            self.method.to(memory_format=torch.channels_last)
        o = config.optim
        self.optimizer = torch.optim.AdamW(self.method.trainable_parameters(), lr=o.lr,
                                           betas=o.betas, weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, poly_lambda(config.steps, o.poly_power))
        self.step = 0
        self.best = {"miou": -math.inf, "step": None, "val": None}
        self.seconds = 0.0

    # ------------------------------------------------------------------ #
    # Run folder

    def prepare_run(self) -> None:
        """Create the run folder, or check it belongs to this config and resume."""
        saved = self.config.to_dict()
        if self.run.config.is_file():
            previous = config_from_dict(self.run.read_config())
            if _experiment(previous) != _experiment(self.config):
                raise ValueError(f"{self.run.path}: holds a run with another configuration; "
                                 "use a new folder (or delete it)")
        self.run.create()
        atomic_write_text(self.run.config, json.dumps(saved, indent=1))
        if self.run.last.is_file():
            self.load_checkpoint()
        # a log line past the checkpoint (or any, without one) is re-made now
        self.run.truncate_log(self.step)

    def state(self) -> dict:
        return {"step": self.step, "method": self.method.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "best": self.best,
                "seconds": self.seconds, "random": _random_states()}

    def save_checkpoint(self) -> None:
        atomic_torch_save(self.state(), self.run.last)

    def load_checkpoint(self) -> None:
        state = torch.load(self.run.last, map_location=self.device, weights_only=False)
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.best, self.seconds = state["step"], state["best"], state["seconds"]
        _set_random_states(state["random"])

    # ------------------------------------------------------------------ #
    # Evaluation

    def evaluate(self, samples: list[dict], model: torch.nn.Module | None = None) -> dict:
        model = model or self.method.inference_model()
        was_training = model.training
        model.eval()
        window = self.config.data.eval_size or self.config.data.crop_size
        result = evaluate(lambda x: model(x, return_rep=False).logits.float(),
                          eval_loader(ManifestDataset(self.root, samples)), self.classes,
                          self.device, window, NUM_CLASSES, self.autocast)
        model.train(was_training)
        return result

    # ------------------------------------------------------------------ #
    # Training

    def fit(self, stop_after: int | None = None) -> dict | None:
        """Train to ``config.steps`` (or stop after ``stop_after`` steps, as if
        killed, returning ``None``); then test the best checkpoint and write
        ``summary.json``, which is returned."""
        c = self.config
        self.prepare_run()
        workers = c.data.workers
        labelled_iter = stream_loader(ManifestDataset(self.root, self.labelled),
                                      c.data.batch_size, c.seed, self.step, workers)
        unlabelled_iter = (stream_loader(ManifestDataset(self.root, self.unlabelled),
                                         c.data.unlabelled_batch_size, c.seed + 1, self.step,
                                         workers)
                           if self.method.uses_unlabelled else None)
        self.method.train()
        bar = tqdm(total=c.steps, initial=self.step, disable=not self.progress,
                   desc=f"{c.method} {c.label_fraction:g}", dynamic_ncols=True)
        started = time.time() - self.seconds
        while self.step < c.steps:
            gen = step_generator(c.seed, self.step, self.device)
            labelled = _to_batch(next(labelled_iter), self.device, c, gen)
            unlabelled = (_to_batch(next(unlabelled_iter), self.device, c, gen)
                          if unlabelled_iter is not None else None)
            lr = self.scheduler.get_last_lr()[0]
            with torch.autocast(self.device.type, dtype=self.autocast or torch.bfloat16,
                                enabled=self.autocast is not None):
                out = self.method.training_step(labelled, unlabelled, self.step, gen)
            if not torch.isfinite(out.loss):
                raise FloatingPointError(f"loss is {out.loss.item()} at step {self.step} "
                                         f"({out.logs}); lower optim.lr?")
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.method.after_optimizer_step(self.step)
            self.step += 1
            self.seconds = time.time() - started

            if self.step % LOG_EVERY == 0 or self.step == 1:
                self.run.log({"step": self.step, "lr": lr, "loss": out.loss.item(), **out.logs,
                              "seconds": round(self.seconds, 2)})
            bar.update()
            bar.set_postfix({k: f"{v:.3g}" for k, v in out.logs.items()
                             if k in ("loss_sup", "loss_unsup", "loss_contrast", "w_u")},
                            refresh=False)
            if self.step % c.eval_every == 0 or self.step == c.steps:
                self.validate()
            if self.step % c.checkpoint_every == 0 or self.step == c.steps:
                self.save_checkpoint()
            if stop_after is not None and self.step >= stop_after and self.step < c.steps:
                bar.close()
                return None
        bar.close()
        return self.finish()

    def validate(self) -> None:
        val = self.evaluate(self.val)
        record = {"step": self.step, "val_miou": val["miou"],
                  **{f"val_iou_{k}": v for k, v in val["iou"].items()}}
        self.run.log(record)
        if val["miou"] > self.best["miou"] or self.best["step"] is None:
            self.best = {"miou": val["miou"], "step": self.step, "val": val}
            atomic_torch_save(self.method.inference_model().state_dict(), self.run.best)
        if self.progress:
            tqdm.write(f"step {self.step}: val MIoU {val['miou']:.4f} "
                       f"(best {self.best['miou']:.4f} @ {self.best['step']})")

    def finish(self) -> dict:
        model = self.method.inference_model()
        model.load_state_dict(torch.load(self.run.best, map_location=self.device))
        test = self.evaluate(self.test) if self.test else None
        c = self.config
        summary = {
            "method": c.method, "label_fraction": c.label_fraction, "seed": c.seed,
            "profile": c.profile, "arch": c.model.arch, "encoder": c.model.encoder,
            "pretrained": c.model.pretrained, "steps": c.steps,
            "best_step": self.best["step"], "seconds": round(self.seconds, 1),
            "classes": self.classes,
            "n_labelled": len(self.labelled), "n_unlabelled": len(self.unlabelled),
            "val": _scores(self.best["val"]), "test": _scores(test),
            "dataset": str(self.root),
        }
        atomic_write_text(self.run.summary, json.dumps(summary, indent=1))
        return summary


def _scores(result: dict | None) -> dict | None:
    if result is None:
        return None
    return {"miou": result["miou"], "iou": result["iou"],
            "background_iou": result["background_iou"], "confusion": result["confusion"]}


def train(config: TrainConfig, data_dir: str | Path, out_dir: str | Path, *,
          progress: bool = True, stop_after: int | None = None) -> dict | None:
    """Train one run into ``out_dir`` (resuming it if it was interrupted).

    A finished run (``summary.json`` present) is not trained again; its
    summary is returned.
    """
    run = RunDir(out_dir)
    if run.finished:
        return run.read_summary()
    return Trainer(config, data_dir, out_dir, progress=progress).fit(stop_after)


__all__ = ["Trainer", "defect_classes", "poly_lambda", "resolve_device",
           "step_generator", "train"]
