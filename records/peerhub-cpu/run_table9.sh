#!/usr/bin/env bash
# Table 9 of record on peerhub_crack_spalling (issue 4): every method at
# 2/5/10/20 % labels plus DeepLabv3+ and Semi-SegDefect's own network trained
# supervised (method `supervised`) at 100 %, the same encoder, data,
# augmentation and step budget. Finished points are skipped and interrupted
# ones resume, so this can be run again, on another machine, until the grid is
# complete; then notebook 09 redraws Table 9, Figure 8 and the MIoU-vs-fraction
# plot into figures/ from the run folders without retraining.
#
# The record of 2026-11-24 (2 CPU cores, no GPU lent) is
#   STEPS=300 JOBS=2 records/peerhub-cpu/run_table9.sh
# i.e. the cpu profile with its 1,500-step schedule shortened to 300 steps for
# every method (the whole grid in ~2 h); the run folders are under
# records/peerhub-cpu/table9-steps300. That record predates the `supervised`
# rows: running this again trains them (about 6 min each) before redrawing.
# A folder whose config.json differs from what is asked now (e.g. after a
# change of the profile) stops the sweep with the differing keys: use a new
# ROOT then. The profile's own budget:
#   PROFILE=cpu STEPS=1500 SEEDS="0"   on 2 CPU cores: about 1 h per semi-supervised run
#   PROFILE=gpu STEPS=6000 SEEDS="0 1" on one GPU
# Methods are listed slowest first, so that side-by-side jobs end together.
set -euo pipefail
cd "$(dirname "$0")/../.."
PROFILE=${PROFILE:-cpu}
STEPS=${STEPS:-300}
EVAL=${EVAL:-$((STEPS / 4))}
SEEDS=${SEEDS:-0}
DATA=${DATA:-data/peerhub}
ROOT=records/peerhub-$PROFILE/table9-steps$STEPS
[ -d "$DATA" ] || .venv/bin/semiseg prepare --dataset peerhub \
    --source ../shared/data/peerhub_crack_spalling --out "$DATA"
.venv/bin/semiseg sweep --data "$DATA" --root "$ROOT" --profile "$PROFILE" \
    --methods unimatch duosegnet semisegdefect supervised fpn deeplabv3plus \
    --fractions 0.2 0.1 0.05 0.02 --seeds $SEEDS \
    $(for s in $SEEDS; do echo --extra method=deeplabv3plus,label_fraction=1.0,seed=$s \
        --extra method=supervised,label_fraction=1.0,seed=$s; done) \
    --jobs "${JOBS:-1}" \
    steps="$STEPS" eval_every="$EVAL" checkpoint_every="$EVAL"
.venv/bin/semiseg notebook notebooks/09_comparison.py \
    --executed "$ROOT/09_comparison.ipynb" -p profile "$PROFILE" -p data_dir "$DATA" \
    -p runs_dir "$ROOT" -p seeds "[${SEEDS// /, }]" -p run false -p output_dir "$ROOT/figures"
