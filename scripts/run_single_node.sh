#!/usr/bin/env bash
# Run a recipe on one GPU machine (default 8 GPUs), with a local Ray cluster started by verl itself.
#
#   bash scripts/run_single_node.sh RECIPE_SCRIPT [--dry-run] [hydra overrides...]
#   e.g. bash scripts/run_single_node.sh recipes/prpo/run_prpo_1.5b.sh trainer.total_epochs=1
#
# Environment (optional):
#   GPUS_PER_NODE  GPUs to use (default: the number `nvidia-smi -L` lists, else 8)
#   PRM_PLACEMENT  colocate (default: the PRM shares the actor's GPUs, offloaded between calls) or own_pool
#   PRM_GPUS       with own_pool: GPUs given to the PRM (default GPUS_PER_NODE / 2, i.e. 4 of 8); the trainer
#                  gets GPUS_PER_NODE - PRM_GPUS, which must divide ppo_mini_batch_size x rollout.n (1024 in the
#                  PRPO recipes: 4 + 4 works, 7 + 1 and 6 + 2 do not; prpo_sync refuses them at start-up)
#   MODEL_PATH, PRM_PATH, DATA_DIR, CKPT_DIR, LOG_DIR, PYTHON: passed through to the recipe (recipes/common.sh)
#   DRY_RUN=1      same as --dry-run: print the final command and exit 0
# PRM_PLACEMENT only matters for recipes with a PRM (prpo, prm_avg, prpo_ablations); with the others, own_pool
# would leave GPUs idle, so keep the default.
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,18p' "$0"
  [[ $# -ge 1 ]] && exit 0
  exit 2
fi
RECIPE="$1"
shift
if [[ ! -f "$RECIPE" ]]; then
  echo "error: recipe script not found: $RECIPE" >&2
  exit 2
fi

if [[ -z "${GPUS_PER_NODE:-}" ]]; then
  GPUS_PER_NODE=8
  if command -v nvidia-smi >/dev/null 2>&1; then
    n="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)"
    if [[ "$n" =~ ^[0-9]+$ && "$n" -gt 0 ]]; then GPUS_PER_NODE="$n"; fi
  fi
fi

PRM_PLACEMENT="${PRM_PLACEMENT:-colocate}"
PRM_ARGS=()
TRAINER_GPUS="$GPUS_PER_NODE"
case "$PRM_PLACEMENT" in
  colocate)
    PRM_ARGS=(prm.placement=colocate)
    ;;
  own_pool)
    PRM_GPUS="${PRM_GPUS:-$((GPUS_PER_NODE / 2))}"
    if ! [[ "$PRM_GPUS" =~ ^[0-9]+$ ]] || (( PRM_GPUS < 1 || PRM_GPUS >= GPUS_PER_NODE )); then
      echo "error: PRM_GPUS=$PRM_GPUS must be between 1 and GPUS_PER_NODE-1 ($((GPUS_PER_NODE - 1)))" >&2
      exit 2
    fi
    TRAINER_GPUS=$((GPUS_PER_NODE - PRM_GPUS))
    PRM_ARGS=(prm.placement=own_pool prm.nnodes=1 "prm.n_gpus_per_node=$PRM_GPUS")
    ;;
  *)
    echo "error: PRM_PLACEMENT must be colocate or own_pool, got '$PRM_PLACEMENT'" >&2
    exit 2
    ;;
esac

# A RAY_ADDRESS left in the environment would make verl join that cluster instead of starting a local one.
unset RAY_ADDRESS
export NNODES=1 GPUS_PER_NODE="$TRAINER_GPUS"
exec bash "$RECIPE" "${PRM_ARGS[@]}" "$@"
