#!/usr/bin/env bash
# Convert a verl actor checkpoint into a Hugging Face model directory with verl's own model merger.
#
#   scripts/merge_checkpoint.sh CKPT_DIR [TARGET_DIR] [BACKEND]
#
# CKPT_DIR    .../global_step_<N>/actor  (or .../global_step_<N>, then /actor is appended)
# TARGET_DIR  default: <CKPT_DIR>/../hf  (i.e. .../global_step_<N>/hf)
# BACKEND     fsdp (default) or megatron
#
# Then evaluate:  python -m verl_prpo.evaluation.cli --model TARGET_DIR --data ... --out-dir ...
set -euo pipefail

if [[ $# -lt 1 ]]; then
  sed -n '2,10p' "$0"
  exit 2
fi
CKPT="${1%/}"
if [[ -d "$CKPT/actor" ]]; then CKPT="$CKPT/actor"; fi
if [[ ! -d "$CKPT" ]]; then
  echo "error: checkpoint folder not found: $CKPT" >&2
  exit 2
fi
TARGET="${2:-$(dirname "$CKPT")/hf}"
BACKEND="${3:-fsdp}"
if [[ -z "${PYTHON:-}" ]]; then
  ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
echo "merging $CKPT -> $TARGET ($BACKEND)"
"$PYTHON" -m verl.model_merger merge --backend "$BACKEND" --local_dir "$CKPT" --target_dir "$TARGET"
echo "done: $TARGET"
