#!/usr/bin/env bash
# PRPO (arXiv 2601.07182) on Qwen2.5-Math-7B with Qwen2.5-Math-PRM-7B.
# Config: recipes/config/prpo_qwen2.5-math-7b.yaml (paper values and their sources are commented there).
#
#   bash recipes/prpo/run_prpo_7b.sh [--dry-run] [hydra overrides...]
#
# Prepares nothing: data must already be in DATA_DIR (recipes/README.md, "Data"). Environment, with defaults:
#   MODEL_PATH=Qwen/Qwen2.5-Math-7B
#   PRM_PATH=Qwen/Qwen2.5-Math-PRM-7B
#   DATA_DIR=<repo>/data/prepared/prpo   (MATH minus MATH500 + MATH500/AMC23/AIME24/AIME25, TEMPLATE=prpo)
#   NNODES=1  GPUS_PER_NODE=8  (trainer nodes/GPUs; scripts/slurm/ray_on_slurm.sbatch sets them)
#   CKPT_DIR, LOG_DIR, PYTHON: see recipes/common.sh
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../common.sh
source "$HERE/../common.sh"

math_setting_launch "$RECIPES_DIR/config" prpo_qwen2.5-math-7b Qwen/Qwen2.5-Math-7B prm -- "$@"
