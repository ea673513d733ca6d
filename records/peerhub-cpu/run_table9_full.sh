#!/usr/bin/env bash
# Table 9 of record (issue 11) on peerhub_crack_spalling at the cpu profile's
# full budget (1,500 steps, fast path), every method with the same encoder,
# weights, decoder width, data and steps, seeds 0 and 1 (SEEDS to change):
# Semi-SegDefect, its own network trained supervised, FPN, DeepLabv3+, UniMatch
# and Duo-SegNet at 5, 10, 20 and 2 % labels, then DeepLabv3+ and `supervised`
# at 100 %. Fractions run in that order (5 % first: the models of record's
# fraction), one sweep each, into one ROOT: finished points are skipped and an
# interrupted one resumes, so the grid continues on another machine until it
# is complete. The two models of record (seed 0 at 5 %) are points of this
# grid already: their config, metrics and summary are copied in, not retrained.
# Commit each finished run folder (config.json, metrics.jsonl, summary.json;
# checkpoints are ignored) as it ends.
set -euo pipefail
cd "$(dirname "$0")/../.."
SEEDS=${SEEDS:-"0 1"}
FRACTIONS=${FRACTIONS:-"0.05 0.1 0.2 0.02"}
DATA=${DATA:-data/peerhub}
ROOT=records/peerhub-cpu/table9
[ -d "$DATA" ] || .venv/bin/semiseg prepare --dataset peerhub \
    --source ../shared/data/peerhub_crack_spalling --out "$DATA"
mkdir -p "$ROOT"
for method in semisegdefect supervised; do
  point="$ROOT/method=$method,label_fraction=0.05,seed=0"
  if [ ! -d "$point" ]; then
    mkdir -p "$point.tmp" && cp records/peerhub-cpu/models-of-record/$method-f0.05-s0/{config.json,metrics.jsonl,summary.json} "$point.tmp"/ && mv "$point.tmp" "$point"
  fi
done
for fraction in $FRACTIONS; do
  .venv/bin/semiseg sweep --data "$DATA" --root "$ROOT" --profile cpu \
      --methods semisegdefect supervised unimatch duosegnet deeplabv3plus fpn \
      --fractions "$fraction" --seeds $SEEDS --jobs "${JOBS:-1}"
done
.venv/bin/semiseg sweep --data "$DATA" --root "$ROOT" --profile cpu \
    --methods deeplabv3plus supervised --fractions 1.0 --seeds $SEEDS --jobs "${JOBS:-1}"
