"""One training loop for every method: data → weak views → method step →
optimiser, EMA, periodic validation, checkpoints, resume, run folder.

:func:`train` is what ``semiseg train`` and the notebooks call. A run killed
midway and started again with the same arguments resumes from its last
checkpoint and ends, on CPU with the same seed, exactly where a straight run
ends: batches come from a stream that can start at any step
(:class:`~semiseg_helpers.data.dataset.StreamBatchSampler`), each step's
augmentation draws from a generator seeded by (seed, step), the checkpoint
holds every other random state (dropout draws from the global one), and
nothing else draws from those states: the batch iterators, made after a
resume restored them, have a generator of their own
(:func:`~semiseg_helpers.data.dataset.stream_loader`).

A run folder holds one configuration: :func:`train` asked for a folder that
holds a run of another one (finished or not) stops with the keys that differ.

Started by ``torchrun`` (several processes, one GPU each, or gloo on the
CPU), the same loop trains data-parallel: the configured batch sizes are
global, each process takes its share of every batch, gradients are averaged,
rank 0 alone writes the run folder and validates (:mod:`semiseg_helpers.distributed`).
"""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset
from tqdm.auto import tqdm

from semiseg_helpers import distributed
from semiseg_helpers.augment import weak_view
from semiseg_helpers.classes import NUM_CLASSES
from semiseg_helpers.config import TrainConfig
from semiseg_helpers.data.dataset import ManifestDataset, eval_loader, stream_loader
from semiseg_helpers.data.prepare import dataset_fingerprint, load_manifest, select_samples
from semiseg_helpers.evaluate import defect_classes, eval_window, evaluate, run_logits_fn
from semiseg_helpers.methods import Batch, Method, build_method, resolve_method_config
from semiseg_helpers.models import SemiSegDefect, SmpSegmentationModel
from semiseg_helpers.precision import (
    autocast_dtype,
    cpu_cores,
    hardware,
    precision_name,
    use_channels_last,
)
from semiseg_helpers.runs import RunDir, atomic_torch_save, atomic_write_text, check_config

LOG_EVERY = 10


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available on this machine")
    return device


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
    # a checkpoint loaded with map_location=cuda holds the states on the GPU
    torch.set_rng_state(states["torch"].cpu())
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


STREAM_SEED_STRIDE = 2 ** 20
"""Seed distance between a method's successive labelled (or unlabelled) streams."""


def stream_seed(seed: int, unlabelled: bool, k: int = 0) -> int:
    """Seed of the ``k``-th labelled or unlabelled batch stream of a run seeded
    ``seed``: ``seed`` and ``seed + 1`` for the first of each kind (every
    method has those), :data:`STREAM_SEED_STRIDE` further on per extra stream."""
    return seed + int(unlabelled) + STREAM_SEED_STRIDE * k


def compile_networks(method: torch.nn.Module) -> None:
    """``torch.compile`` every segmentation network of ``method`` in place
    (``nn.Module.compile``: the state-dict keys, hence checkpoints, stay as
    they are). Compilation happens at the first call of each network."""
    for module in method.modules():
        if isinstance(module, (SemiSegDefect, SmpSegmentationModel)):
            module.compile()


def _check_optimizers(method: Method, optimizers: dict) -> None:
    """Every trainable parameter in exactly one optimiser, and no frozen one."""
    if not optimizers:
        raise ValueError(f"{type(method).__name__}.optimizers() gave no optimiser")
    seen: dict[int, str] = {}
    for name, optimizer in optimizers.items():
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) in seen:
                    raise ValueError(f"a parameter is in optimisers {seen[id(p)]!r} and "
                                     f"{name!r}")
                seen[id(p)] = name
    trainable = {id(p) for p in method.trainable_parameters()}
    if set(seen) != trainable:
        raise ValueError(f"{type(method).__name__}.optimizers() must hold every trainable "
                         f"parameter and no frozen one ({len(trainable - set(seen))} left "
                         f"out, {len(set(seen) - trainable)} frozen included)")


