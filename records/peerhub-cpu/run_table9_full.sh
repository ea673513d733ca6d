#!/usr/bin/env bash
# Table 9 of record (issue 11) on peerhub_crack_spalling at the cpu profile's
# full budget (1,500 steps, fast path), every method with the same encoder,
# weights, decoder width, data and steps, seeds 0 and 1 (SEEDS to change):
# Semi-SegDefect, its own network trained supervised, FPN, DeepLabv3+, UniMatch
# and Duo-SegNet at 5, 10, 20 and 2 % labels, then DeepLabv3+ and `supervised`
# at 100 %. Fractions run in that order (5 % first: the models of record's
# fraction), and within a fraction seed by seed (every method at seed 0 first,
# so that a partial grid already compares all methods), one sweep each, into
# one ROOT: finished points are skipped and an interrupted one resumes, so the
# grid continues on another machine until it is complete. Every point is
# trained by the same code, the models of record's configurations included
# (they were trained before the depth-wise fast path, so their wall-clock would
# not compare): they stay apart, as released models.
#
# Cross-dataset check: as soon as a fraction's seed-0 runs end, those at 5 %
# and 20 % are scored, without retraining, on DeepCrack's test split and on
# mdmcs_mini (score_cross_dataset.py), while their weights are still on disk.
# Figure 8 (Semi-SegDefect at 20 % beside DeepLabv3+ at 100 %) is likewise drawn
# from weights: those two runs train back to back, and the notebook draws it then.
#
# At the end, notebook 09 draws Table 9 of record from the finished runs into
# figures/ (run that last command alone to redraw from a partial grid).
#
# Commit each finished run folder (config.json, metrics.jsonl, summary.json,
# cross_dataset/; checkpoints are ignored) as it ends.
set -euo pipefail
cd "$(dirname "$0")/../.."
SEEDS=${SEEDS:-"0 1"}
FRACTIONS=${FRACTIONS:-"0.05 0.1 0.2 0.02"}
DATA=${DATA:-data/peerhub}
# One thread per run: every run's wall-clock is then measured alike, and other
# work on a 2-core machine takes the other core instead of stalling a 2-thread
# run's parallel regions (which slowed steps 3-10x while tests ran beside it).
THREADS=${THREADS:-1}
ROOT=records/peerhub-cpu/table9
[ -d "$DATA" ] || .venv/bin/semiseg prepare --dataset peerhub \
    --source ../shared/data/peerhub_crack_spalling --out "$DATA"
mkdir -p "$ROOT"
# One sweep into ROOT, with the grid's common settings:
#   sweep_t9 --methods ... --fractions ... --seeds ...
sweep_t9() {
  .venv/bin/semiseg sweep --data "$DATA" --root "$ROOT" --profile cpu --jobs "${JOBS:-1}" \
      threads="$THREADS" "$@" || true
}
# Table 9 of record from whatever has finished: figures/table9*.{csv,md},
# figures/miou_vs_fraction.png, the paired, convergence and cross-dataset tables,
# and Figure 8 when both of its runs still have their weights. At THREADS too:
# beside a training, its cross-dataset scoring at torch's default two threads
# took over 20 minutes for one model, against under 2 at one thread.
draw_table9() {
  OMP_NUM_THREADS="$THREADS" .venv/bin/semiseg notebook notebooks/09_comparison.py \
      --executed "$ROOT/09_comparison.ipynb" -p profile cpu -p data_dir "$DATA" \
      -p runs_dir "$ROOT" -p seeds "[${SEEDS// /, }]" -p run false -p output_dir figures \
      -p cross_datasets '{"deepcrack": "data/deepcrack-test", "mdmcs_mini": "data/mdmcs-mini-eval"}'
}
for fraction in $FRACTIONS; do
  for seed in $SEEDS; do
    if [ "$seed" = 0 ] && [ "$fraction" = 0.2 ]; then
      # Figure 8 sets Semi-SegDefect at 20 % beside DeepLabv3+ at 100 %, drawn from
      # their weights, which do not outlive a session: train the two one after the
      # other and draw the figure while both are on disk.
      sweep_t9 --methods semisegdefect --fractions 0.2 --seeds 0
      sweep_t9 --methods deeplabv3plus --fractions 1.0 --seeds 0
      draw_table9
    fi
    sweep_t9 --methods semisegdefect supervised unimatch deeplabv3plus fpn duosegnet \
        --fractions "$fraction" --seeds "$seed"
    if [ "$seed" = 0 ]; then
      OMP_NUM_THREADS="$THREADS" .venv/bin/python records/peerhub-cpu/score_cross_dataset.py \
          --root "$ROOT" \
          --fractions 0.05 0.2 --seed 0
    fi
  done
done
for seed in $SEEDS; do
  sweep_t9 --methods deeplabv3plus supervised --fractions 1.0 --seeds "$seed"
done
# Table 9 of record from whatever has finished.
draw_table9
