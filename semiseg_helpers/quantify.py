"""Measuring defects in a class-index mask: what an inspector reports.

Every defect is an 8-connected component of one class's pixels (a diagonal
hairline crack stays one crack). Each gets its area; a crack also its length
and its mean and maximum width, in pixels and, given the photo's scale
(``mm_per_pixel``), in millimetres (areas in mm²).

**Skeleton.** A crack's centreline is its skeleton by Guo-Hall thinning
(:func:`skimage.morphology.thin`): one pixel wide, 8-connected, without the
redundant corner pixels a staircase would add. (Zhang-Suen,
``skeletonize``'s default, erases two-pixel-thick diagonal lines entirely.)

**Length.** Along the skeleton with the corner-count estimator of Vossepoel
and Smeulders (1982): ``0.980 n_e + 1.406 n_o - 0.091 n_c`` for ``n_e``
horizontal/vertical links, ``n_o`` diagonal links and ``n_c`` corners (a
skeleton pixel where the direction of its path changes). Counting links as
1 and √2 overestimates oblique lines by up to 8 %; this estimator stays
within about 1 %. Spurs (branches no longer than the crack is wide, which
thinning grows into blunt ends and ragged edges) are pruned first. Thinning
stops short of each end, so each tip adds the distance from it to the
crack's edge along the skeleton's direction: the length runs tip to tip (a
straight line of ``n`` pixels measures ``n``; a crack drawn as the pixels
within ``w/2`` of a line of length ``L`` measures ``L + w``). A branching
crack's length is the sum of its branches.

**Width.** ``2 * d`` at each skeleton pixel, where ``d`` is the distance
from the pixel to the crack's edge. The edge lies halfway between the last
crack pixel and the first background pixel; ``d`` is measured exactly so by
a Euclidean distance transform of the component upsampled 2x (nearest
neighbour), taking the largest value of the pixel's 2x2 block. A straight
crack ``n`` pixels across therefore measures ``n`` whether ``n`` is odd or
even (at the original resolution, ``2 * edt - 1`` is exact for odd widths
only and one pixel short for even ones). Mean width is the mean over the
skeleton pixels; maximum width the largest. Pixels at the image border
count as edge (a crack leaving the photo is cut there).

Accuracy on cracks of known geometry: ``benchmarks/quantify_accuracy.py``
(numbers in the README, *Measuring defects*).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.morphology import thin

from semiseg_helpers.classes import CLASS_NAMES, class_index
from semiseg_helpers.data.readers import CLASS_FILE, DataError, image_files, load_class_mask

CORNER_COUNT_WEIGHTS = (0.980, 1.406, -0.091)
"""Vossepoel-Smeulders weights of straight links, diagonal links and corners."""

_EIGHT = np.ones((3, 3), dtype=bool)

COLUMNS: tuple[str, ...] = (
    "photo", "class", "id", "area_px", "length_px", "mean_width_px", "max_width_px",
    "area_mm2", "length_mm", "mean_width_mm", "max_width_mm",
    "top", "left", "bottom", "right",
)
"""Columns of the measurement table: one row per defect. Lengths and widths
are empty for area classes, millimetre columns empty without a scale;
``top, left, bottom, right`` bound the defect in pixels (bottom/right
exclusive)."""


@dataclass(frozen=True)
class Defect:
    """One measured defect (a connected component of one class)."""

    photo: str
    defect_class: str
    id: int
    """1, 2, ... per photo and class, in raster order of the components' first pixels."""
    area_px: int
    box: tuple[int, int, int, int]
    """``(top, left, bottom, right)``, bottom/right exclusive."""
    length_px: float | None = None
    mean_width_px: float | None = None
    max_width_px: float | None = None

    def row(self, mm_per_pixel: float | None = None) -> dict:
        """The defect as a table row (:data:`COLUMNS`)."""
        def mm(value: float | None, power: int = 1) -> float | None:
            if value is None or mm_per_pixel is None:
                return None
            return value * mm_per_pixel ** power

        top, left, bottom, right = self.box
        return {"photo": self.photo, "class": self.defect_class, "id": self.id,
                "area_px": self.area_px, "length_px": self.length_px,
                "mean_width_px": self.mean_width_px, "max_width_px": self.max_width_px,
                "area_mm2": mm(self.area_px, 2), "length_mm": mm(self.length_px),
                "mean_width_mm": mm(self.mean_width_px), "max_width_mm": mm(self.max_width_px),
                "top": top, "left": left, "bottom": bottom, "right": right}


