"""Quickstart: watch a small policy learn multi-step arithmetic with PRPO (or GRPO, PRL, SPRO, PRM-Avg, PURE) on CPU.

    python -m examples.credit_assignment.quickstart --estimator prpo --steps 20

Builds the credit-assignment testbed once (``examples.credit_assignment.build``: a tokenizer with single-digit tokens, a small
Qwen2 policy trained on a noisy solver's solutions, a PRM trained on step labels; cached), then runs verl's own
``python -m verl.trainer.main_ppo`` in CPU mode with the plugin's ``prpo_trainer_cpu`` config: rollout, the ``prpo``
reward manager, the PRM worker group, old/ref log-probs, the estimator and the actor update. verl's validation
measures held-out accuracy (sampled at the rollout temperature) before training and every ``--eval-every`` steps.
At the end it prints a summary (start and final accuracy, reward, time per step) and writes a PNG of the curves.
Anything after ``--`` is passed to Hydra unchanged (e.g. ``-- algorithm.prpo.k=3``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from verl_prpo.cpu.launch import (cpu_mode_env, cpu_rollout_overrides, main_ppo_command, merge_overrides,
                                   override_value, read_metrics, world_size_overrides)
from verl_prpo.estimators import estimator_names, get_estimator

#: verl's GRPO and every estimator of the plugin's registry
ESTIMATORS = ("grpo", *estimator_names())
# held-out samples per problem in verl's validation. It measures what the grid's evaluation measures (same 200 problems,
# prompt, T = 1 / top_p 1 / no top-k, EOS, 64 tokens, grading; docs/RESULTS.md) with fewer samples: mean@8 is within
# about +-2.6 points (95 %) of the policy's accuracy, mean@2 was within +-4.8; the grid uses 32 per problem
VAL_SAMPLES = 8


def build_command(estimator: str, *, testbed_dir: Path | str | None = None, steps: int = 20, eval_every: int = 5,
                  out_dir: Path | str | None = None, extra: list[str] | None = None,
                  metrics_file: Path | str | None = None, seed: int = 0, assets_dir: Path | str | None = None,
                  world_size: int = 1, python: str = sys.executable) -> tuple[list[str], dict[str, str]]:
    """The ``main_ppo`` command line and environment of a quickstart run (the testbed is built if missing).

    With ``assets_dir`` the run uses the tiny random assets and the shaped toy reward instead (plumbing tests only).
    ``world_size`` > 1 trains on that many ranks (FSDP2 over gloo, one vLLM replica per rank).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"--estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if assets_dir is not None:
        return tiny_command(estimator, assets_dir=assets_dir, steps=steps, out_dir=out_dir, extra=extra,
                            metrics_file=metrics_file, world_size=world_size, python=python)
    from examples.credit_assignment.build import DEFAULT_DIR, build_testbed
    from examples.credit_assignment.grid import DEFAULTS, train_command

    tb = build_testbed(testbed_dir or DEFAULT_DIR)
    out = Path(out_dir or tb.root / "runs" / estimator).resolve()
    val = [
        "trainer.val_before_train=true",
        f"trainer.test_freq={eval_every}",
        "actor_rollout_ref.rollout.val_kwargs.do_sample=true",
        "actor_rollout_ref.rollout.val_kwargs.temperature=1.0",
        f"actor_rollout_ref.rollout.val_kwargs.n={VAL_SAMPLES}",
        "trainer.project_name=verl_prpo_quickstart",
        f"trainer.experiment_name={estimator}",
    ]
    val += cpu_rollout_overrides()
    if world_size != 1:
        val += world_size_overrides(world_size, prompts_per_step=DEFAULTS["prompts_per_step"],
                                    prompts_per_update=DEFAULTS["prompts_per_step"] // DEFAULTS["updates_per_step"],
                                    n=DEFAULTS["n"])
    return train_command(tb, estimator, seed=seed, steps=steps, out_dir=out, save_every=None,
                         metrics_file=metrics_file, extra=merge_overrides(val, extra), python=python)


#: the tiny runs' batch (verl_prpo/conf/prpo_trainer_cpu.yaml): data.train_batch_size, ppo_mini_batch_size, rollout.n
TINY_BATCH = {"prompts_per_step": 4, "prompts_per_update": 4, "n": 4}


