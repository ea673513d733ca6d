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
# # 01 · Training Semi-SegDefect — Figures 6 and 7, test IoU
#
# Trains one model on a prepared dataset (from `00_data_preparation`) and shows
# the learning-rate schedule (Figure 6), the validation MIoU during training
# (Figure 7), the losses and the confidence weight w_u, and the test IoU at the
# best-on-validation checkpoint (the test set is never used to select).
#
# `method` is any method the training loop knows (`semisegdefect`, `supervised`);
# `overrides` changes any configuration value, e.g.
# `{"semi.contrastive_loss": False}` for a plain mean teacher. A run folder that
# already holds a finished run is loaded, not retrained; an interrupted one resumes.
#
# **Encoder.** The paper's encoder is ConvNeXt-L. At the `smoke` and `cpu`
# profiles this notebook uses ImageNet EfficientNet-Lite0 (the only pretrained
# weights these machines can reach), at small crops — its numbers are not the
# paper's setting. The `paper` profile is ConvNeXt-L at 512×512.

# %% tags=["parameters"]
profile = "smoke"              # smoke | cpu | gpu | paper
data_dir = "results/demo/data" # a prepared dataset
method = "semisegdefect"
label_fraction = 0.1
seed = 0
overrides = {}                 # dotted config keys, e.g. {"steps": 500}
run_dir = None                 # None: <output_dir>/run
compare = {}                   # other finished runs to compare with: {label: run folder}
output_dir = "results/demo/01_train_semisegdefect"

# %%
import semiseg_helpers  # noqa: F401  (first: makes torchvision importable)

import json
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from semiseg_helpers import figures
from semiseg_helpers.comparison import LEARNT_IOU, unlearnt_classes
from semiseg_helpers.config import make_config
from semiseg_helpers.data.prepare import load_manifest, select_samples
from semiseg_helpers.notebooks import work_from_repository_root
from semiseg_helpers.runs import RunDir
from semiseg_helpers.train import defect_classes, train

work_from_repository_root()  # JupyterLab starts kernels in notebooks/

output_dir = Path(output_dir)
output_dir.mkdir(parents=True, exist_ok=True)
run_dir = Path(run_dir) if run_dir else output_dir / "run"
config = make_config(profile, overrides, method=method, label_fraction=label_fraction, seed=seed)
manifest = load_manifest(data_dir)
print(config.to_json())

# %% [markdown]
# ## Thin cracks at the representation's resolution
# The contrastive loss works on the 1/4-resolution representation, so labels are
# brought to a grid of 4×4 blocks. Nearest-neighbour sampling keeps one pixel per
# block: a crack narrower than the block survives only where it crosses that pixel,
# as a dotted line through about width/4 of its blocks. Class-priority pooling
# (`semi.label_downsampling="priority"`, the default: a block with any crack pixel
# is crack) keeps every block a crack runs through. Over the labelled training
# subset:

# %%
labelled = select_samples(manifest, "train", label_fraction)
thin = figures.thin_crack_table(manifest, labelled)
display(Markdown(figures.markdown_table(thin)))

# %% [markdown]
# ## Train

# %%
summary = train(config, data_dir, run_dir)
metrics = RunDir(run_dir).read_metrics()
classes = defect_classes(manifest)

# %% [markdown]
# ## Figure 6 — learning rate

# %%
fig6 = figures.figure6(metrics)
figures.save_figure(fig6, output_dir, "figure6")
plt.show()

# %% [markdown]
# ## Figure 7 — validation MIoU during training

# %%
others = {label: RunDir(path).read_metrics() for label, path in compare.items()}
fig7 = figures.figure7(metrics, classes, others)
figures.save_figure(fig7, output_dir, "figure7")
plt.show()

# %% [markdown]
# ## Losses, w_u and sampled anchors
# w_u is the fraction of pseudo-label pixels above 0.97 confidence: it starts near
# 0 and rises as the teacher improves. If it stays near 0 the unsupervised term
# never acts; if `anchors` is 0 the contrastive term is empty.

# %%
curves = figures.training_curves(metrics)
figures.save_figure(curves, output_dir, "training_curves")
plt.show()

# %% [markdown]
# ## Test IoU at the best validation checkpoint
# At the `smoke` profile (what `make demo` runs: 600 steps, 96 px synthetic
# images, about a minute and a half on two cores) the model learns every
# synthetic class, which the line under the table checks. That shows the method
# training end to end. It does not show how much the unlabelled images help:
# that needs supervised training of the same network beside it (`compare`, or
# notebook 09), several seeds, and real photographs (the `cpu` profile).

# %%
scores = figures.scores_table(summary)
figures.save_table(scores, output_dir, "test_iou")
display(Markdown(f"best step **{summary['best_step']}** of {summary['steps']}, "
                 f"{summary['n_labelled']} labelled / {summary['n_unlabelled']} unlabelled images, "
                 f"{summary['seconds']:.0f} s of training"))
display(Markdown(figures.markdown_table(scores)))
scored = summary["test"] or summary["val"]
unlearnt = unlearnt_classes({c: 100 * v for c, v in scored["iou"].items()})
print("every class learnt (IoU above {:.0f} %)".format(LEARNT_IOU) if not unlearnt else
      "not learnt at this budget: " + ", ".join(f"{c} ({v:.1f} %)" for c, v in unlearnt.items()))

# %% [markdown]
# ## Compared with other runs
# Runs named in `compare` (for instance supervised-only training and a plain mean
# teacher with the same data, seed and step budget), loaded from their folders.

# %%
if compare:
    others_summary = {label: RunDir(path).read_summary() for label, path in compare.items()}
    table = figures.runs_table({"this run": summary, **others_summary})
    figures.save_table(table, output_dir, "runs_compared")
    display(Markdown(figures.markdown_table(table)))

# %%
record = {k: summary[k] for k in ("method", "label_fraction", "seed", "best_step", "steps")}
record.update(val_miou=summary["val"]["miou"],
              test_miou=summary["test"]["miou"] if summary["test"] else None,
              unlearnt_classes=sorted(unlearnt), run_dir=str(run_dir))
(output_dir / "record.json").write_text(json.dumps(record, indent=1))
record
