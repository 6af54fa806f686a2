#!/usr/bin/env bash
# Fresh machine -> a tiny policy training with PRPO on the CPU, printing verl's per-step metrics.
#   bash scripts/quickstart.sh [--estimator prpo|grpo|prl|spro|prm_avg] [--steps N] [-- hydra overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m verl_prpo.quickstart "$@"
