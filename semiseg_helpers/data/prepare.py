"""Turn a source dataset into a prepared one: tiles, splits, label fractions.

``prepare_dataset`` is what ``semiseg prepare`` runs. A prepared dataset is a
folder::

    images/<name>.png       RGB tiles (lossless)
    masks/<name>.png        class indices into CLASS_NAMES, 255 = ignore
    manifest.json           how it was made, and one entry per sample

It is built in a temporary sibling folder and renamed into place at the end,
so a prepared dataset appears whole or not at all.

The steps follow the paper, each configurable:

1. **Tiling.** Images larger than ``crop_size`` are cut into ``crop_size``
   tiles on a grid that covers the image; the last row/column is aligned to
   the border (overlapping its neighbour) instead of being padded, so every
   tile is real pixels. Images no larger than the crop are kept whole.
2. **Defect-only.** With ``keep_defect_only`` (the paper's choice) tiles cut
   from larger images are kept only if they contain a defect pixel; whole
   images are always kept (their annotator chose them).
3. **Split.** Source images, not tiles, are shuffled with the seed and split
   train/val/test in the given ratios (7:1:2), so tiles of one photo never
   leak across splits. Ratios ``0 0 1`` make an evaluation-only set: every
   image in test, no label fractions (to score a trained model on them).
4. **Label fractions.** One seeded ordering of the labelled training samples
   decides every labelled subset: fraction ``f`` takes the first
   ``round(f * n_train)``, so subsets are nested (2 % ⊂ 5 % ⊂ ...). The
   ordering starts with one sample per defect class (rarest class first), so
   every class in the training split is in every subset that has room.
   Training samples outside a subset are its unlabelled pool.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from semiseg_helpers.classes import CLASS_NAMES, IGNORE_INDEX
from semiseg_helpers.data.readers import DataError, Reader, SourceSample, open_source

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
DEFAULT_FRACTIONS = (0.02, 0.05, 0.1, 0.2)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Tile:
    """Where a prepared sample comes from: a box ``(top, left, height, width)``."""

    source: SourceSample
    box: tuple[int, int, int, int]


# --------------------------------------------------------------------------- #
# Pure steps (tested on their own)


def tile_boxes(height: int, width: int, crop_size: int) -> list[tuple[int, int, int, int]]:
    """Boxes ``(top, left, h, w)`` of ``crop_size`` tiles covering an image.

    Along a side no longer than ``crop_size`` there is one tile of the side's
    length. Along a longer side, ``ceil(side / crop)`` tiles start at evenly
    spread offsets from 0 to ``side - crop``, so they overlap a little and
    none is padded.
    """
    def starts(side: int) -> list[int]:
        if side <= crop_size:
            return [0]
        n = -(-side // crop_size)
        return [round(i * (side - crop_size) / (n - 1)) for i in range(n)]

    th, tw = min(height, crop_size), min(width, crop_size)
    return [(y, x, th, tw) for y in starts(height) for x in starts(width)]


def split_groups(groups: Sequence[str], ratios: Sequence[float], seed: int) -> dict[str, str]:
    """Assign each distinct group (source image) to train/val/test.

    ``ratios`` is (train, val, test), normalised. Val and test get
    ``round(ratio * n)`` groups each, train the rest. A train ratio of 0
    makes an evaluation-only set, ``(0, 0, 1)``: every group goes to test
    (scoring a trained model on all of a user's labelled photos).
    """
    ratios = np.asarray(ratios, dtype=float)
    if ratios.shape != (3,) or not np.isfinite(ratios).all() or (ratios < 0).any() \
            or ratios.sum() <= 0:
        raise DataError(f"split_ratios must be three non-negative numbers (train, val, test), "
                        f"not all 0, got {_listing(ratios)}")
    if ratios[0] == 0:
        if ratios[1] > 0:
            raise DataError(f"split_ratios {_listing(ratios)}: a train ratio of 0 makes an "
                            "evaluation-only set, where every image goes to test; use 0 0 1")
        return {g: "test" for g in groups}
    ratios = ratios / ratios.sum()
    unique = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(unique))
    n_val = int(round(ratios[1] * len(unique)))
    n_test = int(round(ratios[2] * len(unique)))
    if n_val + n_test >= len(unique):
        raise DataError(f"split_ratios {_listing(ratios.round(3))} leave no training image "
                        f"out of {len(unique)} source images")
    split_of = {}
    for rank, i in enumerate(order):
        split_of[unique[i]] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    return split_of


def _listing(values: Iterable[float]) -> str:
    """Numbers as a user typed them, ``[0.7, 0.1, 0.2]`` (not ``np.float64(0.7)``)."""
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def labelled_order(present: Sequence[frozenset[str]], seed: int) -> list[int]:
    """Seeded order of training samples for drawing nested labelled subsets.

    ``present[i]`` is the set of defect classes in sample ``i``. The order is
    a random permutation, except that it starts with, for each defect class
    from the rarest to the most common, the first sample in the permutation
    that contains a not-yet-covered class.
    """
    perm = [int(i) for i in np.random.default_rng(seed).permutation(len(present))]
    frequency = Counter(c for classes in present for c in classes)
    front: list[int] = []
    covered: set[str] = set()
    for cls in sorted(frequency, key=lambda c: (frequency[c], c)):
        if cls in covered:
            continue
        first = next(i for i in perm if cls in present[i])
        front.append(first)
        covered |= present[first]
    chosen = set(front)
    return front + [i for i in perm if i not in chosen]


def subset_sizes(fractions: Iterable[float], n_train: int) -> dict[float, int]:
    """Number of labelled samples for each fraction; none may be empty."""
    sizes = {}
    for f in sorted(set(float(f) for f in fractions)):
        if not 0 < f <= 1:
            raise DataError(f"label fraction {f} is outside (0, 1]")
        n = int(round(f * n_train))
        if n == 0:
            raise DataError(f"label fraction {f} leaves no labelled image: the training "
                            f"split has only {n_train} labelled samples (need >= {0.5 / f:.0f})")
        sizes[f] = n
    return sizes


# --------------------------------------------------------------------------- #
# Tiling one source image (runs in worker processes)


def _cut_and_save(reader: Reader, sample: SourceSample, name: str, crop_size: int,
                  keep_defect_only: bool, out: Path) -> list[dict]:
    image, mask = reader.load(sample)
    h, w = image.shape[:2]
    boxes = tile_boxes(h, w, crop_size)
    records = []
    for k, (y, x, th, tw) in enumerate(boxes):
        tile_name = name if len(boxes) == 1 else f"{name}_y{y}_x{x}"
        tile_mask = None if mask is None else mask[y:y + th, x:x + tw]
        if tile_mask is not None and keep_defect_only and len(boxes) > 1:
            defect = (tile_mask > 0) & (tile_mask != IGNORE_INDEX)
            if not defect.any():
                continue
        Image.fromarray(image[y:y + th, x:x + tw]).save(
            out / "images" / f"{tile_name}.png", compress_level=1)
        record = {"name": tile_name, "image": f"images/{tile_name}.png", "mask": None,
                  "source_image": str(sample.image), "source_split": sample.source_split,
                  "tile": [y, x, th, tw], "pixels": {}}
        if tile_mask is not None:
            Image.fromarray(tile_mask, mode="L").save(out / "masks" / f"{tile_name}.png")
            counts = np.bincount(tile_mask.ravel(), minlength=256)
            record["mask"] = f"masks/{tile_name}.png"
            record["pixels"] = {c: int(counts[i]) for i, c in enumerate(CLASS_NAMES)}
            record["pixels"]["ignore"] = int(counts[IGNORE_INDEX])
        records.append(record)
    return records


def _worker(args):
    return _cut_and_save(*args)


# --------------------------------------------------------------------------- #
# The whole preparation


def prepare_dataset(
    dataset: str,
    out: str | Path,
    source: str | Path | None = None,
    *,
    crop_size: int = 512,
    keep_defect_only: bool = True,
    split_ratios: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    label_fractions: Iterable[float] = DEFAULT_FRACTIONS,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
    reader_options: dict | None = None,
    synthetic_options: dict | None = None,
) -> Path:
    """Prepare ``dataset`` read from ``source`` into the folder ``out``.

    ``dataset`` is a reader name (``peerhub``, ``mdmcs``, ``deepcrack``,
    ``folder``) or ``synthetic`` (generated, no ``source``; see
    :func:`semiseg_helpers.data.synthetic.generate_dataset` for
    ``synthetic_options``). ``reader_options`` go to the reader (class
    tables, thresholds). Returns the path of the prepared folder.
    """
    out = Path(out)
    if int(crop_size) < 16:
        raise DataError(f"crop_size must be at least 16, got {crop_size}")
    evaluation_only = len(split_ratios) == 3 and float(split_ratios[0]) == 0
    # an evaluation-only set has no training split to draw labelled subsets from
    fractions = [] if evaluation_only else sorted(set(float(f) for f in label_fractions))
    parameters = {"crop_size": int(crop_size), "keep_defect_only": bool(keep_defect_only),
                  "split_ratios": [float(r) for r in split_ratios], "seed": int(seed),
                  "label_fractions": fractions}
    if dataset == "synthetic":
        if source is not None:
            raise DataError("dataset 'synthetic' is generated; do not pass a source")
        generator = {"seed": seed, **(synthetic_options or {})}
        describe = {"reader": "synthetic", "generator": generator}
    else:
        if source is None:
            raise DataError(f"dataset {dataset!r} needs a source folder (--source)")
        reader = open_source(dataset, source, **(reader_options or {}))
        describe = reader.describe()
    if out.exists() and any(out.iterdir()):
        if _same_recipe(out, dataset, describe, parameters):
            return out  # already prepared exactly so: nothing to redo or replace
        if not overwrite:
            raise DataError(f"{out}: output folder exists and is not empty (pass "
                            "overwrite=True / --overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.tmp-", dir=out.parent) as tmp:
        tmp = Path(tmp)
        if dataset == "synthetic":
            from semiseg_helpers.data.synthetic import generate_dataset

            source = generate_dataset(tmp / "generated", progress=progress, **generator)
            reader = open_source("folder", source)
        samples = reader.samples()
        if not any(s.mask is not None for s in samples):
            raise DataError(f"{reader.root}: no labelled image found")

        staged = tmp / "prepared"
        (staged / "images").mkdir(parents=True)
        (staged / "masks").mkdir()
        names = _unique_names(samples)
        jobs = [(reader, s, n, int(crop_size), bool(keep_defect_only), staged)
                for s, n in zip(samples, names)]
        records = _run_jobs(jobs, workers, progress, f"preparing {dataset}")

        split_of = split_groups([r["source_image"] for r in records], split_ratios, seed)
        for r in records:
            r["split"] = split_of[r["source_image"]]
            r["fractions"] = []
        train = [r for r in records if r["split"] == "train" and r["mask"] is not None]
        sizes = subset_sizes(fractions, len(train))
        present = [frozenset(c for c in CLASS_NAMES[1:] if r["pixels"].get(c, 0) > 0)
                   for r in train]
        order = labelled_order(present, seed)
        for rank, i in enumerate(order):
            train[i]["fractions"] = [f for f in fractions if rank < sizes[f]]

        manifest = {
            "format_version": FORMAT_VERSION,
            "dataset": dataset,
            "source": describe,
            "parameters": parameters,
            "classes": list(CLASS_NAMES),
            "ignore_index": IGNORE_INDEX,
            "source_classes": list(reader.classes),
            "counts": {s: sum(r["split"] == s for r in records) for s in SPLITS},
            "labelled_counts": {str(f): n for f, n in sizes.items()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.time() - started, 2),
            "samples": [_ordered(r) for r in records],
        }
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if out.exists():
            shutil.rmtree(out) if any(out.iterdir()) else out.rmdir()
        os.replace(staged, out)
    return out


def _same_recipe(out: Path, dataset: str, describe: dict, parameters: dict) -> bool:
    """Whether ``out`` already holds this dataset prepared with these settings."""
    try:
        existing = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return (existing.get("format_version") == FORMAT_VERSION
            and existing.get("dataset") == dataset
            and existing.get("source") == json.loads(json.dumps(describe))
            and existing.get("parameters") == parameters)


def _unique_names(samples: Sequence[SourceSample]) -> list[str]:
    """Sample names, prefixed with their source split where stems repeat."""
    stems = Counter(s.name for s in samples)
    return [f"{s.source_split}-{s.name}" if stems[s.name] > 1 and s.source_split else s.name
            for s in samples]


def _run_jobs(jobs: list, workers: int | None, progress: bool, label: str) -> list[dict]:
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    bar = tqdm(total=len(jobs), desc=label, unit="img", disable=not progress)
    records: list[dict] = []
    if workers <= 1 or len(jobs) < 32:
        for job in jobs:
            records += _cut_and_save(*job)
            bar.update()
    else:
        with ProcessPoolExecutor(workers) as pool:
            for result in pool.map(_worker, jobs, chunksize=16):
                records += result
                bar.update()
    bar.close()
    seen = Counter(r["name"] for r in records)
    if dup := [n for n, c in seen.items() if c > 1]:
        raise DataError(f"duplicate sample names in the source: {dup[:5]}")
    return records


_KEY_ORDER = ("name", "image", "mask", "split", "fractions", "pixels",
              "source_image", "source_split", "tile")


def _ordered(record: dict) -> dict:
    return {k: record[k] for k in _KEY_ORDER}


# --------------------------------------------------------------------------- #
# Reading a prepared dataset back


def dataset_fingerprint(manifest: dict) -> str:
    """What a prepared dataset holds, as a short hash that does not depend on
    where it lies or when it was made: its recipe (reader, class table,
    parameters, classes) and every sample's record (name, split, label
    subsets, tile and per-class pixel counts). Two preparations of the same
    source with the same parameters have the same fingerprint on any machine
    or checkout path, so a finished run can be recognised as trained on this
    data (the image bytes themselves are not hashed)."""
    where = {"root", "source_image", "source_split"}      # paths, not content
    content = {
        "dataset": manifest.get("dataset"),
        "reader": manifest.get("source", {}).get("reader"),
        "class_table": manifest.get("source", {}).get("class_table"),
        "parameters": manifest.get("parameters"),
        "classes": manifest.get("classes"),
        "samples": [{k: v for k, v in sample.items() if k not in where}
                    for sample in manifest.get("samples", [])],
    }
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_manifest(path: str | Path) -> dict:
    """The manifest of a prepared dataset folder (or of a manifest file)."""
    path = Path(path)
    file = path / MANIFEST if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"{path}: not a prepared dataset (no {MANIFEST}); run `semiseg prepare`")
    manifest = json.loads(file.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{file}: manifest format {manifest.get('format_version')} is not "
                        f"{FORMAT_VERSION}; prepare the dataset again")
    manifest["root"] = str(file.parent.resolve())
    return manifest


def select_samples(manifest: dict, split: str, label_fraction: float | None = None,
                   labelled: bool = True) -> list[dict]:
    """Samples of a split; for ``train`` with a fraction, its labelled subset
    (``labelled=True``) or unlabelled pool (``labelled=False``: the rest of
    the training split, including images that never had a mask).

    ``label_fraction`` 1.0 (or ``None``) means every labelled sample.
    """
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    rows = [s for s in manifest["samples"] if s["split"] == split]
    full = label_fraction is None or float(label_fraction) >= 1.0
    if split != "train" or full:
        return [s for s in rows if (s["mask"] is not None) == labelled] if split == "train" \
            else [s for s in rows if s["mask"] is not None]
    f = float(label_fraction)
    known = manifest["parameters"]["label_fractions"]
    if not known:
        raise DataError(f"{manifest['root']}: an evaluation-only dataset (prepared with "
                        "split ratios 0 0 1) has no training split to train on")
    if not any(abs(f - k) < 1e-9 for k in known):
        raise DataError(f"label fraction {f} was not prepared; this dataset has {known} "
                        "(prepare again with --fractions)")
    def in_subset(sample: dict) -> bool:
        return any(abs(f - k) < 1e-9 for k in sample["fractions"])

    return [s for s in rows if in_subset(s) == labelled]
