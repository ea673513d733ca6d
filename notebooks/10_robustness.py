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
# # 10 · Robustness — Figures 9 and 10, and test IoU under corruptions
#
# The paper shows, in pictures only, Semi-SegDefect's predictions on single and
# coupled defects in complex scenes: damage-like edges, illumination changes,
# shadows, motion blur (Figures 9 and 10). This notebook draws those figures
# from two finished runs — Semi-SegDefect and the same network trained
# supervised on the labelled images alone — and turns the interference into a
# number: the test IoU per class under seven corruptions at five severities.
#
# * **Corruptions** (`semiseg_helpers.robustness.CORRUPTIONS`): illumination
#   (brightness), shadows, motion blur — the interference the paper names —
#   plus Gaussian noise, defocus blur, contrast loss and JPEG compression, each
#   at severities 1–5 with ImageNet-C's levels where it has them; kornia's
#   filters, Pillow's JPEG codec. Every image's random draws (noise, shadow
#   shape, blur direction) are seeded by `seed` and the image, so a rerun gives
#   the same numbers.
# * **Scores**: per corruption the mean IoU over severities and the *relative
#   robustness*, that mean divided by the clean IoU, per class and for MIoU.
# * **Figures 9 and 10**: images chosen by a rule, not by hand. A class is
#   *present* when it covers at least `min_defect_share` of the image's labelled
#   pixels; Figure 9 takes, for each class, the single-defect image (only that
#   class present) with the most complex scene; Figure 10 the `n_coupled` most
#   complex images with two classes or more. *Complexity* is the mean Sobel
#   gradient over the ground-truth background: edges and texture that are not
#   defects. The rule never looks at the models. Each set shown — the prepared
#   test split, and a folder of full-resolution labelled photos (`photos_dir`,
#   e.g. MDMCS at 1080×720, predicted by sliding window) — is chosen from separately.
# * **Classes the models do not know.** The models of record learnt background,
#   crack and spalling (PEER Hub). MDMCS also labels exposed rebar and corrosion:
#   corrosion is unlabelled (ignored) when MDMCS is read, and rebar is drawn in
#   the ground truth but not scored (white in the error maps); an image's classes
#   *present* are counted among the classes the models know.
#
# **At the `smoke` profile** (`make demo`: synthetic images, 600-step runs) the
# scores use 8 test images, to stay within seconds: they show the notebook
# working, not how robust anything is. The figures of record use the `cpu` runs
# on real photographs (README, *Robustness*).

# %% tags=["parameters"]
profile = "smoke"              # smoke | cpu | gpu | paper
data_dir = "results/demo/data" # the prepared dataset the runs were trained on
semisegdefect_run = None       # a finished run; None: the demo's (09_comparison beside data_dir)
supervised_run = None          # the same network trained supervised; None: the demo's
photos_dir = None              # a labelled photo folder at full resolution, e.g. ../shared/data/mdmcs_mini
photos_dataset = "mdmcs"       # its layout (a reader of `semiseg prepare --dataset`)
corruptions = None             # None: all seven
severities = None              # None: 1-5
n_images = None                # test images scored; None: 8 at the smoke profile, all otherwise
min_defect_share = 0.001       # a class is present from this share of an image's labelled pixels
n_coupled = 2                  # Figure 10's images per set
seed = 0
device = "auto"
output_dir = "results/demo/10_robustness"

# %%
import semiseg_helpers  # noqa: F401  (first: makes torchvision importable)

import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from semiseg_helpers import figures
from semiseg_helpers import robustness as rb
from semiseg_helpers.data.prepare import load_manifest, select_samples
from semiseg_helpers.evaluate import defect_classes
from semiseg_helpers.notebooks import work_from_repository_root

work_from_repository_root()  # JupyterLab starts kernels in notebooks/
started = time.time()
output_dir = Path(output_dir)
output_dir.mkdir(parents=True, exist_ok=True)
demo_runs = Path(data_dir).parent / "09_comparison" / "runs" / profile   # `make demo`'s layout
runs = {"Semi-SegDefect": semisegdefect_run
        or str(demo_runs / "method=semisegdefect,label_fraction=0.1,seed=0"),
        "Supervised": supervised_run
        or str(demo_runs / "method=supervised,label_fraction=0.1,seed=0")}
manifest = load_manifest(data_dir)
classes = defect_classes(manifest)
known = [c for c in rb.run_classes(runs["Semi-SegDefect"])
         if c in rb.run_classes(runs["Supervised"])]
segmenters = {name: rb.load_segmenter(run, device) for name, run in runs.items()}
corruptions = list(corruptions or rb.CORRUPTIONS)
severities = list(severities or rb.SEVERITIES)
n_images = n_images or (8 if profile == "smoke" else None)
print(f"classes of {data_dir}: {classes}; classes both runs know: {known}")

# %% [markdown]
# ## The corruptions
# Each row of the picture is one corruption, clean on the left, the severities
# scored to the right (pixel sizes are for 224 px images and scale with the
# image), on the test image with the most complex scene.

