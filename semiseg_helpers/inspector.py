"""The mask inspector: a run's predictions on a prepared split, image by image.

Two layers, so that everything but the drawing of controls is tested without
a browser:

* :class:`InspectorState` — a plain object: which image, which layers
  (photo, ground truth, prediction, error map), their opacity, which classes
  are drawn; it renders the composite picture as an array and scores the
  image (per-class IoU). Predictions come from a ``predict`` callable and are
  computed **lazily**: only for the images looked at, each once (kept in a
  bounded cache; the per-image confusion matrices are kept for all).
* :class:`InspectorView` — the ipywidgets front end: a slider and a dropdown
  choose the image, check boxes the layers and classes, a slider the opacity;
  the per-class IoU table sits beside the picture.

**Ranking worst first without predicting everything up front.** Ordering the
dropdown by per-image IoU needs every image's prediction, which on a few
hundred photos takes a minute or more on a CPU, so the viewer does not wait for
it. The dropdown lists the images *scored so far* worst first, then the ones
not yet looked at in dataset order; each image viewed is scored and takes its
place in the order. A button scores all the rest in one pass (with a progress
bar), after which the whole split is ranked; ``score_all`` does the same from
code. Scores are kept, so the pass is paid once per session.

**Per-image IoU.** For one image and one class, IoU = TP / (TP + FP + FN) over
that image's labelled pixels (ignored pixels count nowhere), NaN when the
class is in neither the ground truth nor the prediction. An image's *score* is
the mean IoU over the classes shown (the class filter) that are in its ground
truth or its prediction: a missed defect and a false alarm both score 0; an
image with neither is not ranked (nothing to inspect). This is a per-image
view; the dataset's test IoU is computed from one confusion matrix over all
pixels (:mod:`semiseg_helpers.evaluate`), not as a mean of these.
"""

from __future__ import annotations

import html
import io
import math
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from semiseg_helpers.classes import (CLASS_COLOURS, CLASS_NAMES, DEFECT_CLASSES, IGNORE_INDEX,
                                     NUM_CLASSES, class_index, palette)
from semiseg_helpers.evaluate import confusion_matrix, iou_per_class

Predictor = Callable[[NDArray[np.uint8]], NDArray[np.uint8]]
"""``image (H, W, 3) uint8 -> class-index mask (H, W) uint8``."""

ProgressFn = Callable[[int, int], None]
"""``(done, total)``, called after each image a long pass predicts."""

LAYERS: tuple[str, ...] = ("image", "truth", "prediction", "errors")
"""The picture's layers, drawn in this order (later ones on top)."""

LAYER_LABELS: dict[str, str] = {"image": "image", "truth": "ground truth",
                                "prediction": "prediction", "errors": "error map"}

# Error map codes and colours (RGB); 0 = nothing drawn.
CORRECT, MISSED, FALSE_ALARM, CONFUSED = 1, 2, 3, 4
ERROR_NAMES: dict[int, str] = {CORRECT: "correct defect", MISSED: "missed (predicted background)",
                               FALSE_ALARM: "false alarm (truth is background)",
                               CONFUSED: "wrong defect class"}
ERROR_COLOURS: dict[int, tuple[int, int, int]] = {CORRECT: (40, 200, 40), MISSED: (255, 0, 255),
                                                  FALSE_ALARM: (0, 230, 255),
                                                  CONFUSED: (255, 140, 0)}


# --------------------------------------------------------------------------- #
# Where the images come from


class LabelledImages(Protocol):
    """Images with ground truth, read one at a time by index."""

    def __len__(self) -> int: ...

    def name(self, index: int) -> str: ...

    def load(self, index: int) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
        """``(image (H, W, 3) uint8, mask (H, W) uint8 class indices)``."""
        ...


class PreparedSplit:
    """The labelled images of one split of a prepared dataset, read on demand."""

    def __init__(self, data_dir: str | Path, split: str = "test"):
        from semiseg_helpers.data.dataset import ManifestDataset
        from semiseg_helpers.data.prepare import load_manifest, select_samples
        from semiseg_helpers.evaluate import defect_classes

        manifest = load_manifest(data_dir)
        samples = select_samples(manifest, split)
        if not samples:
            raise ValueError(f"{data_dir}: split {split!r} has no labelled image to inspect")
        self.data_dir, self.split = Path(data_dir), split
        self.classes: tuple[str, ...] = tuple(defect_classes(manifest))
        self._names = [s["name"] for s in samples]
        self._dataset = ManifestDataset(manifest["root"], samples)

    def __len__(self) -> int:
        return len(self._names)

    def name(self, index: int) -> str:
        return self._names[index]

    def load(self, index: int) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
        item = self._dataset[index]
        return item["image"].permute(1, 2, 0).numpy(), item["mask"].numpy()


