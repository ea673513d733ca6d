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
# # 06 · Ablation: number of anchors / negatives — Table 6
#
# The contrastive loss draws up to N anchors per class and 2N negative keys per
# anchor (`semi.num_anchors`, `semi.num_negatives`, paired as the paper pairs them:
# 32/64, 64/128, 128/256, 256/512 — explicit cases of the grid, not a product). The
# paper states that **more is better, with diminishing returns, and that even 32/64
# reaches 66.85 % MIoU, above DeepLabv3+'s 60.47 %**. What more anchors cost is the
# other half of the trade: the contrastive loss's time and memory per step at each
# setting, from `benchmarks/contrastive_cost.py`, close the notebook.
#
# The grid is data: `grids/table6_anchors.yaml` holds the settings, the paper's
# statement and the direction it claims (256/512 best and 32/64 worst; the
# diminishing returns and the comparison with DeepLabv3+ are read from the table,
# not checked), which this notebook checks against the measured test MIoU. Each
# setting trains at every seed into its own run folder (finished ones are loaded,
# interrupted ones resumed); a setting that another sweep has already trained with
# the same configuration and data — the default setting, shared by Tables 2 to 9 —
# is copied from there, not trained again. From a shell:
#
# ```
# semiseg sweep --data DIR --root RUNS --profile cpu --seeds 0 \
#     --grid grids/table6_anchors.yaml --reuse records/peerhub-cpu/table9
# ```
#
# **What the `smoke` budget (`make demo`) can show.** One seed of 600 steps on
# synthetic 96 px images says whether every setting trains end to end, not which is
# best: differences of a few points are noise there. The direction is the business
# of the `cpu` profile's runs of record (`records/peerhub-cpu/run_ablations.sh`).

# %% tags=["parameters"]
profile = "smoke"              # smoke | cpu | gpu | paper
data_dir = "results/demo/data" # a prepared dataset
label_fraction = 0.05
seeds = [0]
# the table's grid file: its settings, what the paper states, the direction it claims
grid = "grids/table6_anchors.yaml"
settings = None                # None: every setting of the grid; or a list of their labels
runs_dir = None                # None: <output_dir>/runs/<profile>
reuse_roots = None             # folders of finished runs to reuse; None: the runs of the
                               # other notebooks beside output_dir (as make demo writes them)
overrides = {}                 # dotted config keys for every run, e.g. {"steps": 500}
jobs = 2                       # runs side by side (threads split on CPU; one GPU each when several)
run = True                     # False: only load (and reuse) finished runs
# the contrastive loss's time and memory per setting (benchmarks/contrastive_cost.py)
contrastive_cost = "figures/benchmarks/contrastive_cost.json"
output_dir = "results/demo/06_ablation_anchors"

# %%
import semiseg_helpers  # noqa: F401  (first: makes torchvision importable)

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from semiseg_helpers import ablations, figures
from semiseg_helpers.notebooks import work_from_repository_root

work_from_repository_root()  # JupyterLab starts kernels in notebooks/

ablation = ablations.load_ablation(grid).select(settings)
runs_dir = ablations.runs_folder(runs_dir, output_dir, profile)
if reuse_roots is None:
    reuse_roots = ablations.sibling_runs(output_dir, profile)
display(Markdown(ablation.markdown()))

# %% [markdown]
# ## Train (finished and reusable points are not trained again)

# %%
trained = ablations.train_settings(ablation, data_dir, profile, label_fraction, seeds,
                                   overrides, runs_dir, reuse_roots, jobs, run)

# %% [markdown]
# ## Table 6 — test IoU (%) per class and MIoU, mean ± std over seeds
# Each run is scored on the whole test split at its best-validation checkpoint.

# %%
table = ablations.ablation_table(trained.runs, ablation.labels, trained.classes)
figures.save_table(table, output_dir, ablation.name)
figures.save_table(ablations.display_table(table), output_dir, f"{ablation.name}_display")
display(Markdown(figures.markdown_table(ablations.display_table(table))))

# %% [markdown]
# ## The paper's stated effect beside ours

# %%
checks = ablations.check_claims(table, ablation.claims)
effects = ablations.effects_table(table, checks)
figures.save_table(effects, output_dir, f"{ablation.name}_paper")
display(Markdown(figures.markdown_table(effects)))
sentence = ablations.direction_sentence(checks, table)
print(sentence)

# %% [markdown]
# ## Test MIoU per number of anchors / negatives

# %%
fig = ablations.miou_figure(table, ablation, trained.runs)
figures.save_figure(fig, output_dir, f"{ablation.name}_miou")
plt.show()

# %% [markdown]
# ## What more anchors cost: the contrastive loss alone, per step
# Forward and backward of the loss on a batch of the benchmark's profile (the
# labelled and unlabelled images' representation together), median time and peak
# memory above its inputs, measured by
# `python benchmarks/contrastive_cost.py --profile cpu --threads 1 --json
# figures/benchmarks/contrastive_cost.json` (the loss alone: the rest of the step
# does not change with the setting; one thread, as the runs of record train).

# %%
cost = ablations.contrastive_cost_table(contrastive_cost)
if cost is None:
    print(f"{contrastive_cost} does not exist: run benchmarks/contrastive_cost.py to make it")
else:
    figures.save_table(cost, output_dir, f"{ablation.name}_cost")
    display(Markdown(figures.markdown_table(cost)))

# %%
# What this run recorded, for tests and for batch runs over parameters.
ablations.write_record(output_dir, ablation, trained, table, checks, sentence)
