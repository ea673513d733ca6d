#!/usr/bin/env bash
# The models of record (issue 8, item 9): supervised training of Semi-SegDefect's
# own network and Semi-SegDefect itself at 5 % labels on peerhub_crack_spalling,
# seed 0, the cpu profile's full budget (1,500 steps, validation every 150) on
# its default fast path, side by side with one thread each; then each run's
# best weights are exported in half precision (model.safetensors), which is
# what is committed beside config.json, metrics.jsonl and summary.json, so that
#   semiseg evaluate --run records/peerhub-cpu/models-of-record/semisegdefect-f0.05-s0 ...
#   semiseg predict  --run records/peerhub-cpu/models-of-record/semisegdefect-f0.05-s0 ...
# work from a fresh clone. Finished runs are skipped, interrupted ones resume.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-data/peerhub}
OUT=records/peerhub-cpu/models-of-record
mkdir -p "$OUT"
[ -d "$DATA" ] || .venv/bin/semiseg prepare --dataset peerhub \
    --source ../shared/data/peerhub_crack_spalling --out "$DATA"
COMMON="--data $DATA --label-fraction 0.05 --profile cpu --seed 0 --quiet threads=${THREADS:-1}"
for method in supervised semisegdefect; do
  ( .venv/bin/semiseg train $COMMON --method $method --out $OUT/$method-f0.05-s0 \
        >> $OUT/$method-f0.05-s0.log 2>&1 \
    && .venv/bin/semiseg export --run $OUT/$method-f0.05-s0 >> $OUT/$method-f0.05-s0.log ) &
done
wait
