#!/usr/bin/env bash
# GRPO baseline (PRPO paper's setting without the PRM) on Qwen2.5-Math-1.5B.
# Config: recipes/config/grpo_qwen2.5-math-1.5b.yaml (paper values and their sources are commented there).
#
#   bash recipes/grpo/run_grpo.sh [--dry-run] [hydra overrides...]
#
# Prepares nothing: data must already be in DATA_DIR (recipes/README.md, "Data"). Environment, with defaults:
#   MODEL_PATH=Qwen/Qwen2.5-Math-1.5B
#   (no PRM: PRM_PATH is ignored)
#   DATA_DIR=<repo>/data/prepared/prpo   (MATH minus MATH500 + MATH500/AMC23/AIME24/AIME25, TEMPLATE=prpo)
#   NNODES=1  GPUS_PER_NODE=8  (trainer nodes/GPUs; scripts/slurm/ray_on_slurm.sbatch sets them)
#   CKPT_DIR, LOG_DIR, PYTHON: see recipes/common.sh
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../common.sh
source "$HERE/../common.sh"

math_setting_launch "$RECIPES_DIR/config" grpo_qwen2.5-math-1.5b Qwen/Qwen2.5-Math-1.5B noprm -- "$@"
