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
# # 11 · Grad-CAM of the encoder's last stage — Figure 11, and what the maps are worth
#
# For each defect class, Grad-CAM maps of the encoder's last stage over test
# images, Semi-SegDefect and its own network trained supervised side by side
# (Figure 11), computed with pytorch-grad-cam. The paper only shows the
# pictures; here each map also gets two numbers, averaged per model and class:
#
# * **mass inside the ground truth**: the map normalised to sum 1, summed over
#   the class's ground-truth pixels. A map spread evenly over the image would
#   score the class's area share (`gt_share_%`, the chance level).
# * **ROAD** (`pytorch_grad_cam.metrics.road`): the pixels the map ranks most
#   relevant (MoRF) or least relevant (LeRF) are removed by noisy linear
#   imputation and the drop of the model's confidence measured;
#   `road_combined = (LeRF − MoRF) / 2` is positive when what the map points at
#   matters more to the model than what it ignores. The confidence is the mean
#   softmax probability of the class over its ground-truth pixels.
#
# **The Grad-CAM target** is the sum of the class logit over the class's
# *ground-truth* pixels (pytorch-grad-cam's `SemanticSegmentationTarget`), not
# over the pixels each model predicts as the class: both models answer the same
# question about the same pixels, so their maps differ only because the models
# do, and a model that misses a defect still has a map. **The layer** is the
# module that outputs the encoder's deepest feature level (EfficientNet-Lite0:
# `blocks.6`; ConvNeXt: `stages.3`), dilated to stride 16 as DeepLabv3+ uses it.
#
# **Images**, by a fixed rule: per class, the test images where the class
# covers at least `min_share` of the pixels, ranked by that share, and
# `images_per_class` of them at evenly spaced ranks (the largest defect, the
# smallest eligible one, and those between). Figure 11 shows
# `figure_images_per_class` of them per class, chosen the same way.
#
# By default (`semisegdefect_run` and `supervised_run` left `None`) the
# notebook explains the two runs `make demo` trains in `09_comparison`,
# `<output_dir>/../09_comparison/runs/<profile>/method=<method>,label_fraction=0.1,seed=0`
# (synthetic data, smoke profile: a few images, seconds). The
# figures of record explain the committed models of record on the real
# PEER Hub test images (README, *Grad-CAM*).

# %% tags=["parameters"]
profile = "smoke"                # smoke | cpu | gpu | paper (sets the defaults below)
data_dir = "results/demo/data"   # a prepared dataset: its test split is explained
semisegdefect_run = None         # a run folder; None: the demo's (see above)
supervised_run = None            # a run folder; None: the demo's (see above)
images_per_class = None          # None: 2 at the smoke profile, 12 otherwise
figure_images_per_class = 2
min_share = 0.01                 # a class must cover this share of an image to explain it there
road_percentiles = [20, 40, 60, 80]  # ROAD removes 100 - p % of the pixels at each p
seed = 0                         # ROAD's imputation noise
device = "auto"
threads = 1                      # torch CPU threads: ROAD's imputations (scipy, one thread) dominate
output_dir = "results/demo/11_gradcam"

# %%
import semiseg_helpers  # noqa: F401  (first: makes torchvision importable)

import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from semiseg_helpers import figures, gradcam
from semiseg_helpers.data.prepare import load_manifest
from semiseg_helpers.evaluate import defect_classes
from semiseg_helpers.notebooks import work_from_repository_root
from semiseg_helpers.predict import load_run_model

work_from_repository_root()  # JupyterLab starts kernels in notebooks/

if threads:
    torch.set_num_threads(threads)
output_dir = Path(output_dir)
demo_runs = output_dir.parent / "09_comparison" / "runs" / profile
runs = {"semisegdefect": semisegdefect_run, "supervised": supervised_run}
runs = {m: Path(r) if r else demo_runs / f"method={m},label_fraction=0.1,seed=0"
        for m, r in runs.items()}
for method, run in runs.items():
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"{method}_run={str(run)!r} is not a run folder (no config.json); "
                                "run 09_comparison first or pass a run folder")
if images_per_class is None:
    images_per_class = 2 if profile == "smoke" else 12
manifest = load_manifest(data_dir)
classes = defect_classes(manifest)

# %% [markdown]
# ## The models and the layer explained

