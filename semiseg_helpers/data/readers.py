"""Readers for concrete-defect datasets in the layouts users download.

Every reader turns a source folder into a list of :class:`SourceSample` and
loads them as ``(H, W, 3) uint8`` RGB images and ``(H, W) uint8`` masks of
class indices into :data:`semiseg_helpers.classes.CLASS_NAMES` (with
:data:`~semiseg_helpers.classes.IGNORE_INDEX` for unlabelled pixels). What
differs between sources is only how a mask file encodes its classes:

============  ==============================================  ==================
reader        layout                                          mask encoding
============  ==============================================  ==================
``peerhub``   PASCAL VOC: ``JPEGImages/``,                    palette (mode P)
              ``SegmentationClassPNG/``                       indices
``mdmcs``     ``images/``, ``masks/``                         RGB colour codes
``deepcrack`` ``{train,test}_img/``, ``{train,test}_lab/``    grey, thresholded
``folder``    ``images/``, ``masks/``, ``unlabeled/``,        values or colours
              ``classes.txt``                                 from classes.txt
============  ==============================================  ==================

Each source's class table maps its mask values onto the schema by class name;
the special name ``"ignore"`` maps a source class to the ignore index (MDMCS
corrosion, by default). A mask value that is not in the table is an error that
names the file and the offending values: silently treating it as background
would corrupt the labels.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from semiseg_helpers.classes import CLASS_NAMES, IGNORE_INDEX, class_index

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IGNORE = "ignore"
CLASS_FILE = "classes.txt"


class DataError(ValueError):
    """A source dataset or argument that cannot be used as given."""


@dataclass(frozen=True)
class SourceSample:
    """One image of a source dataset, with its mask file if it is labelled."""

    name: str
    image: Path
    mask: Path | None = None
    source_split: str | None = None
    """The split the source itself assigns (e.g. DeepCrack train/test), if any."""


# --------------------------------------------------------------------------- #
# Loading images and masks


def load_image(path: Path, exif_orientation: bool = False) -> np.ndarray:
    """Read an image file as ``(H, W, 3) uint8`` RGB (:func:`to_rgb8`).

    ``exif_orientation`` turns the pixels upright as the camera's EXIF
    orientation tag says (what photo viewers show): right for photos to
    segment, off for labelled data, whose masks match the stored pixels.

    Raises :class:`DataError` naming the file when it is missing, unreadable or
    truncated (``Image.load`` forces a full decode, so a corrupt JPEG fails
    here rather than as a grey tile in training).
    """
    try:
        with Image.open(path) as im:
            im.load()
            if exif_orientation:
                im = ImageOps.exif_transpose(im)
            return to_rgb8(im, path)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None


_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb8(im: Image.Image, path: Path | str = "image") -> np.ndarray:
    """A PIL image as a writable ``(H, W, 3) uint8`` RGB array.

    Grey, palette, CMYK and RGBA images are converted by PIL (alpha is
    dropped, the stored colours kept). 16-bit grey (PNG, TIFF: modes ``I;16*``
    and ``I``) is scaled from 0..65535 to 0..255 (``round(v / 257)``), where
    PIL's own conversion would clamp every value above 255 to white; PIL
    already reads 16-bit RGB files as 8-bit RGB (their high bytes). 32-bit
    float images are taken as 0..1.
    """
    if im.mode in _HIGH_BIT_DEPTH_MODES:
        values = np.asarray(im).astype(np.float64)
        if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
            raise DataError(f"{path}: {im.mode} image values outside 0..65535 "
                            f"({values.min():g}..{values.max():g}); save it as 8 or 16 bit")
        grey = np.rint(values / 257).astype(np.uint8)
    elif im.mode == "F":
        values = np.asarray(im, dtype=np.float64)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise DataError(f"{path}: a 32-bit float image must hold values in 0..1; "
                            "save it as 8 or 16 bit")
        grey = np.rint(values * 255).astype(np.uint8)
    else:
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")  # PIL warns when converting such a palette straight to RGB
        return np.array(im.convert("RGB"))  # writable: torch.from_numpy needs that
    return np.repeat(grey[..., None], 3, axis=2)


def image_files(path: str | Path) -> list[Path]:
    """The photos to process at ``path``: the file itself, or the image
    files directly inside the folder (by suffix, sorted; hidden files such
    as macOS ``._x.jpg`` resource forks and ``.DS_Store`` skipped)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    files = [p for p in _images_in(path) if p.is_file()]
    if not files:
        raise DataError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _load_mask_raw(path: Path) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()
        return im
    except FileNotFoundError:
        raise DataError(f"{path}: mask file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read mask ({exc})") from None


