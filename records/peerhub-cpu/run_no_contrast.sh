#!/usr/bin/env bash
# Semi-SegDefect without its pixel contrastive term (semi.contrastive_loss=false:
# a plain mean teacher) at Table 9's budget and label fractions, beside the
# Table 9 runs of record: does the contrastive term move test MIoU at this
# scale? (The paper's Table 8: -3.59 MIoU without it.) The grid axis puts the
# switch into the run folders' names; finished points are skipped.
#   STEPS=300 JOBS=2 records/peerhub-cpu/run_no_contrast.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PROFILE=${PROFILE:-cpu}
STEPS=${STEPS:-300}
EVAL=${EVAL:-$((STEPS / 4))}
DATA=${DATA:-data/peerhub}
GRID=$(mktemp --suffix=.yaml)
trap 'rm -f "$GRID"' EXIT
echo "semi.contrastive_loss: [false]" > "$GRID"
.venv/bin/semiseg sweep --data "$DATA" --root "records/peerhub-$PROFILE/no-contrast-steps$STEPS" \
    --profile "$PROFILE" --methods semisegdefect --fractions 0.2 0.1 0.05 0.02 \
    --seeds ${SEEDS:-0} --grid "$GRID" --jobs "${JOBS:-1}" \
    steps="$STEPS" eval_every="$EVAL" checkpoint_every="$EVAL"
