"""The class schema every dataset is mapped onto.

Masks everywhere in the package hold class indices into :data:`CLASS_NAMES`
(``uint8``), with :data:`IGNORE_INDEX` for pixels that carry no label: a
source class outside the schema (e.g. MDMCS "corrosion"), or pixels that
padding or augmentation invented.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("background", "crack", "spalling", "rebar")
"""Class index -> name. ``rebar`` is exposed reinforcement."""

DEFECT_CLASSES: tuple[str, ...] = CLASS_NAMES[1:]
"""The classes IoU/MIoU are reported for (the paper's crack/spalling/rebar)."""

NUM_CLASSES: int = len(CLASS_NAMES)

IGNORE_INDEX: int = 255
"""Mask value of unlabelled pixels; losses and metrics skip it."""

CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "background": (0, 0, 0),
    "crack": (230, 25, 75),
    "spalling": (60, 140, 230),
    "rebar": (255, 200, 0),
}
"""Overlay colours (RGB) for figures and ``semiseg predict``."""

IGNORE_COLOUR: tuple[int, int, int] = (255, 255, 255)


def class_index(name: str) -> int:
    """Index of a class name in the schema, with a helpful error."""
    try:
        return CLASS_NAMES.index(name)
    except ValueError:
        raise ValueError(
            f"unknown class {name!r}; the schema is {list(CLASS_NAMES)} "
            "(map other source classes to one of these or to 'ignore')"
        ) from None


def palette(names: Sequence[str] = CLASS_NAMES) -> np.ndarray:
    """``(256, 3) uint8`` lookup table: class index -> overlay colour.

    Index :data:`IGNORE_INDEX` maps to :data:`IGNORE_COLOUR`; unused entries
    are black.
    """
    lut = np.zeros((256, 3), dtype=np.uint8)
    for i, name in enumerate(names):
        lut[i] = CLASS_COLOURS.get(name, (128, 128, 128))
    lut[IGNORE_INDEX] = IGNORE_COLOUR
    return lut


def colourise(mask: np.ndarray, names: Sequence[str] = CLASS_NAMES) -> np.ndarray:
    """Class-index mask ``(H, W)`` -> RGB image ``(H, W, 3) uint8``."""
    return palette(names)[np.asarray(mask, dtype=np.uint8)]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5,
            names: Sequence[str] = CLASS_NAMES) -> np.ndarray:
    """Blend class colours onto an RGB image where the mask is a defect.

    Background and ignored pixels keep the photo as it is, so the overlay
    reads like an inspector's mark-up.
    """
    image = np.asarray(image, dtype=np.float32)
    colours = colourise(mask, names).astype(np.float32)
    marked = (np.asarray(mask) > 0) & (np.asarray(mask) != IGNORE_INDEX)
    out = image.copy()
    out[marked] = (1 - alpha) * image[marked] + alpha * colours[marked]
    return out.round().clip(0, 255).astype(np.uint8)
