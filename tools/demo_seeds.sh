#!/usr/bin/env bash
# The multi-seed iGRPO vs GRPO comparison on the demo task (docs/results.md): one warm start, then GRPO (8 rollouts)
# and iGRPO (4 drafts + 4 refinements) at the same budget for each seed, single-shot evaluation of every trained
# policy on the test split (avg@8 at T=0.6, top-p 0.95, plus greedy), and `igrpo compare` over all runs.
#   bash tools/demo_seeds.sh [OUT_DIR] [SEEDS...]      (default: runs/seeds, seeds 1 2 3)
set -euo pipefail
OUT=${1:-runs/seeds}
if [[ $# -gt 1 ]]; then SEEDS=("${@:2}"); else SEEDS=(1 2 3); fi
IGRPO=${IGRPO:-igrpo}

[[ -f $OUT/sft/config.json ]] || $IGRPO sft --output "$OUT/sft" --config conf/demo_igrpo.yaml --eval-limit 0
TEST="$OUT/sft/data/test.jsonl"
# 25 problems x 8 samples per generate() call keeps the HF generator's batch full.
# --prompt boxed: the demo model was trained on the training prompt (the evaluation default is NeMo-Skills' order).
EVAL=(--data "demo_test=$TEST" --datasets demo_test --max-new-tokens 96 --max-batch-sequences 200 --problems-per-call 25
      --prompt boxed)
evaluate() {  # MODEL_DIR OUT_DIR: avg@8 at T=0.6 / top-p 0.95 (the NeMo-Skills sampling) into OUT_DIR, greedy beside it
  $IGRPO evaluate --model "$1" "${EVAL[@]}" --k 8 --output "$2" >/dev/null
  $IGRPO evaluate --model "$1" "${EVAL[@]}" --k 1 --temperature 0 --top-p 1 --output "$2_greedy" >/dev/null
}
evaluate "$OUT/sft" "$OUT/sft_eval"   # the warm start both methods begin from
runs=()
for seed in "${SEEDS[@]}"; do
  for method in grpo igrpo; do
    run="$OUT/${method}_seed$seed"
    $IGRPO train --config "conf/demo_$method.yaml" "policy.model_path=$OUT/sft" "trainer.output_dir=$run" \
      "trainer.seed=$seed" "data.seed=$seed" trainer.resume=true trainer.progress_bar=false
    # `igrpo compare` reads eval/summary.json: the sampled protocol (avg@8) is the headline number.
    evaluate "$run/hf" "$run/eval"
    runs+=("$run")
  done
done
$IGRPO compare "${runs[@]}" --output "$OUT/compare"
echo "report: $OUT/compare/report.md"