# --------------------------------------------------------------------------- #
# One crack


def skeleton(component: np.ndarray) -> np.ndarray:
    """The one-pixel-wide, 8-connected centreline of a binary component."""
    return thin(np.asarray(component, dtype=bool))


def _neighbour_views(padded: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """Each of the 8 neighbours of every pixel of ``padded[1:-1, 1:-1]``."""
    h, w = padded.shape[0] - 2, padded.shape[1] - 2
    return {(dy, dx): padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
            for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)}


def chain_counts(skel: np.ndarray) -> tuple[int, int, int]:
    """``(straight links, diagonal links, corners)`` of a skeleton.

    Links join 8-neighbouring skeleton pixels (each pair once). A corner is
    a skeleton pixel with exactly two neighbours that are not opposite each
    other, where a chain code would change direction.
    """
    skel = np.asarray(skel, dtype=bool)
    padded = np.pad(skel, 1)
    views = _neighbour_views(padded)
    straight = int((skel & views[(0, 1)]).sum() + (skel & views[(1, 0)]).sum())
    diagonal = int((skel & views[(1, 1)]).sum() + (skel & views[(1, -1)]).sum())
    degree = sum(v.astype(np.int8) for v in views.values())
    sum_dy = sum(dy * v.astype(np.int8) for (dy, _), v in views.items())
    sum_dx = sum(dx * v.astype(np.int8) for (_, dx), v in views.items())
    corners = int((skel & (degree == 2) & ((sum_dy != 0) | (sum_dx != 0))).sum())
    return straight, diagonal, corners


def skeleton_length(skel: np.ndarray) -> float:
    """Length of a skeleton's centreline in pixels (corner-count estimator)."""
    straight, diagonal, corners = chain_counts(skel)
    a, b, c = CORNER_COUNT_WEIGHTS
    return max(0.0, a * straight + b * diagonal + c * corners)


def edge_distance(component: np.ndarray) -> np.ndarray:
    """Distance in pixels from each pixel of a binary component to its edge
    (halfway to the nearest background pixel), 0 outside: the Euclidean
    distance transform of the 2x upsampled component, halved, at each
    pixel's largest 2x2 sub-pixel. The array border counts as background."""
    component = np.asarray(component, dtype=bool)
    h, w = component.shape
    fine = np.pad(component.repeat(2, axis=0).repeat(2, axis=1), 1)
    distance = ndimage.distance_transform_edt(fine)[1:-1, 1:-1] / 2
    return distance.reshape(h, 2, w, 2).max(axis=(1, 3))


def _degree(skel: np.ndarray) -> np.ndarray:
    """Number of 8-neighbours each pixel has on the skeleton."""
    return sum(v.astype(np.int8) for v in _neighbour_views(np.pad(skel, 1)).values())


_STEPS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def _branch(skel: np.ndarray, degree: np.ndarray, tip: tuple[int, int],
            max_length: float) -> tuple[list[tuple[int, int]], float]:
    """The skeleton pixels from ``tip`` along its branch, up to a junction
    (included), another tip, or ``max_length`` px; and the path's length."""
    h, w = skel.shape
    path, length, previous, here = [tip], 0.0, None, tip
    while (here == tip or degree[here] < 3) and length < max_length:
        step = next(((here[0] + dy, here[1] + dx) for dy, dx in _STEPS
                     if 0 <= here[0] + dy < h and 0 <= here[1] + dx < w
                     and skel[here[0] + dy, here[1] + dx]
                     and (here[0] + dy, here[1] + dx) != previous), None)
        if step is None:
            break
        length += math.hypot(step[0] - here[0], step[1] - here[1])
        previous, here = here, step
        path.append(here)
    return path, length


