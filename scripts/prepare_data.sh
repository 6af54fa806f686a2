#!/usr/bin/env bash
# Prepare every local math dataset as verl RL parquet.
#
#   scripts/prepare_data.sh DATA_DIR [OUT_DIR]
#
# DATA_DIR  folder with train/ and eval/ JSON Lines files (first argument or $DATA_DIR; required)
# OUT_DIR   where the parquet files go (default: data/prepared)
# Environment: TEMPLATE (default qwen_boxed), PYTHON (default: .venv/bin/python if present, else python),
#              LIMIT (optional, keep at most N rows per dataset; for smoke tests).
#
# Produces: math_train.parquet (MATH minus MATH500), gsm8k_train.parquet, and <name>.parquet for
# math500, gsm8k, aime24, aime25, amc23, minerva_math, olympiadbench.
# NuminaMath-1.5 (PRL's training prompts) is hub-only:
#   python -m verl_prpo.data.cli --dataset numina_math_1_5 --out $OUT_DIR/numina_math_1_5_train.parquet
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DATA_DIR="${1:-${DATA_DIR:-}}"
if [[ -z "$DATA_DIR" ]]; then
  echo "error: no data folder: pass a folder with train/ and eval/ JSON Lines files as the first argument" >&2
  exit 2
fi
OUT_DIR="${2:-${OUT_DIR:-data/prepared}}"
TEMPLATE="${TEMPLATE:-qwen_boxed}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
EXTRA=()
if [[ -n "${LIMIT:-}" ]]; then EXTRA+=(--limit "$LIMIT"); fi

if [[ ! -d "$DATA_DIR" ]]; then
  echo "error: data folder not found: $DATA_DIR (pass it as the first argument)" >&2
  exit 2
fi
mkdir -p "$OUT_DIR"

# One Python process for all datasets (importing verl_prpo imports verl, which takes a while).
"$PYTHON" - "$DATA_DIR" "$OUT_DIR" "$TEMPLATE" "${EXTRA[@]}" <<'PY'
import os
import sys

from verl_prpo.data.cli import main

data_dir, out_dir, template, *extra = sys.argv[1:]
jobs = [
    ("math", "train/math4500.jsonl", "train", "math_train.parquet"),
    ("gsm8k", "train/gsm8k_train.jsonl", "train", "gsm8k_train.parquet"),
    ("math500", "eval/math500.jsonl", "test", "math500.parquet"),
    ("gsm8k", "eval/gsm8k.jsonl", "test", "gsm8k.parquet"),
    ("aime24", "eval/aime24.jsonl", "test", "aime24.parquet"),
    ("aime25", "eval/aime25.jsonl", "test", "aime25.parquet"),
    ("amc23", "eval/amc23.jsonl", "test", "amc23.parquet"),
    ("minerva_math", "eval/minerva_math.jsonl", "test", "minerva_math.parquet"),
    ("olympiadbench", "eval/olympiadbench.jsonl", "test", "olympiadbench.parquet"),
]
failed = []
for dataset, rel, split, out in jobs:
    src = os.path.join(data_dir, rel)
    if not os.path.isfile(src):
        print(f"skip {dataset}: {src} not found", file=sys.stderr)
        continue
    rc = main(["--dataset", dataset, "--source", src, "--split", split, "--template", template,
               "--out", os.path.join(out_dir, out), "--no-progress", *extra])
    if rc:
        failed.append(dataset)
if failed:
    sys.exit(f"failed: {failed}")
PY
echo "done: $OUT_DIR"