def tiny_command(estimator: str, *, assets_dir: Path | str, steps: int = 2, out_dir: Path | str | None = None,
                 extra: list[str] | None = None, metrics_file: Path | str | None = None, world_size: int = 1,
                 python: str = sys.executable) -> tuple[list[str], dict[str, str]]:
    """A CPU-mode run on the tiny random assets (``examples.credit_assignment.tiny_assets``) with the shaped toy reward: it exercises
    the whole loop in seconds per step but learns nothing (the end-to-end plumbing tests use it)."""
    from examples.credit_assignment import toy_reward
    from examples.credit_assignment.tiny_assets import build_tiny_assets

    a = build_tiny_assets(assets_dir)
    out = Path(out_dir or Path(a.root) / "runs" / estimator).resolve()
    overrides = [
        f"algorithm.adv_estimator={estimator}",
        f"data.train_files={a.train_parquet}",
        f"data.val_files={a.val_parquet}",
        f"actor_rollout_ref.model.path={a.policy_dir}",
        f"trainer.total_training_steps={steps}",
        f"trainer.default_local_dir={out / 'checkpoints'}",
        "trainer.project_name=verl_prpo_tiny",
        f"trainer.experiment_name={estimator}",
        f"reward.custom_reward_function.path={toy_reward.__file__}",
        "reward.custom_reward_function.name=compute_score",
    ]
    if estimator != "grpo" and get_estimator(estimator).needs_prm:
        overrides += ["prm.enable=true", f"prm.model_path={a.prm_dir}", "prm.adapter=token_classification"]
    env = cpu_mode_env(overrides, metrics_file)
    if estimator == "prl":
        overrides += ["algorithm.prl.step_len=8"]  # 32-token responses: 4 steps
    overrides += cpu_rollout_overrides()
    if world_size != 1:
        overrides += world_size_overrides(world_size, **TINY_BATCH)
    return main_ppo_command(merge_overrides(overrides, extra), python), env


def _val_key(data: dict) -> str | None:
    keys = [k for k in data if k.startswith("val-core/") and "/acc/mean@" in k]
    return keys[0] if keys else None


def summarize(records: list[dict]) -> dict:
    """Start/final held-out accuracy, first/last training reward and the mean time per step from verl's metrics."""
    val = [(r["step"], r["data"][k]) for r in records if (k := _val_key(r["data"]))]
    train = [r for r in records if "critic/score/mean" in r["data"]]
    step_times = [r["data"]["timing_s/step"] for r in train if "timing_s/step" in r["data"]]
    return {
        "val_accuracy": val,
        "start_accuracy": val[0][1] if val else None,
        "final_accuracy": val[-1][1] if val else None,
        "reward_first": train[0]["data"]["critic/score/mean"] if train else None,
        "reward_last": train[-1]["data"]["critic/score/mean"] if train else None,
        "reward": [(r["step"], r["data"]["critic/score/mean"]) for r in train],
        "time_per_step_s": sum(step_times) / len(step_times) if step_times else None,
        "steps": len(train),
    }


