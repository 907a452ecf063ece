#!/usr/bin/env bash
# HF safetensors directory -> Megatron dist checkpoint (thin wrapper around `igrpo convert hf-to-megatron`).
#
#   tools/convert_hf_to_megatron.sh HF_DIR OUT_DIR [--tp N --pp M] [--overwrite]
#
# Runs as one CPU process; --tp/--pp are checked against the model (the checkpoint reshards when loaded).
# See docs/conversion.md.
set -euo pipefail
if [[ $# -lt 2 || $1 == -* || $2 == -* ]]; then
  echo "usage: $0 HF_DIR OUT_DIR [--tp N] [--pp M] [--overwrite]" >&2
  exit 2
fi
hf=$1 out=$2
shift 2
exec "${IGRPO:-igrpo}" convert hf-to-megatron --hf "$hf" --out "$out" "$@"
