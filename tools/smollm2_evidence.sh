#!/usr/bin/env bash
# The SmolLM2 evidence of docs/results.md: the base model and one GRPO and one iGRPO run of the recipes
# conf/smollm2_word_arith_{grpo,igrpo}.yaml (20 steps each, one after the other), each evaluated single-shot on the
# same held-out problems (200 test problems x 4 samples, T 0.7, the recipes' prompt), then the held-out rates.
#   bash tools/smollm2_evidence.sh [OUT_DIR]            (default: runs/smollm2)
# IGRPO: the igrpo command (default: `igrpo`); with the vLLM CPU venv, IGRPO=.venv-vllm/bin/igrpo BACKEND=vllm
# (both training and evaluation generate with vLLM); BACKEND=hf (default) works in every install.
set -euo pipefail
OUT=${1:-runs/smollm2}
IGRPO=${IGRPO:-igrpo}
BACKEND=${BACKEND:-hf}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}

[[ -f $OUT/SmolLM2-135M-Instruct/config.json ]] || $IGRPO prepare-model smollm2-135m-instruct --output "$OUT/SmolLM2-135M-Instruct"
# The recipes' one-shot system message: evaluation asks exactly what training asked.
SYSTEM=$($PY -c 'from nemo_igrpo.config import load_config; print(load_config("conf/smollm2_word_arith_grpo.yaml").data.system_prompt)')
evaluate() {  # MODEL_DIR OUT_DIR
  [[ -f $2/summary.json ]] || $IGRPO evaluate --model "$1" --backend "$BACKEND" --dtype float32 \
    --data word_test=conf/data/word_arith/test.jsonl --datasets word_test --k 4 --temperature 0.7 --top-p 1.0 \
    --max-new-tokens 64 --prompt boxed --system-prompt "$SYSTEM" --output "$2" >/dev/null
}
log() { echo "$1 $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/times.txt"; }
evaluate "$OUT/SmolLM2-135M-Instruct" "$OUT/eval_base"
for method in grpo igrpo; do
  log "train $method start"
  $IGRPO train --config "conf/smollm2_word_arith_$method.yaml" "policy.model_path=$OUT/SmolLM2-135M-Instruct" \
    "trainer.output_dir=$OUT/$method" "generation.backend=$BACKEND" trainer.resume=true trainer.progress_bar=false
  log "train $method end"
  evaluate "$OUT/$method/hf" "$OUT/eval_$method"
done
$PY tools/heldout_rates.py "$OUT/eval_base" "$OUT/eval_grpo" "$OUT/eval_igrpo" | tee "$OUT/heldout.md"
