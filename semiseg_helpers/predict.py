"""Putting a trained run to work: score it on labelled photos, or segment
photos of any size by sliding window (and measure the defects found).

Every dataset is mapped onto the one class schema when it is read, so a
model trained on one dataset is scored on another by class name: MIoU is
taken over the defect classes the *evaluated* data has, those in its ground
truth (:func:`~semiseg_helpers.evaluate.summarise`). Labelled photos are
scored either as a prepared dataset's split (:func:`evaluate_run`) or
straight from a folder in the generic layout, whole photos, without any
split (:func:`evaluate_folder`).

Photos to segment come as users have them (:func:`predict_photos`): turned
upright by their EXIF orientation, 16-bit and greyscale images converted
(:func:`~semiseg_helpers.data.readers.to_rgb8`), hidden files skipped, and a
photo that cannot be read reported and skipped while the others go on.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from semiseg_helpers.classes import CLASS_NAMES, NUM_CLASSES, colourise, overlay
from semiseg_helpers.config import TrainConfig, config_from_dict
from semiseg_helpers.data.dataset import ManifestDataset, eval_loader
from semiseg_helpers.data.prepare import load_manifest, select_samples
from semiseg_helpers.data.readers import (CLASS_FILE, DataError, FolderReader, Reader,
                                          image_files, load_image)
from semiseg_helpers.evaluate import (defect_classes, eval_window, evaluate, iou_per_class,
                                      run_logits_fn, sliding_window_logits, summarise)
from semiseg_helpers.methods import build_method
from semiseg_helpers.runs import RunDir, atomic_write_text
from semiseg_helpers.train import resolve_device


def load_run_model(run_dir: str | Path, device: str = "auto",
                   checkpoint: str = "best") -> tuple[torch.nn.Module, TrainConfig]:
    """The run's inference network with its best (or ``last``) weights, in eval mode.

    The best weights are ``checkpoints/best.pt`` or, where the checkpoints
    are not kept (a model of record in a fresh clone), ``model.safetensors``;
    a run folder with neither is refused before anything is built. The
    method is rebuilt from ``config.json`` and the weights loaded into it,
    so every method works, whatever its inference network is (one network,
    a mean teacher, Duo-SegNet's pair). Pretrained encoder weights are not
    loaded again (the checkpoint holds every weight), so a run can be used
    on a machine without the weights package.
    """
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    run = RunDir(run_dir)
    config = config_from_dict(run.read_config())
    path = _weights_file(run, checkpoint)
    method = build_method(replace(config, model=replace(config.model, pretrained=None)),
                          NUM_CLASSES)
    model = method.inference_model()
    if path == run.weights:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(path)))   # half -> the model's float32
    elif checkpoint == "best":
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=False))
    else:
        method.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["method"])
    return model.to(resolve_device(device)).eval(), config


def _weights_file(run: RunDir, checkpoint: str) -> Path:
    """The file :func:`load_run_model` reads, or an error saying what is missing."""
    if checkpoint == "last":
        if not run.last.is_file():
            raise FileNotFoundError(f"{run.path}: no checkpoints/{run.last.name} to resume from")
        return run.last
    for path in (run.best, run.weights):
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{run.path}: no trained weights: neither checkpoints/{run.best.name} nor "
        f"{run.weights.name} exists (a run writes its best checkpoint at its first "
        f"validation; `semiseg export --run RUN` writes {run.weights.name} from it)")


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


# --------------------------------------------------------------------------- #
# Scoring on labelled photos


def evaluate_run(run_dir: str | Path, data_dir: str | Path, split: str = "test",
                 device: str = "auto", window: int | None = None) -> dict:
    """Per-class IoU and MIoU of a run's best weights on a prepared dataset's
    split, plus ``per_image`` rows (:func:`score_dataset`)."""
    model, config = load_run_model(run_dir, device)
    manifest = load_manifest(data_dir)
    samples = select_samples(manifest, split)
    if not samples:
        raise ValueError(f"{data_dir}: split {split!r} has no labelled sample")
    result = score_dataset(model, config, ManifestDataset(manifest["root"], samples),
                           [s["name"] for s in samples], defect_classes(manifest), window)
    result.update(run=str(run_dir), data=str(data_dir), split=split, n_images=len(samples))
    return result


def evaluate_folder(run_dir: str | Path, folder: str | Path | None = None, device: str = "auto",
                    window: int | None = None, *, images: str | Path | None = None,
                    masks: str | Path | None = None,
                    class_file: str | Path | None = None) -> dict:
    """Score a run on every labelled photo of a folder, whole photos, no split.

    Either ``folder`` in the generic layout (``images/``, ``masks/``,
    ``classes.txt``; ``unlabeled/`` is not scored), or ``images`` and
    ``masks`` folders with a ``class_file`` (default: a ``classes.txt``
    inside ``masks`` or beside it). Mask values are mapped onto the schema
    by class name; MIoU is over the defect classes the class file names
    that occur in the masks. Returns what :func:`evaluate_run` does.
    """
    reader = _labelled_folder(folder, images, masks, class_file)
    photos = LabelledPhotos(reader)
    if not len(photos):
        raise DataError(f"{reader.root}: no labelled photo to score")
    model, config = load_run_model(run_dir, device)
    result = score_dataset(model, config, photos, [s.image.name for s in photos.samples],
                           [c for c in reader.classes if c != "background"], window)
    result.update(run=str(run_dir), data=str(folder or images), split=None,
                  n_images=len(photos))
    return result


def _labelled_folder(folder: str | Path | None, images: str | Path | None,
                     masks: str | Path | None, class_file: str | Path | None) -> FolderReader:
    """The reader of :func:`evaluate_folder`'s arguments, checked."""
    if (folder is None) == (images is None and masks is None):
        raise DataError("give either a folder in the generic layout or both images and masks")
    if folder is not None:
        return FolderReader(folder, class_file)
    if images is None or masks is None:
        raise DataError("images and masks go together: give both folders")
    images, masks = Path(images), Path(masks)
    if class_file is None:
        found = [p / CLASS_FILE for p in (masks, masks.parent) if (p / CLASS_FILE).is_file()]
        if not found:
            raise DataError(f"{masks}: no {CLASS_FILE} in it or beside it; pass the class file "
                            "('<value> <class>' or '<R>,<G>,<B> <class>' per line)")
        class_file = found[0]
    return FolderReader(masks.parent, class_file, image_dir=images.resolve(),
                        mask_dir=masks.resolve())


class LabelledPhotos(Dataset):
    """A reader's labelled photos as :class:`~semiseg_helpers.data.dataset.ManifestDataset`
    items, masks mapped onto the schema (photos of any size: score them
    through :func:`~semiseg_helpers.data.dataset.eval_loader`)."""

    def __init__(self, reader: Reader):
        self.reader = reader
        self.samples = [s for s in reader.samples() if s.mask is not None]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        image, mask = self.reader.load(self.samples[i])
        return {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
                "mask": torch.from_numpy(mask), "index": i, "source": i}


def score_dataset(model: torch.nn.Module, config: TrainConfig, dataset: Dataset,
                  names: Sequence[str], classes: Sequence[str],
                  window: int | None = None) -> dict:
    """Score ``model`` on every item of ``dataset`` (named ``names``), one
    image at a time at the run's precision and window.

    Returns :func:`~semiseg_helpers.evaluate.evaluate`'s dict over the whole
    set (one confusion matrix) plus ``per_image``: one row per image with
    its labelled pixel count, pixel accuracy, MIoU (over ``classes`` in its
    truth), and per class (background and ``classes``) its IoU, ground-truth
    and predicted pixel counts. A class neither in an image's truth nor in
    its prediction has no IoU there (NaN); one predicted but absent scores 0.
    """
    device = next(model.parameters()).device
    forward = run_logits_fn(model, config, device)
    window = window or eval_window(config)
    total = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    rows = []
    for batch in eval_loader(dataset):
        cm = np.asarray(evaluate(forward, [batch], classes, device, window)["confusion"])
        total += cm
        rows.append(image_scores(names[int(batch["index"][0])], cm, classes))
    result = summarise(total, classes)
    result["confusion"] = total.tolist()
    result["per_image"] = rows
    return result


def image_scores(name: str, cm: np.ndarray, classes: Sequence[str]) -> dict:
    """One image's row of :func:`score_dataset`'s ``per_image`` from its confusion matrix."""
    iou = iou_per_class(cm)
    summary = summarise(cm, classes)
    row = {"image": name, "labelled_px": int(cm.sum()),
           "pixel_accuracy": summary["pixel_accuracy"], "miou": summary["miou"]}
    for c in ("background", *classes):
        k = CLASS_NAMES.index(c)
        row[f"iou_{c}"] = float(iou[k])
        row[f"true_px_{c}"] = int(cm[k].sum())
        row[f"pred_px_{c}"] = int(cm[:, k].sum())
    return row


def write_per_image(result: dict, path: str | Path) -> Path:
    """Write a score's ``per_image`` rows as CSV, whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pd.DataFrame(result["per_image"]).to_csv(tmp, index=False, float_format="%.6g")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- #
# Segmenting photos


@dataclass(frozen=True)
class PredictionReport:
    """What :func:`predict_photos` did."""

    out: Path
    masks: list[Path]
    """The class-index masks written, in the photos' (sorted) order."""
    failed: list[tuple[Path, str]]
    """Photos that could not be read, with the reason; the others went on."""
    quantities: Path | None = None
    """The defect measurements (``quantities.csv``), if asked for."""


OUTPUT_SUFFIXES = (".png", "_mask.png", "_overlay.jpg")
"""What each photo ``<name>`` leaves in the output folder: class indices,
colours, overlay."""


def output_names(files: Sequence[Path]) -> list[str]:
    """Output name of each photo, so that no two photos' outputs collide.

    A photo keeps its stem, unless another photo has the same stem (``a.jpg``
    and ``a.png``: ``a_jpg`` and ``a_png``); a name whose outputs are still
    taken, compared case-insensitively as on macOS and Windows disks
    (``A.jpg`` beside ``a.jpg``, ``x_mask.jpg`` beside ``x.jpg``), gets
    ``-2``, ``-3``, ... Deterministic for a given list.
    """
    stems = Counter(p.stem.lower() for p in files)
    taken: set[str] = set()
    names = []
    for path in files:
        base = path.stem if stems[path.stem.lower()] == 1 else \
            f"{path.stem}_{path.suffix.lstrip('.').lower()}"
        name, k = base, 1
        while any(f"{name}{suffix}".lower() in taken for suffix in OUTPUT_SUFFIXES):
            k += 1
            name = f"{base}-{k}"
        taken.update(f"{name}{suffix}".lower() for suffix in OUTPUT_SUFFIXES)
        names.append(name)
    return names


@torch.no_grad()
def predict_photos(model: torch.nn.Module, config: TrainConfig, images: str | Path,
                   out: str | Path, window: int | None = None, overlap: float = 1 / 3,
                   progress: bool = True, quantify: bool = False,
                   mm_per_pixel: float | None = None, min_pixels: int = 1) -> PredictionReport:
    """Segment one photo or every photo in a folder into ``out``
    (:func:`~semiseg_helpers.data.readers.image_files`).

    Per photo ``<name>`` (:func:`output_names`): ``<name>.png`` (class
    indices, see ``classes.txt`` written beside them), ``<name>_mask.png``
    (colours) and ``<name>_overlay.jpg``, each written whole or not at all.
    ``predictions.json`` has one entry per photo: its output files, size and
    class pixel shares, or the error that made it skipped. With ``quantify``,
    ``quantities.csv`` measures every defect found
    (:func:`~semiseg_helpers.quantify.measure_mask`; millimetres given
    ``mm_per_pixel``).
    """
    from semiseg_helpers.quantify import check_scale, defects_table, measure_mask, write_table

    check_scale(mm_per_pixel)
    files = image_files(images)
    out = Path(out)
    if out.resolve() in {p.parent.resolve() for p in files}:
        raise DataError(f"{out}: write the predictions to another folder than the photos "
                        "(they would be read as photos next time)")
    device = next(model.parameters()).device
    forward = run_logits_fn(model, config, device)
    window = window or eval_window(config)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "classes.txt",
                      "".join(f"{i} {c}\n" for i, c in enumerate(CLASS_NAMES)))
    report: dict[str, dict] = {}
    masks, failed, defects = [], [], []
    for path, name in tqdm(list(zip(files, output_names(files))), desc="predicting",
                           disable=not progress):
        try:
            rgb = load_image(path, exif_orientation=True)
        except DataError as exc:
            failed.append((path, str(exc)))
            report[path.name] = {"error": str(exc)}
            continue
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(device).float().div_(255)
        mask = sliding_window_logits(forward, x, window, NUM_CLASSES, overlap) \
            .argmax(1)[0].to(torch.uint8).cpu().numpy()
        files_out = [f"{name}{suffix}" for suffix in OUTPUT_SUFFIXES]
        _atomic_image(Image.fromarray(mask, mode="L"), out / files_out[0])
        _atomic_image(Image.fromarray(colourise(mask)), out / files_out[1])
        _atomic_image(Image.fromarray(overlay(rgb, mask)), out / files_out[2], quality=92)
        counts = np.bincount(mask.ravel(), minlength=NUM_CLASSES)
        report[path.name] = {
            "mask": files_out[0], "colour_mask": files_out[1], "overlay": files_out[2],
            "size": list(mask.shape),
            "class_shares": {c: float(counts[i] / mask.size) for i, c in enumerate(CLASS_NAMES)}}
        masks.append(out / files_out[0])
        if quantify:
            defects += measure_mask(mask, path.name, min_pixels)
    atomic_write_text(out / "predictions.json", json.dumps(report, indent=1))
    table = None
    if quantify:
        table = write_table(defects_table(defects, mm_per_pixel), out / "quantities.csv")
    return PredictionReport(out, masks, failed, table)


def predict_folder(run_dir: str | Path, images: str | Path, out: str | Path,
                   device: str = "auto", window: int | None = None, overlap: float = 1 / 3,
                   progress: bool = True, quantify: bool = False,
                   mm_per_pixel: float | None = None, min_pixels: int = 1) -> PredictionReport:
    """:func:`predict_photos` with a run's best weights (:func:`load_run_model`)."""
    model, config = load_run_model(run_dir, device)
    return predict_photos(model, config, images, out, window, overlap, progress, quantify,
                          mm_per_pixel, min_pixels)


def _atomic_image(image: Image.Image, path: Path, **options) -> None:
    """Save under a temporary name and rename: a killed run leaves no half file."""
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format=Image.registered_extensions()[path.suffix.lower()], **options)
    os.replace(tmp, path)
