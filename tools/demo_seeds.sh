#!/usr/bin/env bash
# The demo over several seeds (docs/results.md): one full `igrpo demo --seed S` per seed (its own warm start, GRPO
# with 8 rollouts and iGRPO with 4 drafts + 4 refinements at the same budget, single-shot test evaluation of all
# three), the Stage-2 probe of each seed's models (how they use a draft: demo/refinement_probe.py), then the
# multi-seed summary: OUT/summary/seeds.md and its plots.
#   bash tools/demo_seeds.sh [OUT_DIR] [SEEDS...]      (default: runs/seeds, seeds 0 1 2)
# A seed whose demo finished is not rerun; an interrupted one resumes (igrpo demo resumes its training runs).
set -euo pipefail
OUT=${1:-runs/seeds}
if [[ $# -gt 1 ]]; then SEEDS=("${@:2}"); else SEEDS=(0 1 2); fi
IGRPO=${IGRPO:-igrpo}
PYTHON=${PYTHON:-python}

dirs=()
for seed in "${SEEDS[@]}"; do
  dir="$OUT/seed$seed"
  [[ -f $dir/summary.json ]] || $IGRPO demo --output "$dir" --seed "$seed" trainer.progress_bar=false
  [[ -f $dir/refinement_probe.json ]] || $PYTHON -m nemo_igrpo.demo.refinement_probe "$dir"
  dirs+=("$dir")
done
$PYTHON -m nemo_igrpo.demo.seeds "$OUT/summary" "${dirs[@]}"
