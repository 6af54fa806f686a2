#!/usr/bin/env bash
# Create .venv and install verl-prpo with its test tools. The CPU torch wheel goes in FIRST, so that
# nothing pulls a multi-GB CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c "import verl, verl_prpo; from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY as R; assert all(n in R for n in ('prpo','prl','spro','prm_avg')), 'plugin not registered'; print('verl', verl.__version__, '+ verl-prpo', verl_prpo.__version__, 'ready')"