@dataclass(frozen=True)
class InMemoryImages:
    """Images and masks already in memory (tests, corrupted copies of a split)."""

    images: Sequence[NDArray[np.uint8]]
    masks: Sequence[NDArray[np.uint8]]
    names: Sequence[str]

    def __post_init__(self) -> None:
        if not len(self.images) == len(self.masks) == len(self.names):
            raise ValueError(f"{len(self.images)} images, {len(self.masks)} masks and "
                             f"{len(self.names)} names: one of each per image")

    def __len__(self) -> int:
        return len(self.images)

    def name(self, index: int) -> str:
        return self.names[index]

    def load(self, index: int) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
        return self.images[index], self.masks[index]


def run_predictor(run_dir: str | Path, device: str = "auto") -> Predictor:
    """A run's best model as a :data:`Predictor`: sliding-window inference at
    the run's window and precision, as ``semiseg evaluate`` and ``predict``
    compute it."""
    from semiseg_helpers.evaluate import eval_window, run_logits_fn, sliding_window_logits
    from semiseg_helpers.predict import load_run_model

    model, config = load_run_model(run_dir, device)
    dev = next(model.parameters()).device
    forward = run_logits_fn(model, config, dev)
    window = eval_window(config)

    @torch.no_grad()
    def predict(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
        logits = sliding_window_logits(forward, x.to(dev).float().div_(255), window, NUM_CLASSES)
        return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()

    return predict


# --------------------------------------------------------------------------- #
# Pixel maps


def error_codes(truth: NDArray[np.uint8], prediction: NDArray[np.uint8],
                classes: Iterable[int]) -> NDArray[np.uint8]:
    """Per pixel, how the prediction relates to the truth for the defect
    ``classes`` (indices): :data:`CORRECT`, :data:`MISSED`, :data:`FALSE_ALARM`,
    :data:`CONFUSED` (two different defect classes), or 0 where neither mask
    holds one of ``classes``, the pixel is background in both, or unlabelled."""
    ids = np.asarray(sorted(set(classes) - {0}), dtype=np.int64)
    in_truth, in_pred = np.isin(truth, ids), np.isin(prediction, ids)
    labelled = truth != IGNORE_INDEX
    codes = np.zeros(truth.shape, dtype=np.uint8)
    codes[in_truth & (prediction == truth)] = CORRECT
    codes[in_truth & (prediction == 0)] = MISSED
    codes[in_pred & (truth == 0)] = FALSE_ALARM
    two_defects = (truth != 0) & (prediction != 0) & (truth != prediction)
    codes[(in_truth | in_pred) & two_defects] = CONFUSED
    codes[~labelled] = 0
    return codes


def _error_palette() -> NDArray[np.uint8]:
    lut = np.zeros((256, 3), dtype=np.uint8)
    for code, colour in ERROR_COLOURS.items():
        lut[code] = colour
    return lut


def _blend(canvas: NDArray[np.float32], colours: NDArray[np.uint8], where: NDArray[np.bool_],
           opacity: float) -> None:
    """``canvas[where] <- (1 - opacity) * canvas + opacity * colours``, in place."""
    canvas[where] = (1 - opacity) * canvas[where] + opacity * colours[where].astype(np.float32)


# --------------------------------------------------------------------------- #
# The state


@dataclass(frozen=True)
class ImageScores:
    """One image's numbers: per-class IoU (NaN: class in neither mask) and
    labelled pixel counts, for every class of the schema."""

    iou: dict[str, float]
    truth_pixels: dict[str, int]
    predicted_pixels: dict[str, int]
    score: float
    """Mean IoU over the shown classes present in truth or prediction (NaN if none)."""


class InspectorState:
    """What the inspector shows, without any widget.

    ``images`` supplies photos and ground truth, ``predict`` a mask per photo
    (called only for images looked at or scored; each result is cached, up to
    ``cache_size`` masks, the least recently viewed dropped first).
    ``classes`` are the defect classes the dataset has: those scored, and the
    class filter's choices (all shown at first).
    """

    def __init__(self, images: LabelledImages, predict: Predictor,
                 classes: Sequence[str] = DEFECT_CLASSES, cache_size: int = 256):
        if len(images) == 0:
            raise ValueError("nothing to inspect: no images")
        unknown = [c for c in classes if c not in DEFECT_CLASSES]
        if unknown or not classes:
            raise ValueError(f"classes must be defect classes among {list(DEFECT_CLASSES)}, "
                             f"got {list(classes)}")
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {cache_size}")
        self.images = images
        self.classes: tuple[str, ...] = tuple(classes)
        self._predict = predict
        self._load = lru_cache(maxsize=4)(images.load)
        self._cache_size = cache_size
        self._masks: OrderedDict[int, NDArray[np.uint8]] = OrderedDict()
        self._confusion: dict[int, NDArray[np.int64]] = {}
        self.predictions_computed = 0
        """How many times ``predict`` was called (lazy evaluation is tested on it)."""
        self._index = 0
        self._opacity = 0.5
        self._shown: tuple[str, ...] = self.classes
        self.layers: dict[str, bool] = {"image": True, "truth": False, "prediction": True,
                                        "errors": False}

    @classmethod
    def from_run(cls, run_dir: str | Path, data_dir: str | Path, split: str = "test",
                 device: str = "auto", cache_size: int = 256) -> "InspectorState":
        """A run's predictions over a prepared dataset's split (nothing predicted yet)."""
        images = PreparedSplit(data_dir, split)
        return cls(images, run_predictor(run_dir, device), images.classes, cache_size)

    # -- what is shown ------------------------------------------------------ #

    def __len__(self) -> int:
        return len(self.images)

    @property
    def index(self) -> int:
        return self._index

    @index.setter
    def index(self, value: int) -> None:
        self._index = self._resolve(value)

    def _resolve(self, index: int | None) -> int:
        """``index`` checked, or the current image's for ``None``."""
        if index is None:
            return self._index
        if not 0 <= int(index) < len(self):
            raise IndexError(f"image index {index} outside 0..{len(self) - 1}")
        return int(index)

    @property
    def opacity(self) -> float:
        return self._opacity

    @opacity.setter
    def opacity(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"opacity must be within [0, 1], got {value}")
        self._opacity = float(value)

    @property
    def shown(self) -> tuple[str, ...]:
        """The classes drawn and ranked (the class filter)."""
        return self._shown

    @shown.setter
    def shown(self, value: Iterable[str]) -> None:
        chosen = set(value)
        unknown = sorted(chosen - set(self.classes))
        if unknown:
            raise ValueError(f"cannot show {unknown}: the classes here are {list(self.classes)}")
        self._shown = tuple(c for c in self.classes if c in chosen)

    def show_layer(self, layer: str, on: bool = True) -> None:
        if layer not in LAYERS:
            raise ValueError(f"unknown layer {layer!r}; the layers are {list(LAYERS)}")
        self.layers[layer] = bool(on)

    def name(self, index: int | None = None) -> str:
        return self.images.name(self._resolve(index))

    # -- predictions and numbers ------------------------------------------- #

    def prediction(self, index: int | None = None) -> NDArray[np.uint8]:
        """The predicted mask of an image (the current one by default), computed once."""
        i = self._resolve(index)
        if i in self._masks:
            self._masks.move_to_end(i)
            return self._masks[i]
        mask = self._compute(i, keep=True)
        if len(self._masks) > self._cache_size:
            self._masks.popitem(last=False)
        return mask

    def _compute(self, i: int, keep: bool) -> NDArray[np.uint8]:
        """Predict image ``i``, record its confusion matrix, cache its mask if ``keep``."""
        image, truth = self._load(i)
        mask = np.asarray(self._predict(image), dtype=np.uint8)
        self.predictions_computed += 1
        if mask.shape != truth.shape:
            raise ValueError(f"{self.name(i)}: predicted mask {mask.shape} is not the "
                             f"ground truth's {truth.shape}")
        self._confusion[i] = confusion_matrix(torch.from_numpy(mask), torch.from_numpy(truth),
                                              NUM_CLASSES).numpy()
        if keep:
            self._masks[i] = mask
        return mask

    def confusion(self, index: int | None = None) -> NDArray[np.int64]:
        """An image's ``(C, C)`` confusion matrix (rows: truth, columns:
        prediction; ignored pixels left out), predicting it if needed."""
        i = self._resolve(index)
        if i not in self._confusion:
            self.prediction(i)
        return self._confusion[i]

    @property
    def scored(self) -> frozenset[int]:
        """Indices of the images predicted so far."""
        return frozenset(self._confusion)

    def scores(self, index: int | None = None) -> ImageScores:
        """Per-class IoU and pixel counts of an image (predicting it if needed)."""
        cm = self.confusion(index)
        iou = iou_per_class(cm)
        return ImageScores(
            iou={c: float(iou[k]) for k, c in enumerate(CLASS_NAMES)},
            truth_pixels={c: int(cm[k].sum()) for k, c in enumerate(CLASS_NAMES)},
            predicted_pixels={c: int(cm[:, k].sum()) for k, c in enumerate(CLASS_NAMES)},
            score=self._score(cm))

    def _score(self, cm: NDArray[np.int64]) -> float:
        iou = iou_per_class(cm)
        present = [iou[class_index(c)] for c in self.shown if not math.isnan(iou[class_index(c)])]
        return float(np.mean(present)) if present else math.nan

    def ranking(self) -> list[int]:
        """Every index: images scored so far worst first (by :attr:`ImageScores.score`
        over the shown classes), then scored images with no shown class in either
        mask, then the images not predicted yet, in dataset order."""
        score = {i: self._score(cm) for i, cm in self._confusion.items()}
        ranked = sorted((i for i in score if not math.isnan(score[i])), key=lambda i: (score[i], i))
        empty = sorted(i for i in score if math.isnan(score[i]))
        return ranked + empty + [i for i in range(len(self)) if i not in score]

    def score_all(self, progress: ProgressFn | None = None) -> None:
        """Predict every image not scored yet, keeping its confusion matrix;
        its mask is kept only while the cache has room (the pass never drops
        the masks of images already viewed)."""
        todo = [i for i in range(len(self)) if i not in self._confusion]
        for done, i in enumerate(todo, 1):
            self._compute(i, keep=len(self._masks) < self._cache_size)
            if progress is not None:
                progress(done, len(todo))

    def table(self, index: int | None = None) -> list[dict]:
        """Rows ``{"class", "truth_pixels", "predicted_pixels", "iou"}`` for
        background and the dataset's defect classes."""
        s = self.scores(index)
        return [{"class": c, "truth_pixels": s.truth_pixels[c],
                 "predicted_pixels": s.predicted_pixels[c], "iou": s.iou[c]}
                for c in ("background", *self.classes)]

    # -- the picture -------------------------------------------------------- #

    def render(self, index: int | None = None,
               layers: Mapping[str, bool] | None = None) -> NDArray[np.uint8]:
        """The composite picture ``(H, W, 3) uint8`` of the layers switched on
        (:attr:`layers`, or ``layers`` for this picture only).

        The photo (or black, when its layer is off) is the base; the ground
        truth, the prediction and the error map are blended on top in that order
        with weight :attr:`opacity`, each only where it marks one of the shown
        classes (the error map: see :func:`error_codes`). The prediction is
        computed only if a layer needs it.
        """
        i = self._resolve(index)
        on = {**self.layers, **(layers or {})}
        if set(on) != set(LAYERS):
            raise ValueError(f"unknown layer(s) {sorted(set(on) - set(LAYERS))}; "
                             f"the layers are {list(LAYERS)}")
        image, truth = self._load(i)
        canvas = (image.astype(np.float32) if on["image"]
                  else np.zeros((*truth.shape, 3), np.float32))
        ids = [class_index(c) for c in self.shown]
        colours = palette()
        if on["truth"]:
            _blend(canvas, colours[truth], np.isin(truth, ids), self.opacity)
        if on["prediction"] or on["errors"]:
            mask = self.prediction(i)
            if on["prediction"]:
                _blend(canvas, colours[mask], np.isin(mask, ids), self.opacity)
            if on["errors"]:
                codes = error_codes(truth, mask, ids)
                _blend(canvas, _error_palette()[codes], codes > 0, self.opacity)
        return np.rint(canvas).clip(0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- #
# Tables and figures of the scored images


PANELS: dict[str, dict[str, bool]] = {
    "image": {"image": True, "truth": False, "prediction": False, "errors": False},
    "ground truth": {"image": True, "truth": True, "prediction": False, "errors": False},
    "prediction": {"image": True, "truth": False, "prediction": True, "errors": False},
    "error map": {"image": True, "truth": False, "prediction": False, "errors": True},
}
"""The columns of :func:`worst_figure`: one layer each over the photo."""


def per_image_table(state: InspectorState):
    """A ``DataFrame`` of the images scored so far, worst first: ``rank``,
    ``image`` (name), ``score`` and the IoU of each of the dataset's classes
    (NaN: in neither mask)."""
    import pandas as pd

    rows = []
    for rank, i in enumerate((i for i in state.ranking() if i in state.scored), 1):
        s = state.scores(i)
        rows.append({"rank": rank, "image": state.name(i), "score": s.score,
                     **{f"iou_{c}": s.iou[c] for c in state.classes}})
    return pd.DataFrame(rows, columns=["rank", "image", "score",
                                       *(f"iou_{c}" for c in state.classes)])


def worst_figure(state: InspectorState, n: int = 4):
    """The ``n`` worst-scored images so far, one row each: the photo, its
    ground truth, the prediction and the error map over it (:data:`PANELS`)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    worst = [i for i in state.ranking() if i in state.scored
             and not math.isnan(state.scores(i).score)][:n]
    if not worst:
        raise ValueError("no scored image with a shown class in its truth or prediction")
    fig, axes = plt.subplots(len(worst), len(PANELS), squeeze=False,
                             figsize=(2.6 * len(PANELS), 2.6 * len(worst) + 0.6))
    for r, i in enumerate(worst):
        for ax, (title, layers) in zip(axes[r], PANELS.items()):
            ax.imshow(state.render(i, layers), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(title)
        axes[r][0].set_ylabel(f"{state.name(i)}\nIoU {state.scores(i).score:.2f}", fontsize=8)
    handles = ([Patch(color=np.divide(CLASS_COLOURS[c], 255), label=c) for c in state.shown]
               + [Patch(color=np.divide(ERROR_COLOURS[k], 255), label=name)
                  for k, name in ERROR_NAMES.items()])
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 1))
    return fig


# --------------------------------------------------------------------------- #
# The widgets


def png_bytes(rgb: NDArray[np.uint8], zoom: int = 1) -> bytes:
    """PNG of an RGB array, enlarged ``zoom`` times by pixel repetition (no smoothing)."""
    from PIL import Image

    if zoom > 1:
        rgb = np.repeat(np.repeat(rgb, zoom, axis=0), zoom, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="png")
    return buffer.getvalue()


def _swatch(colour: tuple[int, int, int]) -> str:
    return (f'<span style="display:inline-block;width:0.9em;height:0.9em;'
            f'background:rgb{colour};border:1px solid #888;vertical-align:middle"></span>')


def _number(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.3f}"


def scores_html(state: InspectorState, index: int | None = None) -> str:
    """The per-class IoU table of an image, as HTML."""
    i = state.index if index is None else index
    s = state.scores(i)
    rank = state.ranking().index(i) + 1
    score = _number(s.score)
    rows = "".join(
        f"<tr><td>{_swatch(CLASS_COLOURS[r['class']])} {r['class']}</td>"
        f"<td style='text-align:right'>{r['truth_pixels']}</td>"
        f"<td style='text-align:right'>{r['predicted_pixels']}</td>"
        f"<td style='text-align:right'>{_number(r['iou'])}</td></tr>"
        for r in state.table(i))
    legend = "".join(f"<div>{_swatch(ERROR_COLOURS[k])} {name}</div>"
                     for k, name in ERROR_NAMES.items())
    return (f"<div><b>{html.escape(state.name(i))}</b> ({i + 1} of {len(state)})</div>"
            f"<div>score {score} over {', '.join(state.shown) or 'no class'}; "
            f"rank {rank} of {len(state.scored)} scored (worst first)</div>"
            "<table><tr><th>class</th><th>truth px</th><th>predicted px</th><th>IoU</th></tr>"
            f"{rows}</table><div style='margin-top:0.5em'><i>error map</i>{legend}</div>")


def option_label(state: InspectorState, index: int) -> str:
    """The dropdown's text for an image: its score once predicted."""
    if index not in state.scored:
        return f"{state.name(index)} · not scored yet"
    score = state.scores(index).score
    return f"{state.name(index)} · " + ("no defect" if math.isnan(score) else f"IoU {score:.3f}")


class InspectorView:
    """ipywidgets controls bound to an :class:`InspectorState`.

    Constructing it predicts the current image only. Display it as the last
    expression of a cell (or with ``IPython.display.display``). ``display_size``
    is the picture's width in screen pixels (small images are enlarged by an
    integer factor without smoothing).
    """

    def __init__(self, state: InspectorState, display_size: int = 480):
        import ipywidgets as w

        self.state = state
        self.display_size = display_size
        self._busy = False
        n = len(state)
        self.slider = w.IntSlider(value=state.index, min=0, max=n - 1, description="image",
                                  continuous_update=False)
        self.dropdown = w.Dropdown(description="worst first", options=[],
                                   layout=w.Layout(width="28em"))
        self.layer_boxes = {layer: w.Checkbox(value=state.layers[layer], indent=False,
                                              description=LAYER_LABELS[layer],
                                              layout=w.Layout(width="auto"))
                            for layer in LAYERS}
        self.opacity = w.FloatSlider(value=state.opacity, min=0.0, max=1.0, step=0.05,
                                     description="opacity", continuous_update=False)
        self.class_boxes = {c: w.Checkbox(value=c in state.shown, description=c, indent=False,
                                          layout=w.Layout(width="auto"))
                            for c in state.classes}
        self.score_button = w.Button(description=f"score all {n} images",
                                     tooltip="predict every image once, to rank the dropdown")
        self.progress = w.IntProgress(value=0, min=0, max=max(n, 1),
                                      layout=w.Layout(visibility="hidden", width="12em"))
        self.picture = w.Image(format="png")
        self.picture.add_class("semiseg-inspector-picture")
        self.numbers = w.HTML()
        controls = w.VBox([
            w.HBox([self.slider, self.dropdown]),
            w.HBox([w.Label("layers"), *self.layer_boxes.values(), self.opacity]),
            w.HBox([w.Label("classes"), *self.class_boxes.values(),
                    self.score_button, self.progress]),
        ])
        self.widget = w.VBox([controls, w.HBox([self.picture, self.numbers])])
        self.widget.add_class("semiseg-inspector")

        self.slider.observe(lambda ch: self.select(ch["new"]), names="value")
        self.dropdown.observe(lambda ch: ch["new"] is not None and self.select(ch["new"]),
                              names="value")
        for layer, box in self.layer_boxes.items():
            box.observe(lambda ch, layer=layer: self._set_layer(layer, ch["new"]), names="value")
        self.opacity.observe(lambda ch: self._set_opacity(ch["new"]), names="value")
        for box in self.class_boxes.values():
            box.observe(lambda ch: self._set_classes(), names="value")
        self.score_button.on_click(lambda _: self.score_all())
        self.select(state.index)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # -- reactions ---------------------------------------------------------- #

    def select(self, index: int) -> None:
        """Show image ``index``: every control follows."""
        if self._busy:
            return
        self._busy = True
        try:
            self.state.index = index
            self._draw()
            self.slider.value = index
            self._fill_dropdown()
        finally:
            self._busy = False

    def _set_layer(self, layer: str, on: bool) -> None:
        self.state.show_layer(layer, on)
        self._draw()

    def _set_opacity(self, value: float) -> None:
        self.state.opacity = value
        self._draw()

    def _set_classes(self) -> None:
        self.state.shown = [c for c, box in self.class_boxes.items() if box.value]
        self._draw()
        self._fill_dropdown()

    def score_all(self) -> None:
        """Score every image (the button), then rank the dropdown."""
        self.progress.layout.visibility = "visible"
        self.score_button.disabled = True

        def advance(done: int, total: int) -> None:
            self.progress.max, self.progress.value = total, done

        try:
            self.state.score_all(advance)
        finally:
            self.progress.layout.visibility = "hidden"
            self.score_button.disabled = False
        self.score_button.description = "all images scored"
        self._fill_dropdown()
        self.numbers.value = scores_html(self.state)

    # -- drawing ------------------------------------------------------------ #

    def _draw(self) -> None:
        rgb = self.state.render()
        h, w = rgb.shape[:2]
        zoom = max(1, self.display_size // max(h, w))
        self.picture.value = png_bytes(rgb, zoom)
        self.picture.width = str(min(w * zoom, self.display_size))
        self.numbers.value = scores_html(self.state)

    def _fill_dropdown(self) -> None:
        was_busy, self._busy = self._busy, True
        try:
            self.dropdown.options = [(option_label(self.state, i), i)
                                     for i in self.state.ranking()]
            self.dropdown.value = self.state.index
        finally:
            self._busy = was_busy