def _resolve_class_table(table: Mapping[object, str], what: str) -> dict[object, int]:
    """Map a source's ``{value: class name}`` table to schema indices."""
    resolved: dict[object, int] = {}
    for value, name in table.items():
        if name == IGNORE:
            resolved[value] = IGNORE_INDEX
        else:
            try:
                resolved[value] = class_index(name)
            except ValueError as exc:
                raise DataError(f"{what}: {exc}") from None
    return resolved


def _map_values(values: np.ndarray, lut: dict[int, int], path: Path) -> np.ndarray:
    """Map integer mask values through ``lut``; unknown values are an error."""
    table = np.full(256, -1, dtype=np.int16)
    for value, index in lut.items():
        table[value] = index
    mapped = table[values]
    if (mapped < 0).any():
        bad, counts = np.unique(values[mapped < 0], return_counts=True)
        listing = ", ".join(f"{v} ({c} px)" for v, c in zip(bad[:10], counts[:10]))
        raise DataError(
            f"{path}: mask values not in the class table {sorted(lut)}: {listing}")
    return mapped.astype(np.uint8)


# --------------------------------------------------------------------------- #
# Readers


class Reader(ABC):
    """A source dataset: its samples, and how to load them onto the schema."""

    name: str = "reader"

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: source folder not found")

    @abstractmethod
    def samples(self) -> list[SourceSample]:
        """Every image of the source, labelled ones with their mask file."""

    @abstractmethod
    def load_mask(self, sample: SourceSample) -> np.ndarray:
        """The sample's mask as schema class indices, ``(H, W) uint8``."""

    _lut: dict[object, int]  # source mask value -> schema index

    @property
    def classes(self) -> tuple[str, ...]:
        """Schema classes this source's masks can contain."""
        return tuple(CLASS_NAMES[i] for i in sorted(set(self._lut.values())) if i != IGNORE_INDEX)

    def load(self, sample: SourceSample) -> tuple[np.ndarray, np.ndarray | None]:
        """Image and mask (``None`` for unlabelled samples), sizes checked."""
        image = load_image(sample.image)
        if sample.mask is None:
            return image, None
        mask = self.load_mask(sample)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{sample.image.name} is {image.shape[1]}x{image.shape[0]}")
        return image, mask

    def describe(self) -> dict:
        """What the reader was configured with, for the manifest."""
        return {"reader": self.name, "root": str(self.root.resolve())}

    def _subdir(self, name: str | Path) -> Path:
        path = self.root / name
        if not path.is_dir():
            raise DataError(f"{path}: expected folder is missing (is this a {self.name} layout?)")
        return path


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def pair_images_and_masks(image_dir: Path, mask_dir: Path,
                          source_split: str | None = None) -> list[SourceSample]:
    """Pair ``image_dir/<stem>.*`` with ``mask_dir/<stem>.*``.

    Every image must have a mask: a missing one is reported with the image's
    path, since in a labelled folder it is almost always a copy mistake.
    """
    masks = {p.stem: p for p in _images_in(mask_dir)}
    samples = []
    for image in _images_in(image_dir):
        mask = masks.get(image.stem)
        if mask is None:
            raise DataError(f"{image}: no mask named {image.stem}.* in {mask_dir}")
        samples.append(SourceSample(image.stem, image, mask, source_split))
    return samples