# %%
models = {}
for method, run in runs.items():
    model, config = load_run_model(run, device)
    if config.method != method:
        raise ValueError(f"{method}_run={str(run)!r} is a {config.method!r} run")
    label = gradcam.model_label(run, config.method)
    models[label] = model
    layer = gradcam.encoder_last_stage(model)
    layer_name = next(n for n, m in model.named_modules() if m is layer)
    print(f"{label}: {run}\n    encoder {config.model.encoder}, target layer {layer_name} "
          f"({type(layer).__name__})")

# %% [markdown]
# ## The test images

# %%
selection = gradcam.select_images(manifest, classes, images_per_class, min_share)
cases = gradcam.load_cases(manifest, selection)
absent = [c for c in classes if c not in {case.class_name for case in cases}]
print(f"{len(cases)} (image, class) cases from the test split of {data_dir}"
      + (f"; no test image has at least {min_share:.0%} of {absent}" if absent else ""))
for case in cases:
    print(f"  {case.class_name:<9} {case.name}  {100 * case.region.mean():.1f} % of the pixels")

# %% [markdown]
# ## Grad-CAM, mass inside the ground truth and ROAD
# Every map is computed in float32 on the whole image. ROAD's imputation noise
# is seeded per image, the same for both models.

# %%
results, seconds = {}, {}
for label, model in models.items():
    started = time.time()
    results[label] = gradcam.explain(model, cases, road_percentiles, seed)
    seconds[label] = round(time.time() - started, 1)
    print(f"{label}: {len(cases)} maps and ROAD scores in {seconds[label]} s")

# %% [markdown]
# ## The scores, per model and class
# Means over the images: `gt_share_%` is the class's share of the image (what a
# uniform map would put inside the ground truth), `cam_mass_in_gt_%` the share
# of the Grad-CAM mass inside it, `probability_%` the model's mean probability of
# the class over its pixels, and ROAD's confidence changes after removing the
# most (`road_morf`) and least (`road_lerf`) relevant pixels with their combined
# score (probability units; in [−0.5, 0.5], higher is more faithful).
# `n_zero_cams` counts maps that were zero everywhere (left out of the mass);
# `*_se` are standard errors over the images.

# %%
per_image = gradcam.per_image_table(cases, results)
scores = gradcam.score_table(per_image)
display(Markdown(figures.markdown_table(scores, ".3f")))

# %% [markdown]
# Both models explain the same images, so they are compared image by image:
# Semi-SegDefect minus supervised, mean ± standard error of the differences.

# %%
first, second = list(models)
differences = gradcam.paired_differences(per_image, first, second)
display(Markdown(figures.markdown_table(differences, ".3f")))
lines = gradcam.statements(scores, differences, first, second)
for line in lines:
    print(line)

# %% [markdown]
# ## Figure 11
# Rows: an image and the class explained; columns: the image, its ground truth
# and each model's map of that class (jet: high is red), the class's ground
# truth outlined in white, the map's mass inside it in the title.

# %%
rows = [i for c in dict.fromkeys(case.class_name for case in cases)
        for i in gradcam.evenly_spaced([i for i, case in enumerate(cases)
                                        if case.class_name == c], figure_images_per_class)]
fig11 = gradcam.figure11(cases, results, rows)
plt.show()

# %%
# Written together once everything is computed, then what this run recorded
# (for tests and for batch runs over parameters).
output_dir.mkdir(parents=True, exist_ok=True)
figures.save_table(per_image, output_dir, "gradcam_per_image", ".4f")
figures.save_table(scores, output_dir, "gradcam_scores", ".3f")
figures.save_table(differences, output_dir, "gradcam_differences", ".3f")
figures.save_figure(fig11, output_dir, "figure11", dpi=100)
record = {"models": {label: str(runs[m]) for label, m in zip(models, runs)},
          "data_dir": str(data_dir), "classes": classes, "absent_classes": absent,
          "cases": [[case.class_name, case.name] for case in cases],
          "figure_rows": [[cases[i].class_name, cases[i].name] for i in rows],
          "road_percentiles": list(road_percentiles), "seed": seed,
          "scores": scores.to_dict(orient="records"),
          "differences": differences.to_dict(orient="records"), "statements": lines,
          "seconds": seconds}
(output_dir / "record.json").write_text(json.dumps(record, indent=1))
record["statements"]
