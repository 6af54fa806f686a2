#!/usr/bin/env bash
# Fresh machine -> a small policy learning multi-step arithmetic with PRPO on the CPU (held-out accuracy printed
# as it trains, a summary and a PNG of the curves at the end). The testbed is built on first use and cached.
#   bash scripts/quickstart.sh [--estimator prpo|grpo|prl|spro|prm_avg|pure] [--steps N] [--world-size N] [-- hydra overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m examples.credit_assignment.quickstart "$@"
