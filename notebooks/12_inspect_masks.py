# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 12 · The mask inspector — a run's test predictions, image by image
#
# An interactive viewer over a trained run's predictions on a prepared split
# (the test split by default): choose the image with the slider, or from the
# dropdown, which lists the images **worst first** by their IoU; switch the
# layers on and off — the photo, the ground truth, the prediction, the error map
# — set their opacity, choose which defect classes are drawn, and read the
# image's per-class IoU beside it. Open it in JupyterLab (`make lab`, README):
# the widgets need a live kernel.
#
# **It opens at once.** Predictions are made lazily, for the images you look
# at, each once. The dropdown ranks the images scored so far and lists the rest
# after them; *score all* predicts every image in one pass (a progress bar shows
# it) and ranks the whole split. `score_all = True` does that pass before the
# viewer opens and writes the per-image table and the worst images below.
#
# **Per-image IoU** is TP / (TP + FP + FN) over one image's labelled pixels; an
# image's score is the mean over the shown classes in its ground truth or its
# prediction (a missed defect and a false alarm both count 0). The test IoU of
# the run (notebooks 01 and 09) is computed over all pixels at once, not as the
# mean of these.
#
# On the models of record and the real test photographs (README, *Mask
# inspector*):
#
# ```
# semiseg notebook notebooks/12_inspect_masks.py --executed results/record/12_inspect_masks.ipynb \
#     -p profile cpu -p data_dir data/peerhub \
#     -p run_dir records/peerhub-cpu/models-of-record/semisegdefect-f0.05-s0 \
#     -p score_all true -p output_dir figures/inspect_masks
# ```

# %% tags=["parameters"]
profile = "smoke"                # the demo chain's parameter; the run's own config rules here
data_dir = "results/demo/data"   # a prepared dataset
run_dir = None                   # None: the demo's Semi-SegDefect run, beside output_dir (09's)
split = "test"                   # the split to inspect
device = "auto"                  # auto | cpu | cuda
score_all = False                # True: predict every image now (ranks the dropdown; table, figure)
n_worst = 4                      # rows of the worst-images figure (with score_all)
output_dir = "results/demo/12_inspect_masks"

# %%
import semiseg_helpers  # noqa: F401  (first: makes torchvision importable)

import json
import math
import time
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from semiseg_helpers import figures
from semiseg_helpers.inspector import InspectorState, InspectorView, per_image_table, worst_figure
from semiseg_helpers.notebooks import work_from_repository_root

work_from_repository_root()  # JupyterLab starts kernels in notebooks/
output_dir = Path(output_dir)
output_dir.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## The run and the images
# Loading the model reads its weights (`checkpoints/best.pt`, or the committed
# `model.safetensors` of a model of record); no image is predicted yet.

# %%
if run_dir is None:   # the demo chain: notebook 09's Semi-SegDefect run at 10 % labels
    run_dir = (Path(output_dir).parent / "09_comparison" / "runs" / profile
               / "method=semisegdefect,label_fraction=0.1,seed=0")
started = time.perf_counter()
state = InspectorState.from_run(run_dir, data_dir, split, device=device)
load_seconds = time.perf_counter() - started
summary = json.loads((Path(run_dir) / "summary.json").read_text())
print(f"{summary['method']} at {summary['label_fraction']:.0%} labels, seed {summary['seed']}: "
      f"test MIoU {summary['test']['miou']:.3f} over {len(state)} {split} images of {data_dir}; "
      f"classes {list(state.classes)}")

# %%
score_seconds = None
if score_all:
    scoring = time.perf_counter()
    state.score_all()
    score_seconds = time.perf_counter() - scoring
    print(f"scored all {len(state)} images in {score_seconds:.1f} s "
          f"({score_seconds / len(state):.2f} s per image)")

# %% [markdown]
# ## The inspector
# Slider and dropdown choose the image (the dropdown: worst first among those
# scored); the check boxes switch layers and classes. Error map: green, a defect
# found with its class; magenta, a defect missed (predicted background); cyan, a
# false alarm on background; orange, the wrong defect class.

# %%
opening = time.perf_counter()
view = InspectorView(state)
open_seconds = time.perf_counter() - opening
predictions_at_open = state.predictions_computed
print(f"model loaded in {load_seconds:.1f} s; the viewer opened in {open_seconds:.1f} s, "
      f"{predictions_at_open} prediction(s) made so far")
view

# %% [markdown]
# ## Worst images and the per-image table (with `score_all`)
# The images with the lowest score, each as the photo, its ground truth, the
# prediction and the error map; and every image's score and per-class IoU, worst
# first (`per_image_iou.csv`).

# %%
table = per_image_table(state)
if score_all:
    figures.save_table(table, output_dir, "per_image_iou", floatfmt=".3f")
    display(Markdown(figures.markdown_table(table.head(10), floatfmt=".3f")))
    fig = worst_figure(state, n_worst)
    figures.save_figure(fig, output_dir, "worst_images")
    plt.show()
else:
    print(f"{len(table)} of {len(state)} images scored; set score_all = True (or press "
          "'score all') to rank them all")

# %%
# What this run recorded, for tests and for batch runs over parameters (NaN -> null).
head = table.head(n_worst).astype(object).where(table.head(n_worst).notna(), None)
record = {"run_dir": str(run_dir), "data_dir": str(data_dir), "split": split,
          "n_images": len(state), "classes": list(state.classes), "score_all": score_all,
          "predictions_at_open": predictions_at_open, "n_scored": len(state.scored),
          "load_seconds": round(load_seconds, 2), "open_seconds": round(open_seconds, 2),
          "score_all_seconds": None if score_seconds is None else round(score_seconds, 1),
          "worst": head[["image", "score"]].to_dict("records"),
          "first_image": state.name(0),
          "first_image_iou": {c: None if math.isnan(v) else v
                              for c, v in state.scores(0).iou.items()}}
(output_dir / "record.json").write_text(json.dumps(record, indent=1))
record
