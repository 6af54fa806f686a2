# Shared launcher for recipes/*/run_*.sh (sourced by them, never executed on its own).
#
# A run script prepares nothing: it turns the environment into Hydra overrides and runs
#   $PYTHON -m verl.trainer.main_ppo --config-path <recipe dir> --config-name <recipe yaml> <overrides> "$@"
#
# Environment read by the run scripts (all optional):
#   MODEL_PATH     policy model, local directory or hub name       (default: the recipe's paper model)
#   PRM_PATH       process reward model (recipes with a PRM only)  (default: Qwen/Qwen2.5-Math-PRM-7B)
#   DATA_DIR       folder with the prepared parquet files           (default: <repo>/data/prepared/<template>)
#   NNODES         trainer nodes                                    (default: 1)
#   GPUS_PER_NODE  GPUs per trainer node                            (default: 8)
#   CKPT_DIR       checkpoint folder (trainer.default_local_dir)    (default: verl's checkpoints/<project>/<experiment>)
#   LOG_DIR        root of verl's `file` logger, which writes <LOG_DIR>/<project>/<experiment>.jsonl
#                                                                   (default: ./logs, made absolute)
#   PYTHON         interpreter                                      (default: python)
#   DRY_RUN=1      same as --dry-run
# Arguments: --dry-run (anywhere) prints the final command and exits 0; every other argument is a Hydra override
# appended after the recipe's own, so it wins (Hydra keeps the last value of a repeated key).

RECIPES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RECIPES_REPO_ROOT="$(cd "$RECIPES_DIR/.." && pwd)"

# hq VALUE: VALUE as a Hydra override value: bare for plain paths and hub names (letters, digits, _ . / -, at least
# one '/'), else double-quoted (spaces, '=', ',' ...). A double quote in a value is not supported.
hq() {
  if [[ "$1" == *'"'* ]]; then
    echo "error: a double quote in a path is not supported: $1" >&2
    return 2
  fi
  if [[ "$1" =~ ^[A-Za-z0-9_./-]+$ && "$1" == */* ]]; then
    printf '%s' "$1"
  else
    printf '"%s"' "$1"
  fi
}

# hlist VALUE...: a Hydra list of values quoted as by hq, e.g. [/d/a.parquet,/d/b.parquet].
hlist() {
  local out="" v q
  for v in "$@"; do
    q="$(hq "$v")" || return 2
    out+="${out:+,}$q"
  done
  printf '[%s]' "$out"
}

# shell_quote ARG: ARG quoted for copy-and-paste into bash (plain when it needs no quoting).
shell_quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=+@%,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# recipe_launch CONFIG_DIR CONFIG_NAME RECIPE_OVERRIDE... -- USER_ARG...
recipe_launch() {
  local config_dir="$1" config_name="$2"
  shift 2
  local -a recipe_args=() user_args=()
  while [[ $# -gt 0 && "$1" != "--" ]]; do recipe_args+=("$1"); shift; done
  if [[ $# -gt 0 ]]; then shift; fi  # the "--"
  local dry_run="${DRY_RUN:-0}" a
  for a in "$@"; do
    if [[ "$a" == "--dry-run" ]]; then dry_run=1; else user_args+=("$a"); fi
  done

  local nnodes="${NNODES:-1}" gpus="${GPUS_PER_NODE:-8}"
  local log_dir="${LOG_DIR:-logs}"
  [[ "$log_dir" = /* ]] || log_dir="$PWD/$log_dir"
  local -a cmd=(
    "${PYTHON:-python}" -m verl.trainer.main_ppo
    --config-path "$config_dir" --config-name "$config_name"
    "trainer.nnodes=$nnodes" "trainer.n_gpus_per_node=$gpus"
    # runtime_env reaches the TaskRunner actor, where verl's file logger is created
    "++ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_ROOT=$(hq "$log_dir")"
  )
  if [[ -n "${CKPT_DIR:-}" ]]; then cmd+=("trainer.default_local_dir=$(hq "$CKPT_DIR")"); fi
  if [[ ${#recipe_args[@]} -gt 0 ]]; then cmd+=("${recipe_args[@]}"); fi
  if [[ ${#user_args[@]} -gt 0 ]]; then cmd+=("${user_args[@]}"); fi

  if [[ "$dry_run" == "1" ]]; then
    local out="" x
    for x in "${cmd[@]}"; do out+="${out:+ }$(shell_quote "$x")"; done
    printf '%s\n' "$out"
    return 0
  fi
  exec "${cmd[@]}"
}

# Launch a recipe in the PRPO paper's data setting: MATH minus MATH500 for training; MATH500, AMC23, AIME24 and
# AIME25 for validation (GRPO, PRPO, PRM-Avg, the ablations and SPRO all use it, so they compare like for like).
#   math_setting_launch <recipe dir> <config name> <default model> <prm|noprm> [-- user args...]
# Reads MODEL_PATH, DATA_DIR (default <repo>/data/prepared/prpo) and, with "prm", PRM_PATH.
math_setting_launch() {
  local config_dir="$1" config_name="$2" default_model="$3" with_prm="$4"
  shift 4
  if [[ "${1:-}" == "--" ]]; then shift; fi
  local model="${MODEL_PATH:-$default_model}"
  local data="${DATA_DIR:-$RECIPES_REPO_ROOT/data/prepared/prpo}"
  local -a args=(
    "data.train_files=$(hq "$data/math_train.parquet")"
    "data.val_files=$(hlist "$data"/{math500,amc23,aime24,aime25}.parquet)"
    "actor_rollout_ref.model.path=$(hq "$model")"
  )
  if [[ "$with_prm" == "prm" ]]; then
    args+=("prm.model_path=$(hq "${PRM_PATH:-Qwen/Qwen2.5-Math-PRM-7B}")")
  fi
  recipe_launch "$config_dir" "$config_name" "${args[@]}" -- "$@"
}
