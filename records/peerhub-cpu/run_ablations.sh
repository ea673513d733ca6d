#!/usr/bin/env bash
# Tables 2 to 8 of record (issue 12): Semi-SegDefect's ablations on
# peerhub_crack_spalling at 5 % labels, the cpu profile's full budget (1,500
# steps), seeds 0 and 1 for Tables 4, 5, 7 and 8 and seed 0 for Tables 2, 3 and
# 6 (each table's seeds: SEEDS_<table>, e.g. SEEDS_table2="0 1"). One table at a
# time, in TABLES' order: its grid file (grids/*.yaml) swept into
# records/peerhub-cpu/ablations/<table>/runs, then its notebook (run=false) draws
# the table, the paper's statement beside ours and the plot into
# figures/ablations/<table>/ (the executed notebook stays beside the runs).
#
# Nothing is trained twice. A point whose configuration and data match a
# finished run of Table 9 (records/peerhub-cpu/table9: the default setting, at
# each seed) or of another table here is copied from it before the sweep
# (`--reuse`: by configuration, not by folder name; the copy says where from in
# reused.json). Finished points are skipped, an interrupted one resumes from its
# checkpoint, so the script continues where it stopped; DRY_RUN=1 lists what
# is left. In all 27 runs train (2: 3, 3: 5, 4: 2, 5: 6, 6: 3, 7: 2, 8: 6) and
# 11 points are copies (all done: 16.0 h of training at one thread in all);
# each run takes 26-34 min at one thread on an AVX512-BF16 EPYC, 50-70 min on
# an AMX Xeon (the same bf16 fast path, about half as fast per step). JOBS=2
# runs two points of a table side by side, but idles a core on a table's last
# point; two copies of the script (JOBS=1 each, the second started once the
# first trains) keep both busy: training locks its run folder, so each copy
# leaves the point the other trains to it and goes on, and the copy that ends
# a table last draws it whole. Table 6 also needs the contrastive loss's cost
# (benchmarks/contrastive_cost.py), measured here when its JSON is missing.
# Runs use one thread each (THREADS), as Table 9's do: the same wall-clock
# conditions, and other work on the 2 cores does not stall their steps. A
# table whose sweep leaves failed points (error.txt) is still drawn from what
# finished, and the next table starts; running the script again retries them.
# Commit each finished run folder (config.json, metrics.jsonl, summary.json,
# point.json, reused.json; checkpoints are ignored) and the tables as they end.
#
#   records/peerhub-cpu/run_ablations.sh                 # everything
#   DRY_RUN=1 records/peerhub-cpu/run_ablations.sh       # the sweeps' commands and copies only
#   TABLES="table4 table8" JOBS=1 records/peerhub-cpu/run_ablations.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-data/peerhub}
OUT=records/peerhub-cpu/ablations
TABLE9=records/peerhub-cpu/table9
TABLES=${TABLES:-"table2 table3 table4 table5 table6 table7 table8"}
THREADS=${THREADS:-1}
COST=figures/benchmarks/contrastive_cost.json
DRY=${DRY_RUN:+--dry-run}

declare -A GRID=([table2]=table2_lr [table3]=table3_contrastive_weight
                 [table4]=table4_unsup_weight [table5]=table5_sampling [table6]=table6_anchors
                 [table7]=table7_rep_source [table8]=table8_losses)
declare -A NOTEBOOK=([table2]=02_ablation_lr [table3]=03_ablation_contrastive_weight
                     [table4]=04_ablation_unsup_weight [table5]=05_ablation_sampling
                     [table6]=06_ablation_anchors [table7]=07_ablation_rep_source
                     [table8]=08_ablation_losses)
declare -A SEEDS=([table2]="0" [table3]="0" [table4]="0 1" [table5]="0 1" [table6]="0"
                  [table7]="0 1" [table8]="0 1")

if [ -z "$DRY" ]; then
  [ -d "$DATA" ] || .venv/bin/semiseg prepare --dataset peerhub \
      --source ../shared/data/peerhub_crack_spalling --out "$DATA"
  mkdir -p "$OUT"
fi
for table in $TABLES; do
  [ -n "${GRID[$table]:-}" ] || { echo "unknown table $table (table2 ... table8)" >&2; exit 2; }
  seeds_var="SEEDS_$table"
  seeds=${!seeds_var:-${SEEDS[$table]}}
  reuse=(--reuse "$TABLE9")
  [ -d "$OUT" ] && reuse+=(--reuse "$OUT")
  echo "=== $table: grids/${GRID[$table]}.yaml, seeds $seeds"
  .venv/bin/semiseg sweep --data "$DATA" --root "$OUT/$table/runs" --profile cpu \
      --fractions 0.05 --seeds $seeds --grid "grids/${GRID[$table]}.yaml" "${reuse[@]}" \
      --jobs "${JOBS:-1}" threads="$THREADS" $DRY || [ -z "$DRY" ]   # a dry run stops on errors
  [ -z "$DRY" ] || continue
  if [ "$table" = table6 ] && [ ! -f "$COST" ]; then
    .venv/bin/python benchmarks/contrastive_cost.py --profile cpu --threads "$THREADS" --json "$COST"
  fi
  # the sweep above trained or copied every point: the notebook only draws
  .venv/bin/semiseg notebook "notebooks/${NOTEBOOK[$table]}.py" \
      --executed "$OUT/$table/${NOTEBOOK[$table]}.ipynb" \
      -p profile cpu -p data_dir "$DATA" -p label_fraction 0.05 \
      -p seeds "[${seeds// /, }]" -p grid "grids/${GRID[$table]}.yaml" \
      -p runs_dir "$OUT/$table/runs" -p reuse_roots "[]" -p run false \
      -p output_dir "figures/ablations/$table"
done
