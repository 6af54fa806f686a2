#!/usr/bin/env bash
# PRL (arXiv 2601.10201) on Qwen2.5-Math-1.5B (no PRM).
# Config: recipes/config/prl_qwen2.5-math-1.5b.yaml (paper values and their sources are commented there).
#
#   bash recipes/prl/run_prl.sh [--dry-run] [hydra overrides...]
#
# Prepares nothing: data must already be in DATA_DIR (recipes/README.md, "Data"). Environment, with defaults:
#   MODEL_PATH=Qwen/Qwen2.5-Math-1.5B
#   (no PRM: PRM_PATH is ignored)
#   DATA_DIR=<repo>/data/prepared/prl   (NuminaMath-1.5 + MATH500/Minerva/OlympiadBench/AMC23/AIME24, TEMPLATE=prl)
#   NNODES=1  GPUS_PER_NODE=8  (trainer nodes/GPUs; scripts/slurm/ray_on_slurm.sbatch sets them)
#   CKPT_DIR, LOG_DIR, PYTHON: see recipes/common.sh
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../common.sh
source "$HERE/../common.sh"

MODEL_PATH="${MODEL_PATH:-Qwen/Qwen2.5-Math-1.5B}"
DATA_DIR="${DATA_DIR:-$RECIPES_REPO_ROOT/data/prepared/prl}"

recipe_launch "$RECIPES_DIR/config" prl_qwen2.5-math-1.5b \
  "data.train_files=$(hq "$DATA_DIR/numina_math_1_5_train.parquet")" \
  "data.val_files=$(hlist "$DATA_DIR"/{math500,minerva_math,olympiadbench,amc23,aime24}.parquet)" \
  "actor_rollout_ref.model.path=$(hq "$MODEL_PATH")" \
  -- "$@"
