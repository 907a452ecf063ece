#!/usr/bin/env bash
# Megatron dist checkpoint (ours, or a trainer checkpoint step_N[/policy]) -> HF directory
# (thin wrapper around `igrpo convert megatron-to-hf`).
#
#   tools/convert_megatron_to_hf.sh MEGATRON_DIR ORIGINAL_HF_DIR OUT_DIR [--dtype bf16|fp32] [--overwrite]
#
# ORIGINAL_HF_DIR supplies config.json and the tokenizer files. See docs/conversion.md.
set -euo pipefail
if [[ $# -lt 3 || $1 == -* || $2 == -* || $3 == -* ]]; then
  echo "usage: $0 MEGATRON_DIR ORIGINAL_HF_DIR OUT_DIR [--dtype bf16|fp32] [--overwrite]" >&2
  exit 2
fi
mg=$1 hf=$2 out=$3
shift 3
exec "${IGRPO:-igrpo}" convert megatron-to-hf --megatron "$mg" --hf-config "$hf" --out "$out" "$@"
