#!/usr/bin/env bash
# Beside Table 9 of record (issue 11): is UniMatch's shortfall the shared
# optimiser? UniMatch and the control (its network trained supervised) at 5 %
# labels, cpu profile, full budget, fast path, trained with UniMatch's own SGD
# recipe (grids/unimatch_optimiser.yaml); the shared-AdamW points are Table 9's
# runs, copied, not retrained. Resumable and idempotent like every sweep:
# finished points are skipped. SEEDS (default "0") picks the seeds.
# Commit each finished run folder (no checkpoints); `python -m
# semiseg_helpers.readme_tables` then writes the README's table from them.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-data/peerhub}
SEEDS=${SEEDS:-0}
[ -d "$DATA" ] || .venv/bin/semiseg prepare --dataset peerhub \
    --source ../shared/data/peerhub_crack_spalling --out "$DATA"
.venv/bin/semiseg sweep --data "$DATA" --root records/peerhub-cpu/diagnostics/unimatch-optimiser \
    --profile cpu --methods unimatch supervised --fractions 0.05 --seeds $SEEDS \
    --grid grids/unimatch_optimiser.yaml --reuse records/peerhub-cpu/table9 \
    --jobs "${JOBS:-1}" threads="${THREADS:-1}" ${DRY_RUN:+--dry-run}
