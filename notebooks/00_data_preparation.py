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
# # 00 · Data preparation — Table 1, Figures 4 and 5
#
# Turns a source dataset into the prepared form every other notebook reads:
# images larger than the crop are tiled (the paper: 512×512 sub-images, keeping
# only tiles with a defect), source images are split train/val/test 7:1:2 with a
# seed, and nested labelled subsets of the training split are drawn for each label
# fraction (2 % ⊂ 5 % ⊂ 10 % ⊂ 20 %); the rest of the training split is the
# unlabelled pool.
#
# * `dataset = "synthetic"` (the default) generates the embedded procedural
#   concrete-defect dataset — no download needed;
# * `"peerhub"`, `"mdmcs"`, `"deepcrack"` read those public datasets in their
#   original layouts, `"folder"` your own photos (`images/`, `masks/`,
#   `classes.txt`, optional `unlabeled/`); set `source` to the folder.
#
# The same step from a shell: `semiseg prepare --dataset peerhub --source PATH --out DIR`.

# %% tags=["parameters"]
profile = "smoke"              # decides the size of the synthetic data
dataset = "synthetic"          # synthetic | peerhub | mdmcs | deepcrack | folder
source = None                  # source folder (not for synthetic)
crop_size = 512                # tile size for images larger than this
keep_defect_only = True        # keep only tiles that contain a defect
split_ratios = [0.7, 0.1, 0.2] # train / val / test, by source image
seed = 0
label_fractions = [0.02, 0.05, 0.1, 0.2]
synthetic_images = None        # None: the profile's default
synthetic_size = None          # None: the profile's default
data_dir = "results/demo/data"                    # where the prepared dataset goes
output_dir = "results/demo/00_data_preparation"   # tables and figures
overwrite = True               # replace an existing prepared dataset

# %%
import semiseg_helpers  # noqa: F401  (first: makes torchvision importable)

import json
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from semiseg_helpers import figures
from semiseg_helpers.config import get_profile
from semiseg_helpers.data.prepare import load_manifest, prepare_dataset
from semiseg_helpers.notebooks import work_from_repository_root

work_from_repository_root()  # JupyterLab starts kernels in notebooks/

output_dir = Path(output_dir)
output_dir.mkdir(parents=True, exist_ok=True)
settings = get_profile(profile)

# %% [markdown]
# ## Prepare

# %%
synthetic = {
    "n_labeled": synthetic_images or settings.synthetic_images,
    "size": synthetic_size or settings.synthetic_size,
}
prepare_dataset(
    dataset, data_dir, source,
    crop_size=crop_size, keep_defect_only=keep_defect_only, split_ratios=split_ratios,
    seed=seed, label_fractions=label_fractions, overwrite=overwrite,
    synthetic_options=synthetic if dataset == "synthetic" else None,
)
manifest = load_manifest(data_dir)
print(json.dumps({k: manifest[k] for k in ("dataset", "counts", "labelled_counts", "source_classes")}, indent=1))

# %% [markdown]
# ## Table 1 — the dataset after partition
# Images per split and, per defect class, the images that contain it and its share
# of the labelled pixels. Defect classes are rare at pixel level (cracks especially),
# which is what makes the hard-pixel sampling of the contrastive loss matter.

# %%
t1 = figures.table1(manifest)
figures.save_table(t1, output_dir, "table1")
display(Markdown(figures.markdown_table(t1)))

# %% [markdown]
# ## Figure 4 — samples with their masks

# %%
fig4 = figures.figure4(manifest, n=8, seed=seed)
figures.save_figure(fig4, output_dir, "figure4")
plt.show()

# %% [markdown]
# ## Figure 5 — CutMix
# The strong view of the unlabelled images ends with CutMix: a box from one image
# replaces the same box in another, and the (pseudo-)label and confidence maps are
# mixed with the same box. This figure is drawn by the training code's own `cutmix`.

# %%
fig5 = figures.figure5(manifest, seed=seed)
figures.save_figure(fig5, output_dir, "figure5")
plt.show()

# %%
# What this run recorded, for tests and for batch runs over parameters.
record = {"counts": manifest["counts"], "labelled_counts": manifest["labelled_counts"],
          "n_samples": len(manifest["samples"]), "source_classes": manifest["source_classes"]}
(output_dir / "record.json").write_text(json.dumps(record, indent=1))
record
