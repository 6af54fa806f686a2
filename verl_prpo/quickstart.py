"""Quickstart: train a tiny policy with PRPO (or GRPO, PRL, SPRO, PRM-Avg) on this machine's CPU.

    python -m verl_prpo.quickstart --estimator prpo --steps 4

Builds the tiny local assets (tokenizer, random Qwen2 policy, random token-classification PRM, arithmetic data)
once, then runs verl's own ``python -m verl.trainer.main_ppo`` in CPU mode with the plugin's ``prpo_trainer_cpu``
config: rollout, reward, PRM worker group, old/ref log-probs, the estimator and the actor update, printing verl's
per-step metrics. Anything after ``--`` is passed to Hydra unchanged (e.g. ``-- algorithm.prpo.k=3``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

# the quickstart is CPU mode by definition; set before verl is imported so this process resolves the cpu platform too
os.environ.setdefault("VERL_PLATFORM", "cpu")

from verl_prpo.assets import DEFAULT_CACHE_DIR, build_tiny_assets  # noqa: E402

ESTIMATORS = ("prpo", "grpo", "prl", "spro", "prm_avg", "pure")


def build_command(estimator: str, *, assets_dir: Path | str = DEFAULT_CACHE_DIR, steps: int = 2,
                  out_dir: Path | str | None = None, extra: list[str] | None = None,
                  metrics_file: Path | str | None = None, python: str = sys.executable) -> tuple[list[str], dict[str, str]]:
    """The ``main_ppo`` command line and environment of a CPU-mode run (assets are built if missing)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"--estimator must be one of {ESTIMATORS}, got {estimator!r}")
    from verl_prpo.conf import CONFIG_DIR
    from verl_prpo.cpu import toy_reward

    a = build_tiny_assets(assets_dir)
    out = Path(out_dir or Path(a.root) / "runs" / estimator).resolve()
    overrides = [
        f"algorithm.adv_estimator={estimator}",
        f"data.train_files={a.train_parquet}",
        f"data.val_files={a.val_parquet}",
        f"actor_rollout_ref.model.path={a.policy_dir}",
        f"trainer.total_training_steps={steps}",
        f"trainer.default_local_dir={out / 'checkpoints'}",
        "trainer.project_name=verl_prpo_quickstart",
        f"trainer.experiment_name={estimator}",
        f"reward.custom_reward_function.path={toy_reward.__file__}",
        "reward.custom_reward_function.name=compute_score",
    ]
    if estimator in ("prpo", "prm_avg", "pure"):
        overrides += ["prm.enable=true", f"prm.model_path={a.prm_dir}", "prm.adapter=token_classification"]
    if metrics_file is not None:
        # verl's "file" logger writes one JSON line per step to VERL_FILE_LOGGER_PATH (read in the TaskRunner)
        metrics_file = str(Path(metrics_file).resolve())
        overrides += ["trainer.logger=[console,file]",
                      f"+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={metrics_file}"]
    if estimator == "prl":
        overrides += ["algorithm.prl.step_len=8"]  # 32-token responses: 4 steps
    # an override given in ``extra`` replaces the quickstart's own value for the same key
    extra = list(extra or [])
    extra_keys = {e.split("=", 1)[0].lstrip("+~") for e in extra}
    overrides = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in extra_keys]
    cmd = [python, "-m", "verl.trainer.main_ppo", f"--config-path={CONFIG_DIR}", "--config-name=prpo_trainer_cpu",
           *overrides, *extra]
    env = dict(os.environ)
    env["VERL_PLATFORM"] = "cpu"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("RAY_DEDUP_LOGS", "1")
    if metrics_file is not None:
        env["VERL_FILE_LOGGER_PATH"] = str(metrics_file)
    return cmd, env


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--estimator", default="prpo", choices=ESTIMATORS)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--assets", default=str(DEFAULT_CACHE_DIR), help="where the tiny assets are built/cached")
    p.add_argument("--out", default=None, help="run folder (checkpoints)")
    p.add_argument("--metrics-file", default=None, help="also write verl's per-step metrics as JSON lines here")
    p.add_argument("--dry-run", action="store_true", help="print the command and exit")
    args = p.parse_args(argv)
    cmd, env = build_command(args.estimator, assets_dir=args.assets, steps=args.steps, out_dir=args.out, extra=extra,
                             metrics_file=args.metrics_file)
    print("VERL_PLATFORM=cpu " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    if args.dry_run:
        return 0
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    raise SystemExit(main())