def _to_batch(raw: dict, device: torch.device, config: TrainConfig,
              generator: torch.Generator, channels_last: bool = False,
              share: tuple[int, int] = (0, 1)) -> Batch:
    """A collated uint8 batch → its weak view on ``device`` (flip, scale, crop);
    ``share``: this process's part of the global batch (``weak_view``)."""
    images = raw["image"].to(device, non_blocking=True).float().div_(255)
    labels = raw["mask"].to(device, non_blocking=True).long()
    view = weak_view(images, labels, crop_size=config.data.crop_size,
                     scale_range=config.data.scale_range, image_sizes=raw["size"],
                     generator=generator, share=share)
    images = view.images
    if channels_last:
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
        self.manifest = load_manifest(data_dir)
        self.root = Path(self.manifest["root"])
        self.classes = defect_classes(self.manifest)
        # under torchrun: this process's rank and device (cuda:LOCAL_RANK); else rank 0 of 1
        self.dist = distributed.setup(resolve_device(config.device))
        self.device = self.dist.device
        self.progress = progress and self.dist.is_main
        self.autocast = autocast_dtype(config.precision, self.device)
        self.channels_last = use_channels_last(config.channels_last, self.device, self.autocast)

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

        _seed_all(config.seed)
        if config.threads:
            # never more threads than cores this process may run on: a thread
            # beyond them only waits on the others (OpenMP spins while it waits)
            torch.set_num_threads(min(config.threads, cpu_cores()))
        self.method: Method = build_method(config, NUM_CLASSES).to(self.device)
        if self.method.uses_unlabelled and not self.unlabelled:
            raise ValueError(f"{config.method} needs unlabelled images but label fraction "
                             f"{config.label_fraction} leaves none")
        distributed.check_batch_sizes(config, self.dist.world, self.method.uses_unlabelled)
        distributed.broadcast_module(self.method, self.dist)
        if config.sync_bn:
            self.method = distributed.convert_sync_batchnorm(self.method, self.dist)
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        if config.compile:
            compile_networks(self.method)
        # the method's optimisers (default: one AdamW), each under the poly schedule
        self.optimizers = self.method.optimizers()
        _check_optimizers(self.method, self.optimizers)
        self.trainable = self.method.trainable_parameters()
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(
            optimizer, poly_lambda(config.steps, config.optim.poly_power))
            for name, optimizer in self.optimizers.items()}
        # one labelled stream per part of the labelled set the method asks for
        self.labelled_parts = self.method.labelled_partition(
            ManifestDataset(self.root, self.labelled).sources)
        if not self.labelled_parts or not all(self.labelled_parts) or any(
                not 0 <= i < len(self.labelled) for part in self.labelled_parts for i in part):
            raise ValueError(f"{config.method}: labelled_partition must give non-empty lists "
                             f"of indices into the {len(self.labelled)} labelled samples")
        self.step = 0
        self.best = {"miou": -math.inf, "step": None, "val": None}
        self.seconds = 0.0
        if self.dist.rank:  # each process its own dropout draws; rank 0's are one process's
            _seed_all(self.dist.rank_seed(config.seed))

    # ------------------------------------------------------------------ #
    # Run folder

    def prepare_run(self) -> None:
        """Create the run folder, or check it belongs to this config and resume."""
        saved = self.config.to_dict()
        # a run may resume on another machine or with more threads (runs.RUNTIME_KEYS),
        # not with other hyperparameters
        check_config(self.run, self.config)
        if self.dist.is_main:   # the only process that writes the run folder
            self.run.create()
            atomic_write_text(self.run.config, json.dumps(saved, indent=1))
        if self.run.last.is_file():
            self.load_checkpoint()
        if self.dist.is_main:
            # a log line past the checkpoint (or any, without one) is re-made now
            self.run.truncate_log(self.step)
        steps = self.dist.all_gather(self.step)
        if len(set(steps)) > 1:
            raise RuntimeError(f"the processes resume at different steps {steps}: every one "
                               f"must see {self.run.path} (a file system they share)")

    def state(self) -> dict:
        return {"step": self.step, "method": self.method.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
                "best": self.best,
                "seconds": self.seconds, "random": _random_states()}

    def save_checkpoint(self) -> None:
        """Rank 0 writes ``last.pt``, with every process's random states."""
        distributed.check_in_sync(self.method, self.dist)
        randoms = self.dist.gather(_random_states())
        if self.dist.is_main:
            state = self.state()
            if self.dist.world > 1:
                state["random_ranks"] = randoms
            atomic_torch_save(state, self.run.last)

    def load_checkpoint(self) -> None:
        state = torch.load(self.run.last, map_location=self.device, weights_only=False)
        self.method.load_state_dict(state["method"])
        self._load_optimizer_states(state)
        self.step, self.best, self.seconds = state["step"], state["best"], state["seconds"]
        ranks = state.get("random_ranks")
        if ranks is not None and len(ranks) == self.dist.world:
            _set_random_states(ranks[self.dist.rank])
        elif self.dist.is_main:
            _set_random_states(state["random"])
        else:  # saved by another number of processes: fresh states of this one's own
            _seed_all(self.dist.rank_seed(self.config.seed, self.step))

    def _load_optimizer_states(self, state: dict) -> None:
        """Every optimiser's and schedule's state; a checkpoint from before
        methods declared their optimisers holds one of each (``optimizer``,
        ``scheduler``): the single one it fits."""
        if "optimizers" in state:
            optimizers, schedulers = state["optimizers"], state["schedulers"]
        elif len(self.optimizers) == 1:
            (name,) = self.optimizers
            optimizers, schedulers = {name: state["optimizer"]}, {name: state["scheduler"]}
        else:
            raise ValueError(f"{self.run.last}: holds one optimiser; this method has "
                             f"{sorted(self.optimizers)}")
        if optimizers.keys() != self.optimizers.keys():
            raise ValueError(f"{self.run.last}: optimisers {sorted(optimizers)}, this method "
                             f"has {sorted(self.optimizers)}")
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(optimizers[name])
            self.schedulers[name].load_state_dict(schedulers[name])

    # ------------------------------------------------------------------ #
    # Batch streams

    def open_streams(self) -> tuple[list, list]:
        """Batch iterators from the current step (so a resumed run continues
        the very batches): one per part of the labelled set
        (:meth:`~semiseg_helpers.methods.base.Method.labelled_partition`, each
        a full ``data.batch_size``), and ``unlabelled_streams`` over the whole
        unlabelled set (none for a method without ``uses_unlabelled``); each
        stream its own seed (:func:`stream_seed`). A sample's ``index`` and
        ``source`` stay those of the whole labelled list. With several
        processes the batch sizes are global: each process's iterators yield
        its share of every batch."""
        c, workers = self.config, self.config.data.workers
        labelled_set = ManifestDataset(self.root, self.labelled)
        labelled = [stream_loader(Subset(labelled_set, part), c.data.batch_size,
                                  stream_seed(c.seed, False, k), self.step, workers,
                                  self.dist.share)
                    for k, part in enumerate(self.labelled_parts)]
        unlabelled = []
        if self.method.uses_unlabelled:
            unlabelled_set = ManifestDataset(self.root, self.unlabelled)
            unlabelled = [stream_loader(unlabelled_set, c.data.unlabelled_batch_size,
                                        stream_seed(c.seed, True, k), self.step, workers,
                                        self.dist.share)
                          for k in range(self.method.unlabelled_streams)]
        return labelled, unlabelled

    def draw(self, streams: list, generator: torch.Generator) -> Batch | tuple[Batch, ...]:
        """The next batch of each stream, as weak views: one Batch, or a tuple."""
        batches = tuple(_to_batch(next(it), self.device, self.config, generator,
                                  self.channels_last, self.dist.share) for it in streams)
        return batches[0] if len(batches) == 1 else batches

    # ------------------------------------------------------------------ #
    # Evaluation

    def evaluate(self, samples: list[dict], model: torch.nn.Module | None = None) -> dict:
        model = model or self.method.inference_model()
        was_training = model.training
        model.eval()
        result = evaluate(run_logits_fn(model, self.config, self.device),
                          eval_loader(ManifestDataset(self.root, samples)),
                          self.classes, self.device, eval_window(self.config), NUM_CLASSES)
        model.train(was_training)
        return result

    # ------------------------------------------------------------------ #
    # Training

    def fit(self, stop_after: int | None = None) -> dict | None:
        """Train to ``config.steps`` (or stop after ``stop_after`` steps, as if
        killed, returning ``None``); then test the best checkpoint and write
        ``summary.json``, which is returned. The run folder is locked meanwhile
        (rank 0 holds it for all processes): a second process asked to train
        it raises :class:`~semiseg_helpers.runs.RunInUse`."""
        with self.run.lock() if self.dist.is_main else nullcontext():
            return self._fit(stop_after)

    def _fit(self, stop_after: int | None) -> dict | None:
        c = self.config
        self.prepare_run()
        labelled_streams, unlabelled_streams = self.open_streams()
        self.method.train()
        bar = tqdm(total=c.steps, initial=self.step, disable=not self.progress,
                   desc=f"{c.method} {c.label_fraction:g}", dynamic_ncols=True)
        started = time.time() - self.seconds
        while self.step < c.steps:
            gen = step_generator(c.seed, self.step, self.device)
            labelled = self.draw(labelled_streams, gen)
            unlabelled = self.draw(unlabelled_streams, gen) if unlabelled_streams else None
            if self.dist.rank:  # the step's own draws (strong views, anchors): this process's
                gen = step_generator(self.dist.rank_seed(c.seed), self.step, self.device)
            # the first optimiser's lr is "lr"; others' "lr_<name>"
            lrs = {("lr" if k == 0 else f"lr_{name}"): scheduler.get_last_lr()[0]
                   for k, (name, scheduler) in enumerate(self.schedulers.items())}
            with torch.autocast(self.device.type, dtype=self.autocast or torch.bfloat16,
                                enabled=self.autocast is not None):
                out = self.method.training_step(labelled, unlabelled, self.step, gen)
            if not torch.isfinite(out.loss):
                raise FloatingPointError(f"loss is {out.loss.item()} at step {self.step} "
                                         f"({out.logs}); lower optim.lr?")
            for optimizer in self.optimizers.values():
                optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            distributed.average_gradients(self.trainable, self.dist)
            for optimizer in self.optimizers.values():
                optimizer.step()
            for scheduler in self.schedulers.values():
                scheduler.step()
            distributed.average_buffers(self.method, self.dist)
            self.method.after_optimizer_step(self.step)
            self.step += 1
            self.seconds = time.time() - started

            if self.step % LOG_EVERY == 0 or self.step == 1:
                loss, logs = self.dist.mean_logs(out.loss.item(), out.logs)
                if self.dist.is_main:
                    self.run.log({"step": self.step, **lrs, "loss": loss, **logs,
                                  "seconds": round(self.seconds, 2)})
            bar.update()
            bar.set_postfix({k: f"{v:.3g}" for k, v in out.logs.items()
                             if k in ("loss_sup", "loss_unsup", "loss_contrast", "w_u")},
                            refresh=False)
            if (self.step % c.eval_every == 0 or self.step == c.steps) and self.dist.is_main:
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
        """Test the best checkpoint and write ``summary.json`` (rank 0; every
        process returns it)."""
        if not self.dist.is_main:
            return self.dist.broadcast(None)
        model = self.method.inference_model()
        model.load_state_dict(torch.load(self.run.best, map_location=self.device))
        test = self.evaluate(self.test) if self.test else None
        c = self.config
        summary = {
            "method": c.method, "label_fraction": c.label_fraction, "seed": c.seed,
            "profile": c.profile, "arch": c.model.arch, "encoder": c.model.encoder,
            "pretrained": c.model.pretrained, "steps": c.steps,
            "best_step": self.best["step"], "seconds": round(self.seconds, 1),
            "precision": precision_name(self.autocast), "channels_last": self.channels_last,
            "threads": torch.get_num_threads(), "processes": self.dist.world,
            "hardware": hardware(self.device),
            "classes": self.classes,
            "n_labelled": len(self.labelled), "n_unlabelled": len(self.unlabelled),
            "val": _scores(self.best["val"]), "test": _scores(test),
            "dataset": str(self.root),
            "dataset_fingerprint": dataset_fingerprint(self.manifest),
        }
        atomic_write_text(self.run.summary, json.dumps(summary, indent=1))
        return self.dist.broadcast(summary)


def _scores(result: dict | None) -> dict | None:
    if result is None:
        return None
    return {"miou": result["miou"], "iou": result["iou"],
            "miou_classes": result["miou_classes"],
            "background_iou": result["background_iou"], "confusion": result["confusion"]}


def train(config: TrainConfig, data_dir: str | Path, out_dir: str | Path, *,
          progress: bool = True, stop_after: int | None = None) -> dict | None:
    """Train one run into ``out_dir`` (resuming it if it was interrupted).

    A finished run (``summary.json`` present) is not trained again; its
    summary is returned. A folder holding a run, finished or not, of another
    configuration is a ``ValueError`` naming the keys that differ
    (:func:`~semiseg_helpers.runs.check_config`).
    """
    run = RunDir(out_dir)
    if run.finished:
        check_config(run, resolve_method_config(config))
        return run.read_summary()
    return Trainer(config, data_dir, out_dir, progress=progress).fit(stop_after)


__all__ = ["Trainer", "defect_classes", "poly_lambda", "resolve_device",
           "step_generator", "stream_seed", "train"]