class VocPaletteReader(Reader):
    """PASCAL-VOC layout: ``JPEGImages/*.jpg`` and palette ``SegmentationClassPNG/*.png``.

    The default table is PEER Hub crack/spalling's (0 background, 1 crack,
    2 spalling); value 255 (VOC's "void" border) is ignored.
    """

    name = "peerhub"
    DEFAULT_TABLE = {0: "background", 1: "crack", 2: "spalling", 255: IGNORE}

    def __init__(self, root, class_table: Mapping[int, str] | None = None,
                 image_dir: str = "JPEGImages", mask_dir: str = "SegmentationClassPNG"):
        super().__init__(root)
        self.table = dict(class_table or self.DEFAULT_TABLE)
        self._lut = _resolve_class_table(self.table, f"{self.name} class table")
        self.image_dir, self.mask_dir = image_dir, mask_dir

    def samples(self):
        return pair_images_and_masks(self._subdir(self.image_dir), self._subdir(self.mask_dir))

    def load_mask(self, sample):
        im = _load_mask_raw(sample.mask)
        if im.mode not in ("P", "L"):
            raise DataError(f"{sample.mask}: expected a palette (P) or grey (L) mask, got mode {im.mode}")
        return _map_values(np.asarray(im), self._lut, sample.mask)

    def describe(self):
        return {**super().describe(), "class_table": {str(k): v for k, v in self.table.items()}}


def _parse_colour(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in re.split(r"[,\s]+", text.strip().strip("()[]#")) if p]
    if len(parts) != 3 or not all(0 <= p <= 255 for p in parts):
        raise DataError(f"not an RGB colour: {text!r}")
    return tuple(parts)  # type: ignore[return-value]


class ColourMaskReader(Reader):
    """``images/*.jpg`` with RGB colour-coded ``masks/*.png`` (MDMCS).

    Corrosion is not a class of the schema; it maps to the ignore index by
    default (pass ``class_table`` with ``(0, 255, 255): "background"`` to
    count it as intact surface instead). ``tolerance`` accepts colours within
    that L-infinity distance of a table entry, for masks saved lossily.
    """

    name = "mdmcs"
    DEFAULT_TABLE = {
        (0, 0, 0): "background",
        (255, 0, 0): "crack",
        (128, 128, 128): "spalling",
        (0, 255, 0): "rebar",
        (0, 255, 255): IGNORE,  # corrosion
    }

    def __init__(self, root, class_table: Mapping[object, str] | None = None,
                 image_dir: str = "images", mask_dir: str = "masks", tolerance: int = 0):
        super().__init__(root)
        table = class_table or self.DEFAULT_TABLE
        self.table = {(_parse_colour(k) if isinstance(k, str) else tuple(k)): v
                      for k, v in table.items()}
        self._lut = _resolve_class_table(self.table, f"{self.name} colour table")
        self.image_dir, self.mask_dir, self.tolerance = image_dir, mask_dir, int(tolerance)

    def samples(self):
        return pair_images_and_masks(self._subdir(self.image_dir), self._subdir(self.mask_dir))

    def load_mask(self, sample):
        rgb = np.asarray(_load_mask_raw(sample.mask).convert("RGB"))
        return map_colours(rgb, self._lut, sample.mask, self.tolerance)

    def describe(self):
        return {**super().describe(), "tolerance": self.tolerance,
                "class_table": {",".join(map(str, k)): v for k, v in self.table.items()}}


def map_colours(rgb: np.ndarray, lut: Mapping[tuple[int, int, int], int], path: Path,
                tolerance: int = 0) -> np.ndarray:
    """Map an ``(H, W, 3)`` colour mask to class indices through ``lut``.

    Colours are packed into one integer per pixel so that the lookup is a
    single vectorised search. Colours farther than ``tolerance`` from every
    table entry are an error listing the first few with their pixel counts.
    """
    colours = np.array(list(lut.keys()), dtype=np.int32)
    indices = np.array(list(lut.values()), dtype=np.uint8)
    flat = rgb.reshape(-1, 3).astype(np.int32)
    packed = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    uniq, inverse = np.unique(packed, return_inverse=True)
    uniq_rgb = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], axis=1)
    # distance of each distinct colour to each table colour (few x few)
    dist = np.abs(uniq_rgb[:, None, :] - colours[None, :, :]).max(axis=2)
    nearest = dist.argmin(axis=1)
    unknown = dist[np.arange(len(uniq)), nearest] > tolerance
    if unknown.any():
        counts = np.bincount(inverse, minlength=len(uniq))
        listing = ", ".join(f"{tuple(int(c) for c in uniq_rgb[i])} ({counts[i]} px)"
                            for i in np.flatnonzero(unknown)[:10])
        raise DataError(f"{path}: mask colours not in the colour table: {listing}"
                        + (f" (+{unknown.sum() - 10} more)" if unknown.sum() > 10 else ""))
    return indices[nearest][inverse].reshape(rgb.shape[:2])


