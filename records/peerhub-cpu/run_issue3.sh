#!/usr/bin/env bash
# Issue 3's comparison of record: peerhub_crack_spalling, 5 % labels, seed 0,
# cpu profile (ImageNet EfficientNet-Lite0, 128-channel decoder, 160 px crops,
# batch 8 labelled + 8 unlabelled), the same 1,500 steps for each method:
#   supervised       the same network on the 77 labelled images only
#   semisegdefect    the full method
#   meanteacher      Semi-SegDefect without the contrastive term (plain mean teacher)
# Runs one after the other with 2 threads; a run folder that holds a finished
# run is skipped, an interrupted one resumes from its last checkpoint.
# (What actually happened: supervised and the first 300 steps of
# semisegdefect ran side by side with threads=1; semisegdefect then resumed
# with threads=2. Thread count is not part of a run's identity.)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-data/peerhub}
OUT=records/peerhub-cpu
THREADS=${THREADS:-2}
COMMON="--data $DATA --label-fraction 0.05 --profile cpu --seed 0 --quiet steps=1500 eval_every=150 checkpoint_every=150 threads=$THREADS"
run() { name=$1; shift; .venv/bin/semiseg train $COMMON --out $OUT/$name "$@" >> $OUT/$name.log 2>&1; }
for which in ${@:-supervised semisegdefect meanteacher}; do
  case $which in
    supervised) run supervised-f0.05-s0 --method supervised ;;
    semisegdefect) run semisegdefect-f0.05-s0 --method semisegdefect ;;
    meanteacher) run meanteacher-f0.05-s0 --method semisegdefect semi.contrastive_loss=false ;;
    *) echo "unknown run $which" >&2; exit 2 ;;
  esac
done