def plot_summary(summary: dict, path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    if summary["val_accuracy"]:
        x, y = zip(*summary["val_accuracy"])
        axes[0].plot(x, y, marker="o")
    axes[0].set(title=f"held-out accuracy (sampled, T=1, mean@{VAL_SAMPLES})", xlabel="training step")
    if summary["reward"]:
        x, y = zip(*summary["reward"])
        axes[1].plot(x, y)
    axes[1].set(title="training reward (+1 correct / -1 wrong)", xlabel="training step")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def step_line(record: dict, total_steps: int) -> str | None:
    """One compact line for a record of verl's file logger: step, training reward, held-out accuracy when this
    record has it, seconds per step. None for a record with neither."""
    data, step = record["data"], record["step"]
    val_key = _val_key(data)
    if "critic/score/mean" not in data and val_key is None:
        return None
    parts = [f"step {step:>{len(str(total_steps))}}/{total_steps}"]
    if "critic/score/mean" in data:
        parts.append(f"reward {data['critic/score/mean']:+.3f}")
    if val_key is not None:
        parts.append(f"held-out {data[val_key]:.3f}")
    if "timing_s/step" in data:
        parts.append(f"{data['timing_s/step']:.1f} s/step")
    return "  ".join(parts)


def run_with_step_lines(cmd: list[str], env: dict[str, str], out: Path, metrics_file: Path, *, total_steps: int,
                        poll_s: float = 1.0) -> int:
    """Run ``cmd`` with verl's output in ``out/train.log`` and print one line per step from verl's metrics file as
    it grows; on failure print the log's tail."""
    import time

    log_path = out / "train.log"
    print(f"training (verl's full output: {log_path}; Ray and the vLLM engine start in a minute or two) ...",
          flush=True)
    t0, offset, pending = time.time(), 0, ""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=out, stdout=log, stderr=subprocess.STDOUT)
        while True:
            rc = proc.poll()
            if metrics_file.exists():
                with open(metrics_file) as fh:
                    fh.seek(offset)
                    pending += fh.read()
                    offset = fh.tell()
                *lines, pending = pending.split("\n")
                for line in lines:
                    if line.strip() and (text := step_line(json.loads(line), total_steps)):
                        print(f"{text}  [{time.time() - t0:5.0f} s]", flush=True)
            if rc is not None:
                break
            time.sleep(poll_s)
    if rc != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        print("\n".join(tail), file=sys.stderr)
        print(f"main_ppo failed (exit code {rc}); full log: {log_path}", file=sys.stderr, flush=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    # the quickstart is CPU mode by definition. Set here, not at import: importing build_command (tests, scripts)
    # must not switch the importing process to the cpu platform
    os.environ.setdefault("VERL_PLATFORM", "cpu")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--estimator", default="prpo", choices=ESTIMATORS)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=5, help="held-out evaluation every N steps (and at step 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--world-size", type=int, default=1,
                   help="trainer ranks (logical device slots in CPU mode): FSDP2 over gloo, one vLLM replica each")
    p.add_argument("--testbed", default=None, help="where the testbed is built/cached (default ~/.cache/verl_prpo)")
    p.add_argument("--out", default=None, help="run folder (metrics, curves)")
    p.add_argument("--metrics-file", default=None, help="verl's per-step metrics as JSON lines (default: in --out)")
    p.add_argument("--dry-run", action="store_true", help="print the command and exit")
    p.add_argument("--verbose", action="store_true", help="stream verl's own output instead of one line per step")
    args = p.parse_args(argv)
    if not args.dry_run:
        print("building the testbed on first use (a few minutes; cached afterwards) ...", flush=True)
    from examples.credit_assignment.build import DEFAULT_DIR

    out = Path(args.out or Path(args.testbed or DEFAULT_DIR) / "runs" / args.estimator).resolve()
    metrics_file = Path(args.metrics_file or out / "metrics.jsonl").resolve()
    cmd, env = build_command(args.estimator, testbed_dir=args.testbed, steps=args.steps, eval_every=args.eval_every,
                             out_dir=out, extra=extra, metrics_file=metrics_file, seed=args.seed,
                             world_size=args.world_size)
    print("VERL_PLATFORM=cpu " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    if args.dry_run:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    metrics_file.unlink(missing_ok=True)
    if args.verbose:
        rc = subprocess.call(cmd, env=env, cwd=out)
    else:
        rc = run_with_step_lines(cmd, env, out, metrics_file, total_steps=args.steps)
    if rc != 0:
        return rc
    summary = summarize(read_metrics(metrics_file))
    png = plot_summary(summary, out / "curves.png", f"quickstart: {args.estimator}")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print("\n=== quickstart summary ===")
    print(f"estimator            {args.estimator}, {summary['steps']} steps")
    print(f"rollout, world size  {override_value(cmd, 'actor_rollout_ref.rollout.name', 'vllm')}, "
          f"{override_value(cmd, 'trainer.n_gpus_per_node', '1')} rank(s)")
    print(f"held-out accuracy    {fmt(summary['start_accuracy'])} -> {fmt(summary['final_accuracy'])} "
          f"(sampled at T=1, mean@{VAL_SAMPLES} over {len(summary['val_accuracy'])} evaluations)")
    print(f"training reward      {fmt(summary['reward_first'])} -> {fmt(summary['reward_last'])}")
    print(f"time per step        {fmt(summary['time_per_step_s'])} s")
    print(f"curves               {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