# %%
display(Markdown(figures.markdown_table(rb.corruption_table(), ".2f")))
test_samples = select_samples(manifest, "test")
if not test_samples:
    raise ValueError(f"{data_dir}: the test split has no labelled image")
test_scenes = rb.describe_scenes(rb.load_split(manifest, test_samples), "test", classes,
                                 min_defect_share)
gallery = rb.corruption_gallery(rb.most_complex(test_scenes)[0].image, corruptions,
                                severities, seed)
figures.save_figure(gallery, output_dir, "corruptions", dpi=90)
plt.show()

# %% [markdown]
# ## Test IoU under corruptions
# Scored on `n_images` test images spread evenly through the split in name
# order (all of it when `n_images` is None), with every run's own evaluation
# window and precision. One confusion matrix per model, corruption and severity
# over those images; the table gives the clean IoU, then per corruption the mean
# IoU over the severities (%) and the relative robustness (mean / clean).

# %%
scored = rb.load_split(manifest, rb.systematic_subset(test_samples, n_images))
scoring_started = time.time()
confusions = rb.corruption_confusions(segmenters, scored, corruptions, severities, seed)
scoring_seconds = time.time() - scoring_started
scores = rb.scores_frame(confusions, classes)
table = rb.robustness_table(scores)
display_table = rb.robustness_display(table)
figures.save_table(scores, output_dir, "robustness_scores", ".4f")
figures.save_table(table, output_dir, "robustness", ".4f")
figures.save_table(display_table, output_dir, "robustness_display")
print(f"{len(scored)} of {len(test_samples)} test images, {len(corruptions)} corruptions × "
      f"severities {severities}, {len(runs)} models: {scoring_seconds:.0f} s")
display(Markdown(figures.markdown_table(display_table)))

# %% [markdown]
# ## Which class is most fragile
# Per model, the relative robustness of each class averaged over the
# corruptions, most fragile first, and the corruption that hurts it most. The
# paper's figures suggest cracks, thin and low-contrast, suffer most.

# %%
fragile = rb.fragility(table)
figures.save_table(fragile, output_dir, "fragility", ".3f")
display(Markdown(figures.markdown_table(fragile, ".3f")))
statements = rb.fragility_statements(table)
for line in statements:
    print(line)

# %% [markdown]
# ## IoU against severity

# %%
curves = rb.severity_figure(scores)
figures.save_figure(curves, output_dir, "iou_vs_severity")
plt.show()

# %% [markdown]
# ## Figures 9 and 10 — single and coupled defects in complex scenes
# Columns: the image, its ground truth, and per model the prediction (titled
# with the image's MIoU over the classes it contains) and the error map. The
# chosen images and their complexity go to `figure9_10_images.csv`.

# %%
sets = {"test split": test_scenes}
if photos_dir:
    photos = rb.load_photos(photos_dir, photos_dataset)
    sets[Path(photos_dir).name] = rb.describe_scenes(photos, Path(photos_dir).name, known,
                                                     min_defect_share)
single = [s for scenes in sets.values() for s in rb.pick_single(scenes, known)]
coupled = [s for scenes in sets.values() for s in rb.pick_coupled(scenes, n_coupled)]
chosen = pd.concat([rb.scenes_table(single, "9"), rb.scenes_table(coupled, "10")],
                   ignore_index=True)
figures.save_table(chosen, output_dir, "figure9_10_images", ".4f")
display(Markdown(figures.markdown_table(chosen, ".4f")))
print({name: f"{len(s)} images, {sum(len(x.defects) == 1 for x in s)} single, "
             f"{sum(len(x.defects) >= 2 for x in s)} coupled" for name, s in sets.items()})

# %%
drawn = {}
for number, scenes, kind in (("9", single, "single defects"), ("10", coupled, "coupled defects")):
    if not scenes:
        print(f"Figure {number}: no image meets the rule ({kind})")
        continue
    predictions = {name: rb.predict(segment, [s.image for s in scenes])
                   for name, segment in segmenters.items()}
    fig = rb.prediction_figure(scenes, predictions, known,
                               f"Figure {number} — {kind}: most complex scenes by rule")
    figures.save_figure(fig, output_dir, f"figure{number}", dpi=100)
    drawn[f"figure{number}"] = [f"{s.source}/{s.name}" for s in scenes]
    plt.show()

# %%
# What this run recorded, for tests and for batch runs over parameters.
record = {"runs": runs, "classes": classes, "known_classes": known,
          "corruptions": corruptions, "severities": severities,
          "n_images": len(scored), "n_test_images": len(test_samples),
          "fragile": rb.most_fragile(table),
          "relative_miou": {m: float(table[(table["model"] == m) & (table["class"] == rb.MIOU)]
                                     ["relative"].mean()) for m in runs},
          "statements": statements, "figures": drawn, "sets": list(sets),
          "scoring_seconds": round(scoring_seconds, 1),
          "seconds": round(time.time() - started, 1)}
(output_dir / "record.json").write_text(json.dumps(record, indent=1))
record
