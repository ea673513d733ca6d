#!/usr/bin/env bash
# Table 9 of record on peerhub_crack_spalling (issue 4): every method at
# 2/5/10/20 % labels plus DeepLabv3+ at 100 %, the same encoder, data,
# augmentation and step budget (the profile's). Finished points are skipped
# and interrupted ones resume, so this can be run again, on another machine,
# until the grid is complete; then the notebook redraws Table 9 and Figure 8
# into figures/ from the run folders without retraining.
#   PROFILE=cpu  SEEDS="0"    on 2 CPU cores: about 1 h per semi-supervised run
#   PROFILE=gpu  SEEDS="0 1"  on one GPU
set -euo pipefail
cd "$(dirname "$0")/../.."
PROFILE=${PROFILE:-cpu}
SEEDS=${SEEDS:-0}
DATA=${DATA:-data/peerhub}
ROOT=records/peerhub-$PROFILE/table9
[ -d "$DATA" ] || .venv/bin/semiseg prepare --dataset peerhub \
    --source ../shared/data/peerhub_crack_spalling --out "$DATA"
.venv/bin/semiseg sweep --data "$DATA" --root "$ROOT" --profile "$PROFILE" \
    --methods fpn deeplabv3plus unimatch duosegnet semisegdefect \
    --fractions 0.02 0.05 0.1 0.2 --seeds $SEEDS \
    --extra method=deeplabv3plus,label_fraction=1.0 --jobs "${JOBS:-1}"
.venv/bin/semiseg notebook notebooks/09_comparison.py \
    --executed "$ROOT/09_comparison.ipynb" -p profile "$PROFILE" -p data_dir "$DATA" \
    -p runs_dir "$ROOT" -p seeds "[${SEEDS// /, }]" -p run false -p output_dir figures
