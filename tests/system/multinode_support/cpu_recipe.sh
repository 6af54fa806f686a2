#!/usr/bin/env bash
# Test-only recipe for scripts/slurm/ray_on_slurm.sbatch: a CPU-mode run (VERL_PLATFORM=cpu, the plugin's
# prpo_trainer_cpu config, logical Ray GPUs as device slots) launched through recipes/common.sh like the real recipes
# (which need GPUs and 1.5B-7B models). The model, data and steps come as Hydra overrides in the arguments.
#
# The Ray cluster already exists (RAY_ADDRESS, set by the sbatch script), so ray.init() must not get num_cpus or
# num_gpus (the CPU config sets both for the local cluster it otherwise starts): they are set to null here.
# With RAY_ACTORS_OUT set, the cluster's nodes and actors (where each worker ran) are written there after the run.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../../../recipes/common.sh
source "$HERE/../../../recipes/common.sh"
export VERL_PLATFORM=cpu
CONF_DIR="$("${PYTHON:-python}" -c 'from verl_prpo.conf import CONFIG_DIR; print(CONFIG_DIR)')" || exit 2

rc=0
( recipe_launch "$CONF_DIR" prpo_trainer_cpu ray_kwargs.ray_init.num_cpus=null ray_kwargs.ray_init.num_gpus=null \
    -- "$@" ) || rc=$?
for a in "$@"; do [[ "$a" == "--dry-run" ]] && exit "$rc"; done
if [[ -n "${RAY_ACTORS_OUT:-}" ]]; then
  "${PYTHON:-python}" "$HERE/ray_actors.py" "$RAY_ADDRESS" "$RAY_ACTORS_OUT" > /dev/null || { [[ $rc -ne 0 ]] || rc=3; }
fi
exit "$rc"
