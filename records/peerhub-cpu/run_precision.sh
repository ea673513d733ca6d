#!/usr/bin/env bash
# Issue 9's accuracy check of the fast path: Semi-SegDefect at 5 % labels on
# peerhub_crack_spalling, cpu profile cut to 300 steps, seed 0, once in fp32
# eager and once on the default fast path (precision=auto: bf16 autocast +
# channels-last on this CPU). Side by side, one thread each.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-data/peerhub}
OUT=records/peerhub-cpu/precision-steps300
COMMON="--data $DATA --method semisegdefect --label-fraction 0.05 --profile cpu --seed 0 --quiet steps=300 eval_every=75 checkpoint_every=75 threads=${THREADS:-1}"
.venv/bin/semiseg train $COMMON --out $OUT/fp32 precision=fp32 > $OUT/fp32.log 2>&1 &
.venv/bin/semiseg train $COMMON --out $OUT/fast precision=auto > $OUT/fast.log 2>&1 &
wait