class BinaryMaskReader(Reader):
    """Binary crack masks thresholded from grey (DeepCrack).

    DeepCrack ships ``train_img/``+``train_lab/`` and ``test_img/``+``test_lab/``;
    the labels are 3-channel grey with JPEG-like noise, crack where grey >
    ``threshold``. The original split is kept as ``source_split``.
    """

    name = "deepcrack"

    def __init__(self, root, threshold: int = 127, positive_class: str = "crack",
                 pairs: Sequence[tuple[str, str, str]] = (("train", "train_img", "train_lab"),
                                                          ("test", "test_img", "test_lab"))):
        super().__init__(root)
        if not 0 <= int(threshold) < 255:
            raise DataError(f"threshold must be in [0, 255), got {threshold}")
        self.threshold = int(threshold)
        self.positive = class_index(positive_class)
        self.pairs = [p for p in pairs if (self.root / p[1]).is_dir()]
        if not self.pairs:
            raise DataError(f"{self.root}: none of the folders "
                            f"{[p[1] for p in pairs]} exists (is this a DeepCrack layout?)")

    @property
    def classes(self):
        return ("background", CLASS_NAMES[self.positive])

    def samples(self):
        out: list[SourceSample] = []
        for split, image_dir, mask_dir in self.pairs:
            out += pair_images_and_masks(self._subdir(image_dir), self._subdir(mask_dir), split)
        return out

    def load_mask(self, sample):
        grey = np.asarray(_load_mask_raw(sample.mask).convert("L"))
        return np.where(grey > self.threshold, self.positive, 0).astype(np.uint8)

    def describe(self):
        return {**super().describe(), "threshold": self.threshold,
                "positive_class": CLASS_NAMES[self.positive]}


class FolderReader(Reader):
    """The generic layout for users' own photos (and the synthetic data)::

        root/images/<name>.jpg|png     labelled photos
        root/masks/<name>.png          their masks
        root/unlabeled/<name>.*        optional photos without masks
        root/classes.txt               one line per mask value: "<value> <class>"

    A ``classes.txt`` line is either ``<grey value> <class>`` (single-channel
    masks, e.g. ``1 crack``) or ``<R>,<G>,<B> <class>`` (colour masks, e.g.
    ``255,0,0 crack``); ``<class>`` is a schema name or ``ignore``. Lines
    starting with ``#`` are comments. ``image_dir`` and ``mask_dir`` name other
    folders than ``images`` and ``masks`` (relative to ``root``, or absolute).
    """

    name = "folder"
    CLASS_FILE = CLASS_FILE

    def __init__(self, root, class_file: str | Path | None = None,
                 image_dir: str | Path = "images", mask_dir: str | Path = "masks"):
        super().__init__(root)
        self.class_file = Path(class_file) if class_file else self.root / self.CLASS_FILE
        self.table, self.colour = read_class_file(self.class_file)
        self._lut = _resolve_class_table(self.table, str(self.class_file))
        self.image_dir, self.mask_dir = image_dir, mask_dir  # relative to root, or absolute

    def samples(self):
        out = pair_images_and_masks(self._subdir(self.image_dir), self._subdir(self.mask_dir))
        unlabeled = self.root / "unlabeled"
        if unlabeled.is_dir():
            out += [SourceSample(p.stem, p) for p in _images_in(unlabeled)]
        return out

    def load_mask(self, sample):
        return _decode_mask(sample.mask, self._lut, self.colour, self.class_file.name)

    def describe(self):
        key = (lambda k: ",".join(map(str, k))) if self.colour else str
        return {**super().describe(), "class_table": {key(k): v for k, v in self.table.items()}}