def prune_spurs(skel: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """The skeleton without its spurs: branches from a tip to a junction
    no longer than the crack is wide at that junction (twice its edge
    ``distance``), which is all a branch inside the crack's own width can
    be. Thinning grows such spurs into the corners of blunt ends and
    towards bumps of a ragged edge; kept, they would add to the length.
    One pass: a branch is judged against the skeleton as thinning left it.
    """
    skel = np.asarray(skel, dtype=bool)
    degree = _degree(skel)
    longest = 2.0 * float(distance.max()) + 1.5
    pruned = skel.copy()
    for tip in zip(*np.nonzero(skel & (degree == 1))):
        path, length = _branch(skel, degree, tip, longest)
        junction = path[-1]
        if degree[junction] >= 3 and length <= 2.0 * distance[junction]:
            for y, x in path[:-1]:
                pruned[y, x] = False
    return pruned


_REACH_STEP = 0.05  # px between samples when following a tip's direction out of the crack


def tip_reach(component: np.ndarray, skel: np.ndarray, distance: np.ndarray) -> float:
    """How far the crack reaches beyond its skeleton's tips, summed over the tips.

    From each tip the skeleton's direction over its last few pixels (up to
    5 px) is followed out of the crack, to its edge (halfway between the
    last crack pixel and the first background pixel). Thinning stops about
    half a width short of a blunt or round end, further on oblique ones; at
    a hairline tip the reach is half a pixel. A skeleton of one pixel (a
    dot) reaches its edge distance both ways.
    """
    degree = _degree(skel)
    h, w = component.shape
    limit = 2.0 * float(distance.max()) + 2.0
    steps = np.arange(1, int(limit / _REACH_STEP) + 1) * _REACH_STEP
    reach = 2.0 * float(distance[skel & (degree == 0)].sum())
    for tip in zip(*np.nonzero(skel & (degree == 1))):
        path, _ = _branch(skel, degree, tip, 5.0)
        direction = np.subtract(tip, path[-1], dtype=float)
        direction /= np.hypot(*direction)
        y = np.floor(tip[0] + steps * direction[0] + 0.5).astype(int)
        x = np.floor(tip[1] + steps * direction[1] + 0.5).astype(int)
        inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        inside[inside] = component[y[inside], x[inside]]
        first_out = int(np.argmin(inside)) if not inside.all() else len(steps) - 1
        reach += float(steps[first_out]) - _REACH_STEP / 2
    return reach


def measure_crack(component: np.ndarray) -> tuple[float, float, float]:
    """``(length, mean width, max width)`` of one crack, in pixels.

    The length runs tip to tip: the skeleton's, spurs pruned
    (:func:`prune_spurs`), plus how far the crack reaches beyond the
    skeleton's tips (:func:`tip_reach`). ``component`` is a binary mask
    holding one crack (a crop will do: the rest of the crack's image does
    not matter).
    """
    component = np.asarray(component, dtype=bool)
    if not component.any():
        raise ValueError("measure_crack: the component is empty")
    distance = edge_distance(component)
    skel = prune_spurs(skeleton(component), distance)
    if not skel.any():  # thinning never empties a component; keep the guard cheap
        skel = distance == distance.max()
    widths = 2.0 * distance[skel]
    length = skeleton_length(skel) + tip_reach(component, skel, distance)
    return length, float(widths.mean()), float(widths.max())


# --------------------------------------------------------------------------- #
# A whole mask


def measure_mask(mask: np.ndarray, photo: str = "", min_pixels: int = 1) -> list[Defect]:
    """Every defect in a class-index mask ``(H, W)``: cracks with length and
    widths, spalling and rebar regions with their area.

    Components smaller than ``min_pixels`` are left out (speckle in a
    prediction). Pixels of other values (background, ignore) are never
    defects.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{photo or 'mask'}: expected a (H, W) class-index mask, "
                         f"got shape {mask.shape}")
    if int(min_pixels) < 1:
        raise ValueError(f"min_pixels must be at least 1, got {min_pixels}")
    defects: list[Defect] = []
    for name in CLASS_NAMES[1:]:
        labels, _ = ndimage.label(mask == class_index(name), structure=_EIGHT)
        number = 0
        for label, box in enumerate(ndimage.find_objects(labels), start=1):
            component = labels[box] == label
            area = int(component.sum())
            if area < min_pixels:
                continue
            number += 1
            extent = (box[0].start, box[1].start, box[0].stop, box[1].stop)
            if name == "crack":
                length, mean_width, max_width = measure_crack(component)
                defects.append(Defect(photo, name, number, area, extent,
                                      length, mean_width, max_width))
            else:
                defects.append(Defect(photo, name, number, area, extent))
    return defects


def defects_table(defects: Iterable[Defect], mm_per_pixel: float | None = None) -> pd.DataFrame:
    """Defects as a :data:`COLUMNS` table, millimetres filled in given a scale."""
    check_scale(mm_per_pixel)
    rows = [d.row(mm_per_pixel) for d in defects]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def check_scale(mm_per_pixel: float | None) -> None:
    """A scale must be a positive finite number of millimetres per pixel."""
    if mm_per_pixel is not None and not (math.isfinite(mm_per_pixel) and mm_per_pixel > 0):
        raise ValueError(f"mm_per_pixel must be a positive number, got {mm_per_pixel}")


# --------------------------------------------------------------------------- #
# Folders of masks


def mask_files(folder: str | Path) -> list[tuple[str, Path]]:
    """``(photo name, class-index mask)`` pairs of a folder of masks.

    A ``semiseg predict`` output folder is read through its
    ``predictions.json`` (photos named as they were given, failed photos
    left out); any other folder (or a single file) is a set of masks named
    by their own file names.
    """
    folder = Path(folder)
    listing = folder / "predictions.json"
    if folder.is_dir() and listing.is_file():
        entries = json.loads(listing.read_text())
        if any("mask" not in entry and "error" not in entry for entry in entries.values()):
            raise DataError(f"{listing}: written by an older `semiseg predict`, without the "
                            "mask file of each photo; run the prediction again")
        return [(photo, folder / entry["mask"]) for photo, entry in entries.items()
                if "mask" in entry]
    return [(path.name, path) for path in image_files(folder)]


def quantify_folder(folder: str | Path, mm_per_pixel: float | None = None,
                    min_pixels: int = 1, class_file: str | Path | None = None) -> pd.DataFrame:
    """Measure every defect of every mask in ``folder`` (:func:`mask_files`).

    Mask values are mapped onto the classes by name through ``class_file``,
    by default a ``classes.txt`` in the folder (of a single mask: its
    folder) or beside it (the generic layout's ``masks/`` has it one level
    up; ``semiseg predict`` writes one); without any, they must be schema
    class indices.
    """
    check_scale(mm_per_pixel)
    folder = Path(folder)
    pairs = mask_files(folder)
    if class_file is None:
        base = folder if folder.is_dir() else folder.parent
        class_file = next((p / CLASS_FILE for p in (base, base.parent)
                           if (p / CLASS_FILE).is_file()), None)
    defects: list[Defect] = []
    for photo, path in pairs:
        mask = load_class_mask(path, Path(class_file) if class_file else None)
        defects += measure_mask(mask, photo, min_pixels)
    return defects_table(defects, mm_per_pixel)


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a measurement table as CSV, whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_csv(tmp, index=False, float_format="%.5g")
    os.replace(tmp, path)
    return path


def summarise_table(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per class: number of defects, total area, and for cracks total length
    and the largest width (pixels), for a one-line report."""
    summary: dict[str, dict[str, float]] = {}
    for name, rows in table.groupby("class", sort=False):
        entry = {"count": int(len(rows)), "area_px": float(rows["area_px"].sum())}
        if name == "crack":
            entry["length_px"] = float(rows["length_px"].sum())
            entry["max_width_px"] = float(rows["max_width_px"].max())
        summary[str(name)] = entry
    return summary