def _decode_mask(path: Path, lut: dict, colour: bool, table_name: str) -> np.ndarray:
    """A mask file as schema indices through a resolved class table ``lut``
    (keyed by RGB colours if ``colour``, else by grey values)."""
    im = _load_mask_raw(path)
    if colour:
        return map_colours(np.asarray(im.convert("RGB")), lut, path)
    if im.mode not in ("L", "P", "I", "I;16", "1"):
        raise DataError(f"{path}: {table_name} lists grey values but the "
                        f"mask is mode {im.mode}; give colours as R,G,B instead")
    values = np.asarray(im)
    if values.max(initial=0) > 255:
        raise DataError(f"{path}: mask values above 255 ({values.max()})")
    return _map_values(values.astype(np.uint8), lut, path)


SCHEMA_TABLE: dict[int, str] = {**dict(enumerate(CLASS_NAMES)), IGNORE_INDEX: IGNORE}
"""Grey mask values that already are schema indices (what ``semiseg predict`` writes)."""


def load_class_mask(path: Path, class_file: Path | None = None) -> np.ndarray:
    """A mask file as ``(H, W) uint8`` schema class indices.

    ``class_file`` (a ``classes.txt``) maps its values or colours by class
    name; without one the grey values must already be schema indices
    (:data:`SCHEMA_TABLE`). Values outside the table are an error naming
    the file and the values.
    """
    if class_file is None:
        table, colour, name = SCHEMA_TABLE, False, "the class schema"
    else:
        (table, colour), name = read_class_file(class_file), Path(class_file).name
    return _decode_mask(Path(path), _resolve_class_table(table, name), colour, name)


def read_class_file(path: Path) -> tuple[dict[object, str], bool]:
    """Parse a ``classes.txt``; returns ``({value: name}, is_colour)``."""
    if not path.is_file():
        raise DataError(f"{path}: class file not found (one line per mask value: "
                        "'<value> <class>' or '<R>,<G>,<B> <class>')")
    table: dict[object, str] = {}
    kinds = set()
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, _, name = line.rpartition(" ")
        key, name = key.strip(), name.strip().lower()
        if not key:
            raise DataError(f"{path}:{lineno}: expected '<value> <class>', got {line!r}")
        if "," in key or key.startswith("("):
            table[_parse_colour(key)] = name
            kinds.add("colour")
        else:
            if not key.isdigit() or int(key) > 255:
                raise DataError(f"{path}:{lineno}: mask value must be 0..255, got {key!r}")
            table[int(key)] = name
            kinds.add("grey")
    if not table:
        raise DataError(f"{path}: class file is empty")
    if len(kinds) > 1:
        raise DataError(f"{path}: mixes grey values and RGB colours")
    return table, kinds == {"colour"}


def write_class_file(path: Path, table: Mapping[object, str]) -> None:
    """Write a ``classes.txt`` that :func:`read_class_file` reads back."""
    lines = [(",".join(map(str, k)) if isinstance(k, tuple) else str(k)) + f" {v}"
             for k, v in table.items()]
    Path(path).write_text("\n".join(lines) + "\n")


READERS: dict[str, Callable[..., Reader]] = {
    "peerhub": VocPaletteReader,
    "voc": VocPaletteReader,
    "mdmcs": ColourMaskReader,
    "deepcrack": BinaryMaskReader,
    "folder": FolderReader,
}


def open_source(dataset: str, source: str | Path, **options) -> Reader:
    """The reader for ``dataset`` over the folder ``source``."""
    try:
        factory = READERS[dataset]
    except KeyError:
        raise DataError(f"unknown dataset {dataset!r}; choose one of "
                        f"{sorted(READERS) + ['synthetic']}") from None
    try:
        return factory(source, **options)
    except TypeError as exc:  # an option this reader does not take
        raise DataError(f"{dataset} reader: {exc}") from None
