"""The credit-assignment grid: every method, the same budget, several seeds, through verl's own ``main_ppo``.

One cell is one method and one seed::

    python -m examples.credit_assignment.grid --methods prpo --seeds 0

**Training** (``train_cell``) runs ``python -m verl.trainer.main_ppo`` in CPU mode (the plugin's ``prpo_trainer_cpu``
config, its estimators, PRM worker group with the testbed's PRM, the ``prpo`` reward manager, verl's vLLM rollout)
for ``--steps`` steps, saving the actor every ``--eval-every`` steps, into ``<work>/<method>_s<seed>/``
(``checkpoints/global_step_N``, ``metrics.jsonl``, ``train.log``, and ``train_done.json`` last: the finished marker,
with the command, commit, wall time and budget). ``--work`` defaults to ``<out>/work``; a cell whose
``train_done.json`` exists is not trained again, whoever trained it (the grid, or a train-only launcher with the
same layout), so training resumes cell by cell.

**Evaluation** (``evaluate_cell``) samples the step-0 policy and every checkpoint on the held-out problems
(:mod:`examples.credit_assignment.evaluate`, ``--k`` samples per problem, T = 1) with ONE sampling seed per
training seed for all steps and methods (common random numbers: paired differences cancel most sampling noise),
the step-0 evaluation shared by all methods of a seed (``<out>/step0/s<seed>.json``), and writes
``<out>/runs/<method>_s<seed>.json``. A cell whose run file exists is skipped. ``--train-only`` / ``--eval-only``
run one phase (``--eval-only`` evaluates the finished cells it finds and skips the others).

``--aggregate`` (also done after every invocation) collects the run files into ``<out>.json`` (issue 8's shape plus
``testbed_version`` and each run's confidence intervals; per method: mean over seeds with a t interval and a pooled
problem-bootstrap interval, :mod:`examples.credit_assignment.intervals`), a Markdown table ``<out>.md`` and PNG curves
``<out>.png``.

Every method gets the same hyper-parameters; the only per-method settings are those that define the method
(``METHODS``, and ``METHOD_PRM`` for the PRM it reads). Task-scaled settings, fixed before any result was seen:
PRPO's minimum gap ``m = 4`` tokens (a step is about 10 tokens; the paper's m = 10 is for 2k-token responses) and
PRL's steps = paragraphs (``newline``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from verl_prpo.cpu.launch import cpu_mode_env, main_ppo_command, merge_overrides, read_metrics

#: method -> (adv_estimator, Hydra overrides that define it)
METHODS: dict[str, tuple[str, list[str]]] = {
    "grpo": ("grpo", []),
    "prpo": ("prpo", []),
    "prm_avg": ("prm_avg", []),
    "prpo_process_only": ("prpo", ["algorithm.prpo.outcome_shift=false"]),
    "prpo_relative_norm": ("prpo", ["algorithm.prpo.normalization=relative"]),
    "prpo_uniform_split": ("prpo", ["algorithm.prpo.segmentation=uniform"]),
    "prpo_random_split": ("prpo", ["algorithm.prpo.segmentation=random"]),
    "prl": ("prl", ["algorithm.prl.segmentation=newline"]),
    "spro": ("spro", []),
    "pure": ("pure", []),
    # issue 22's diagnostics: segments that end where the PRM was trained to read (paragraphs); PRPO as the authors'
    # released code ran it (their cut rule and sigma = sqrt(1/24), where the paper's prior gives sqrt(1/12))
    "prpo_newline": ("prpo", ["algorithm.prpo.segmentation=newline"]),
    "prpo_released": ("prpo", ["algorithm.prpo.cut_rule=released", f"algorithm.prpo.sigma={math.sqrt(1 / 24)}"]),
    # PRPO (entropy segments) with the prefix PRM, trained to score any prefix (examples.credit_assignment.prefix_prm)
    "prpo_prefix_prm": ("prpo", []),
    # added after seeing seed 0 of prpo_newline (its z averages +0.95): paragraph segments without the fixed prior's
    # offset, to tell the PRM's information from a constant push on every sampled token
    "prpo_newline_relative_norm": ("prpo", ["algorithm.prpo.segmentation=newline",
                                            "algorithm.prpo.normalization=relative"]),
}
#: methods that read another PRM than the testbed's step PRM: method -> the testbed asset (its folder name)
METHOD_PRM: dict[str, str] = {"prpo_prefix_prm": "prefix_prm"}
PRM_ESTIMATORS = ("prpo", "prm_avg", "pure")

#: the budget every method gets (sized so that GRPO learns; see the README)
DEFAULTS = {"steps": 20, "eval_every": 10, "prompts_per_step": 16, "n": 16, "lr": 5e-5, "updates_per_step": 2,
            "k": 32, "eval_dtype": "float32"}
#: the training budget (recorded in train_done.json)
TRAIN_KEYS = ("steps", "prompts_per_step", "n", "lr", "updates_per_step")
#: the settings that make two runs comparable (recorded in every run file; aggregate refuses to mix them)
BUDGET_KEYS = ("steps", "prompts_per_step", "n", "lr", "updates_per_step", "k")
DEFAULT_OUT = Path("benchmarks/results/credit_assignment")


def available_methods() -> list[str]:
    """The methods whose estimator is registered in verl (``pure`` only once it exists)."""
    try:
        from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

        names = set(ADV_ESTIMATOR_REGISTRY) | {"grpo"}
    except ImportError:  # pragma: no cover
        return list(METHODS)
    return [m for m, (est, _) in METHODS.items() if est in names]


def train_command(tb, method: str, *, seed: int, steps: int, out_dir: Path, save_every: int | None,
                  prompts_per_step: int = DEFAULTS["prompts_per_step"], n: int = DEFAULTS["n"],
                  lr: float = DEFAULTS["lr"], updates_per_step: int = DEFAULTS["updates_per_step"],
                  metrics_file: Path | None = None, extra: list[str] | None = None,
                  python: str = sys.executable) -> tuple[list[str], dict[str, str]]:
    """The ``main_ppo`` command (and environment) that trains the testbed policy with ``method``."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    estimator, method_overrides = METHODS[method]
    s = tb.settings
    out_dir = Path(out_dir).resolve()
    overrides = [
        f"algorithm.adv_estimator={estimator}",
        f"data.train_files={tb.train_parquet}",
        f"data.val_files={tb.eval_parquet}",
        f"data.train_batch_size={prompts_per_step}",
        "data.max_prompt_length=48",  # the longest testbed prompt is 33 tokens
        f"data.max_response_length={s.max_response_length}",
        f"data.seed={seed}",
        f"actor_rollout_ref.rollout.seed={seed}",  # the CPU rollout samples from seeds derived from it
        f"actor_rollout_ref.model.path={tb.policy_dir}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={max(1, prompts_per_step // updates_per_step)}",
        # one micro batch per mini batch (responses); verl asserts that micro batches divide the mini batch
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={max(1, prompts_per_step // updates_per_step) * n}",
        f"actor_rollout_ref.actor.optim.lr={lr}",
        "actor_rollout_ref.actor.entropy_coeff=0.0",
        f"actor_rollout_ref.rollout.n={n}",
        "actor_rollout_ref.rollout.temperature=1.0",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={prompts_per_step * n}",  # the whole batch
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={prompts_per_step * n}",
        "reward.reward_manager.name=prpo",
        "algorithm.prpo.m=4",
        f"algorithm.prpo.seed={seed}",
        f"trainer.total_training_steps={steps}",
        f"trainer.save_freq={save_every if save_every else -1}",
        f"trainer.default_local_dir={out_dir / 'checkpoints'}",
        "trainer.project_name=verl_prpo_testbed",
        f"trainer.experiment_name={method}_s{seed}",
    ]
    if estimator in PRM_ESTIMATORS:
        overrides += ["prm.enable=true", f"prm.model_path={prm_path(tb, method)}", "prm.adapter=token_classification"]
    env = cpu_mode_env(overrides, metrics_file)
    return main_ppo_command(merge_overrides(overrides + method_overrides, extra), python), env


def prm_path(tb, method: str) -> Path:
    """The PRM ``method`` trains with: the testbed's step PRM, or the asset ``METHOD_PRM`` names (built or copied
    from its pinned artefact on first use)."""
    asset = METHOD_PRM.get(method)
    if asset is None:
        return tb.prm_dir
    if asset == "prefix_prm":
        from examples.credit_assignment.prefix_prm import build_prefix_prm

        return build_prefix_prm(tb)
    raise ValueError(f"unknown PRM asset {asset!r} for method {method!r}")


def eval_seed(seed: int) -> int:
    """The sampling seed of every evaluation of training seed ``seed`` (all steps, all methods: common random
    numbers)."""
    return 10_000 * (seed + 1)


EVAL_DTYPES = ("float32", "bfloat16")


def evaluate_checkpoint(tb, checkpoint: Path | None, *, k: int, seed: int, step: int,
                        dtype: str = "float32") -> dict:
    """Held-out metrics of the policy at ``checkpoint`` (None: the SFT policy), generated in ``dtype``."""
    import torch

    from examples.credit_assignment.evaluate import evaluate_policy, load_policy

    if dtype not in EVAL_DTYPES:
        raise ValueError(f"evaluation dtype must be one of {EVAL_DTYPES}, got {dtype!r}")
    model, tokenizer = load_policy(tb.policy_dir, checkpoint)
    model = model.to(getattr(torch, dtype))
    # the same sampling seed for every method and step of a training seed: common random numbers
    out = evaluate_policy(model, tokenizer, tb.eval_problems(), k=k, seed=eval_seed(seed),
                          max_new_tokens=tb.settings.max_response_length, per_problem=True)
    return {"step": step, "dtype": dtype, **out}


def step0_eval(tb, out_root: Path, seed: int, k: int, dtype: str = "float32") -> dict:
    """The SFT policy's evaluation, shared by every method of a seed (cached; recomputed for other settings)."""
    path = out_root / "step0" / f"s{seed}.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if (cached.get("k"), cached.get("sampling_seed"), cached.get("dtype")) == (k, eval_seed(seed), dtype) \
                and "correct_counts" in cached:
            return cached
    ev = evaluate_checkpoint(tb, None, k=k, seed=seed, step=0, dtype=dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ev))
    return ev


def _commit() -> str | None:
    """The repository's git commit (``+dirty`` with uncommitted plugin or lab changes), for the record of a run."""
    here = Path(__file__).resolve().parents[2]  # the repository: plugin and lab
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "verl_prpo", "examples"], cwd=here,
                               capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (rev + "+dirty" if dirty else rev) or None


def cell_dir(work_root: Path, method: str, seed: int) -> Path:
    return Path(work_root) / f"{method}_s{seed}"


def train_cell(tb, method: str, seed: int, work_root: Path, *, steps: int, eval_every: int, prompts_per_step: int,
               n: int, lr: float, updates_per_step: int = DEFAULTS["updates_per_step"], extra=None,
               log=print) -> dict:
    """Train one cell into ``<work_root>/<method>_s<seed>`` unless its ``train_done.json`` exists; returns that
    record. A half-trained folder (no marker) is wiped and trained again."""
    work = cell_dir(work_root, method, seed)
    done = work / "train_done.json"
    if done.exists():
        return json.loads(done.read_text())
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cmd, env = train_command(tb, method, seed=seed, steps=steps, out_dir=work, save_every=eval_every,
                             prompts_per_step=prompts_per_step, n=n, lr=lr, updates_per_step=updates_per_step,
                             metrics_file=work / "metrics.jsonl", extra=extra)
    log(f"[{method} s{seed}] training {steps} steps ...")
    commit = _commit()  # the code the run trains with
    t0 = time.time()
    with open(work / "train.log", "w") as fh:
        rc = subprocess.call(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=work)
    wall = time.time() - t0
    if rc != 0:
        tail = (work / "train.log").read_text(errors="replace")[-4000:]
        raise RuntimeError(f"{method} seed {seed}: main_ppo failed (rc={rc}); {work / 'train.log'}:\n{tail}")
    record = {"method": method, "seed": seed, "wall_s": wall, "commit": commit, "command": cmd,
              "estimator": METHODS[method][0], "overrides": METHODS[method][1],
              "budget": {"steps": steps, "prompts_per_step": prompts_per_step, "n": n, "lr": lr,
                         "updates_per_step": updates_per_step}}
    done.write_text(json.dumps(record, indent=1))  # last: the marker of a finished cell
    return record


def _checkpoint_steps(work: Path, steps: int, eval_every: int) -> list[int]:
    wanted = list(range(eval_every, steps + 1, eval_every))
    if steps % eval_every:
        wanted.append(steps)
    missing = [s for s in wanted if not (work / "checkpoints" / f"global_step_{s}").is_dir()]
    if missing:
        raise FileNotFoundError(f"{work}: no checkpoint for steps {missing} (trained with another --eval-every, or "
                                "its checkpoints were removed); train the cell again")
    return wanted


#: the per-step training metrics a run file keeps (PRPO's terms when the estimator logs them)
TRAIN_METRICS = ("critic/score/mean", "response_length/mean", "actor/entropy", "timing_s/step", "prpo/z/mean",
                 "prpo/abs_beta/mean", "prpo/prm_score/mean", "prpo/prm_score/std", "prpo/segment_length/mean",
                 "prpo/segments_per_response/mean")


def evaluate_cell(tb, method: str, seed: int, out_root: Path, work_root: Path, *, k: int, steps: int,
                  eval_every: int, keep_checkpoints: bool = True, dtype: str = "float32", log=print) -> dict:
    """Evaluate a trained cell (``train_done.json`` present) and write ``<out_root>/runs/<method>_s<seed>.json``."""
    out_root = Path(out_root)
    result_path = out_root / "runs" / f"{method}_s{seed}.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    work = cell_dir(work_root, method, seed)
    done = work / "train_done.json"
    if not done.exists():
        raise FileNotFoundError(f"{work} is not a finished cell (no train_done.json)")
    trained = json.loads(done.read_text())
    budget = {**{key: trained["budget"][key] for key in TRAIN_KEYS}, "k": k, "eval_dtype": dtype}
    t1 = time.time()
    evals = [step0_eval(tb, out_root, seed, k, dtype)]
    for step in _checkpoint_steps(work, trained["budget"]["steps"], eval_every):
        evals.append(evaluate_checkpoint(tb, work / "checkpoints" / f"global_step_{step}", k=k, seed=seed,
                                         step=step, dtype=dtype))
    train = [{"step": r["step"], **{key: r["data"].get(key) for key in TRAIN_METRICS if key in r["data"]}}
             for r in read_metrics(work / "metrics.jsonl")]
    result = {"method": method, "seed": seed, "steps": trained["budget"]["steps"], "wall_s": trained["wall_s"],
              "eval_s": time.time() - t1, "commit": trained.get("commit"), "eval_commit": _commit(),
              "command": trained.get("command"), "budget": budget, "testbed_version": tb.settings.version,
              "estimator": METHODS.get(method, (trained.get("estimator"),))[0],
              "overrides": trained.get("overrides"), "eval": evals, "train": train}
    result["ci"] = run_intervals(result)
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=1))
    if not keep_checkpoints:
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
    e0, e1, c = evals[0], evals[-1], result["ci"]["sampled_gain"]
    log(f"[{method} s{seed}] eval {result['eval_s']:.0f} s: sampled {e0['sampled_accuracy']:.3f} -> "
        f"{e1['sampled_accuracy']:.3f} (gain {c['mean']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]), greedy "
        f"{e0['greedy_accuracy']:.3f} -> {e1['greedy_accuracy']:.3f}")
    return result


def run_cell(tb, method: str, seed: int, out_root: Path, *, steps: int, eval_every: int, k: int,
             prompts_per_step: int, n: int, lr: float, updates_per_step: int = DEFAULTS["updates_per_step"],
             keep_checkpoints: bool = False, extra=None, work_root: Path | None = None, dtype: str = "float32",
             log=print) -> dict:
    """Train one method with one seed (unless done), evaluate its checkpoints, write ``runs/<method>_s<seed>.json``."""
    out_root = Path(out_root)
    if (out_root / "runs" / f"{method}_s{seed}.json").exists():
        return json.loads((out_root / "runs" / f"{method}_s{seed}.json").read_text())
    work_root = Path(work_root) if work_root is not None else out_root / "work"
    train_cell(tb, method, seed, work_root, steps=steps, eval_every=eval_every, prompts_per_step=prompts_per_step,
               n=n, lr=lr, updates_per_step=updates_per_step, extra=extra, log=log)
    return evaluate_cell(tb, method, seed, out_root, work_root, k=k, steps=steps, eval_every=eval_every,
                         keep_checkpoints=keep_checkpoints, dtype=dtype, log=log)


def run_intervals(run: dict) -> dict:
    """95 % problem-bootstrap intervals of one run: final sampled and greedy accuracy, and their paired gains over
    step 0 (same problems, same sampling seed)."""
    from examples.credit_assignment import intervals as iv

    e0, e1 = run["eval"][0], run["eval"][-1]
    if "correct_counts" not in e0 or "correct_counts" not in e1:
        return {}
    k0, k1 = e0["k"], e1["k"]
    return {
        "sampled_final": iv.bootstrap_accuracy(e1["correct_counts"], k1),
        "sampled_gain": iv.bootstrap_gain(e0["correct_counts"], e1["correct_counts"], k0, k_after=k1),
        "greedy_final": iv.bootstrap_accuracy(e1["greedy_correct"], 1),
        "greedy_gain": iv.bootstrap_gain(e0["greedy_correct"], e1["greedy_correct"], 1),
    }


# ---------------------------------------------------------------------------------------------------- report
def _auc(ev: list[dict], key: str) -> float:
    """Area under the accuracy curve, normalised by the step range (the mean accuracy over training)."""
    xs, ys = [e["step"] for e in ev], [e[key] for e in ev]
    if len(xs) < 2:
        return ys[0] if ys else float("nan")
    area = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))
    return area / (xs[-1] - xs[0])


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _mean_known(values: list) -> str:
    """Mean of the values that are known (a cell finished by hand may not record its wall time)."""
    known = [v for v in values if v is not None]
    return f"{statistics.mean(known):.0f}" if known else "-"


def _pts(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}"


def method_summary(rs: list[dict]) -> dict:
    """Across the seeds of one method: final accuracies and gains (mean, t interval over seeds) and the pooled
    problem-bootstrap interval of the mean sampled gain (evaluation noise with the trained policies fixed)."""
    from examples.credit_assignment import intervals as iv

    f = lambda fn: [fn(r) for r in rs]  # noqa: E731
    out = {"seeds": sorted(r["seed"] for r in rs)}
    for key, fn in (("sampled_final", lambda r: r["eval"][-1]["sampled_accuracy"]),
                    ("sampled_gain", lambda r: r["eval"][-1]["sampled_accuracy"] - r["eval"][0]["sampled_accuracy"]),
                    ("greedy_final", lambda r: r["eval"][-1]["greedy_accuracy"]),
                    ("greedy_gain", lambda r: r["eval"][-1]["greedy_accuracy"] - r["eval"][0]["greedy_accuracy"])):
        out[key] = {**iv.t_interval(f(fn)), "per_seed": f(fn)}
    if all("correct_counts" in r["eval"][0] and "correct_counts" in r["eval"][-1] for r in rs) and \
            len({r["eval"][-1]["k"] for r in rs} | {r["eval"][0]["k"] for r in rs}) == 1:
        k = rs[0]["eval"][-1]["k"]
        out["sampled_gain_pooled"] = iv.pooled_gain(
            [(r["eval"][0]["correct_counts"], r["eval"][-1]["correct_counts"]) for r in rs], k)
    return out


def summary_rows(runs: list[dict]) -> list[dict]:
    by_method: dict[str, list[dict]] = {}
    for r in runs:
        by_method.setdefault(r["method"], []).append(r)
    rows = []
    for method in [m for m in METHODS if m in by_method] + sorted(set(by_method) - set(METHODS)):
        rs = sorted(by_method[method], key=lambda r: r["seed"])
        f = lambda fn: [fn(r) for r in rs]  # noqa: E731
        rows.append({
            "method": method, "seeds": len(rs),
            "greedy_final": f(lambda r: r["eval"][-1]["greedy_accuracy"]),
            "greedy_gain": f(lambda r: r["eval"][-1]["greedy_accuracy"] - r["eval"][0]["greedy_accuracy"]),
            "sampled_final": f(lambda r: r["eval"][-1]["sampled_accuracy"]),
            "sampled_gain": f(lambda r: r["eval"][-1]["sampled_accuracy"] - r["eval"][0]["sampled_accuracy"]),
            "sampled_auc": f(lambda r: _auc(r["eval"], "sampled_accuracy")),
            "pass_at_k_final": f(lambda r: r["eval"][-1].get("pass_at_k", float("nan"))),
            "length_change": f(lambda r: r["eval"][-1]["response_length"] - r["eval"][0]["response_length"]),
            "entropy_final": f(lambda r: r["eval"][-1]["entropy"]),
            "wall_s": f(lambda r: r["wall_s"]),
            "summary": method_summary(rs),
        })
    return rows


def markdown_table(runs: list[dict], k: int) -> str:
    """One row per method: sampled gain over step 0 in points (mean over seeds, 95 % t interval over seeds, pooled
    problem-bootstrap interval, each seed's gain with its own bootstrap interval), then the final accuracies."""
    head = ("| method | seeds | sampled gain, pts (mean [t 95 % over seeds]) | pooled 95 % (eval noise) | "
            "per seed: gain [bootstrap 95 %] | sampled acc (final) | greedy gain, pts | greedy acc (final) | "
            f"pass@{k} (final) | length change | train s |\n"
            "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    by_run = {(r["method"], r["seed"]): r for r in runs}
    for row in summary_rows(runs):
        sm = row["summary"]
        g = sm["sampled_gain"]
        t = f"{_pts(g['mean'])} [{_pts(g['lo'])}, {_pts(g['hi'])}]" if g["lo"] is not None else _pts(g["mean"])
        pooled = sm.get("sampled_gain_pooled")
        pooled_s = f"[{_pts(pooled['lo'])}, {_pts(pooled['hi'])}]" if pooled else "-"
        seeds = []
        for seed in sm["seeds"]:
            c = by_run[(row["method"], seed)].get("ci", {}).get("sampled_gain")
            seeds.append(f"s{seed} {_pts(c['mean'])} [{_pts(c['lo'])}, {_pts(c['hi'])}]" if c else f"s{seed}")
        gg = sm["greedy_gain"]
        lines.append(f"| {row['method']} | {row['seeds']} | {t} | {pooled_s} | {'; '.join(seeds)} | "
                     f"{_ms(row['sampled_final'])} | {_pts(gg['mean'])} | {_ms(row['greedy_final'])} | "
                     f"{_ms(row['pass_at_k_final'])} | {_ms(row['length_change'])} | "
                     f"{_mean_known(row['wall_s'])} |")
    return head + "\n".join(lines) + "\n"


def change_curve(runs: list[dict], key: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
    """The evaluation steps of ``runs`` (one method's seeds) and, per step, the mean over the runs that reached it
    of ``scale x (eval[step][key] - eval[0][key])``: each run's change from its own step 0."""
    steps = [e["step"] for e in runs[0]["eval"]]
    ys = [[scale * (r["eval"][i][key] - r["eval"][0][key]) for r in runs if len(r["eval"]) > i]
          for i in range(len(steps))]
    return steps, [statistics.mean(y) for y in ys]


def plot(runs: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    # changes from step 0, paired within each run: the methods' seed sets differ, and so do the seeds' step-0 values
    keys = [("sampled_accuracy", "sampled-accuracy gain (points)", 100), ("greedy_accuracy", "greedy-accuracy gain "
            "(points)", 100), ("response_length", "response-length change (tokens)", 1),
            ("entropy", "policy-entropy change", 1)]
    fig, axes = plt.subplots(1, 4, figsize=(22, 4.8))
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    colors = [plt.get_cmap("tab10")(i) for i in range(10)] + ["black", "gold", "teal", "navy", "lime"]
    for ci, m in enumerate(methods):
        rs = [r for r in runs if r["method"] == m]
        for ax, (key, title, scale) in zip(axes, keys):
            steps, mean = change_curve(rs, key, scale)
            ax.plot(steps, mean, marker="o", ms=3, color=colors[ci % len(colors)], label=f"{m} ({len(rs)} seeds)",
                    ls="-" if m in ("grpo", "prpo") else "--", lw=2.2 if m in ("grpo", "prpo") else 1.3)
            ax.axhline(0, color="0.7", lw=0.6)
            ax.set_title(title)
            ax.set_xlabel("training step")
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("credit-assignment testbed: change from step 0, mean over seeds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def aggregate(out_root: Path, tb, k: int, expected: list[tuple[str, int]] | None = None) -> dict:
    """Collect ``<out_root>/runs/*.json`` into ``<out_root>.json`` (+ ``.md`` table, ``.png`` curves); ``expected``
    cells without a run file are listed under ``missing``."""
    out_root = Path(out_root)
    runs = [json.loads(p.read_text()) for p in sorted((out_root / "runs").glob("*.json"))]
    budgets = {json.dumps(r.get("budget"), sort_keys=True) for r in runs}
    if len(budgets) > 1:
        raise ValueError(f"{out_root / 'runs'} mixes runs with different budgets {sorted(budgets)}: a table must "
                         "compare methods under one budget (move the others to their own --out)")
    for r in runs:  # run files written before the intervals existed
        r.setdefault("ci", run_intervals(r))
    m = tb.manifest
    have = {(r["method"], r["seed"]) for r in runs}
    results = {
        "testbed_version": m.get("settings", {}).get("version"),
        "task": {**m.get("task", {}), "budget": runs[0].get("budget") if runs else None},
        "policy": {"params": m["policy"]["params"], "sft_accuracy": m["policy"]["sft_accuracy"],
                   "sft_greedy_accuracy": m["policy"]["sft_greedy_accuracy"]},
        "prm": {key: m["prm"][key] for key in ("params", "step_accuracy", "step_auc", "eval_steps")},
        "evaluation": {"k": k, "dtype": (runs[0].get("budget") or {}).get("eval_dtype") if runs else None,
                       "problems": m.get("task", {}).get("eval_problems"), "temperature": 1.0,
                       "sampling_seed": "10000 * (seed + 1), shared by every step and method of a seed",
                       "intervals": "95 %: problem bootstrap (4000 resamples, paired for gains); t over seeds"},
        "runs": [{key: r.get(key) for key in ("method", "seed", "steps", "wall_s", "testbed_version", "ci", "eval")}
                 for r in runs],
        "methods": {row["method"]: row["summary"] for row in summary_rows(runs)},
        "missing": [f"{mm}_s{ss}" for mm, ss in (expected or []) if (mm, ss) not in have],
    }
    out_root.with_suffix(".json").write_text(json.dumps(results, indent=1))
    if runs:
        out_root.with_suffix(".md").write_text(markdown_table(runs, k))
        plot(runs, out_root.with_suffix(".png"))
    return results


def _run_parallel(cells: list[tuple[str, int]], argv: list[str], jobs: int) -> None:
    """Run cells as separate processes of this module, ``jobs`` at a time (each run is mostly one busy process:
    verl's stages wait on each other, so two runs use two cores)."""
    base, skip = [], False
    for a in argv:  # drop --methods/--seeds/--jobs and their values
        if a in ("--methods", "--seeds", "--jobs"):
            skip = True
            continue
        if a.startswith("--"):
            skip = False
        if not skip:
            base.append(a)
    pending, running, failed = list(cells), [], []
    while pending or running:
        while pending and len(running) < jobs:
            m, s = pending.pop(0)
            cmd = [sys.executable, "-m", "examples.credit_assignment.grid", *base, "--methods", m, "--seeds", str(s),
                   "--no-aggregate"]
            running.append(((m, s), subprocess.Popen(cmd)))
            time.sleep(5)  # stagger the Ray start-ups
        for item in list(running):
            if item[1].poll() is not None:
                running.remove(item)
                if item[1].returncode != 0:
                    failed.append(item[0])
        time.sleep(2)
    if failed:
        raise RuntimeError(f"cells failed: {failed}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=None, help=f"default: all available of {list(METHODS)}")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    p.add_argument("--eval-every", type=int, default=DEFAULTS["eval_every"])
    p.add_argument("--prompts-per-step", type=int, default=DEFAULTS["prompts_per_step"])
    p.add_argument("--n", type=int, default=DEFAULTS["n"], help="rollouts per prompt")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--updates-per-step", type=int, default=DEFAULTS["updates_per_step"],
                   help="actor updates per training step (mini-batches of the step's prompts)")
    p.add_argument("--k", type=int, default=DEFAULTS["k"], help="samples per held-out problem")
    p.add_argument("--eval-dtype", default=DEFAULTS["eval_dtype"], choices=EVAL_DTYPES,
                   help="dtype the evaluation generates in (docs/RESULTS.md: why)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results prefix: <out>.json/.md/.png and <out>/runs")
    p.add_argument("--testbed", default=None, help="testbed folder (default: the cache)")
    p.add_argument("--work", default=None,
                   help="where cells train: <work>/<method>_s<seed>/ (default <out>/work; a train-only launcher's "
                        "folder of the same layout is evaluated as it is)")
    p.add_argument("--aggregate", action="store_true", help="only collect the finished runs")
    phase = p.add_mutually_exclusive_group()
    phase.add_argument("--train-only", action="store_true", help="train the cells, evaluate nothing")
    phase.add_argument("--eval-only", action="store_true",
                       help="evaluate the cells whose train_done.json exists, train nothing")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the checkpoints after evaluating a cell the grid trained (--eval-only always keeps them)")
    p.add_argument("--jobs", type=int, default=1, help="cells run at the same time (separate processes)")
    p.add_argument("--no-aggregate", action="store_true", help=argparse.SUPPRESS)
    args, extra = p.parse_known_args(argv)
    from examples.credit_assignment.build import DEFAULT_DIR, build_testbed

    tb = build_testbed(args.testbed or DEFAULT_DIR)
    out = Path(args.out)
    work = Path(args.work) if args.work else out / "work"
    methods = args.methods or available_methods()
    if not args.aggregate:
        cells = [(m, s) for s in args.seeds for m in methods if not (out / "runs" / f"{m}_s{s}.json").exists()]
        budget = dict(steps=args.steps, eval_every=args.eval_every, prompts_per_step=args.prompts_per_step, n=args.n,
                      lr=args.lr, updates_per_step=args.updates_per_step)
        if args.eval_only:
            for method, seed in cells:
                if (cell_dir(work, method, seed) / "train_done.json").exists():
                    evaluate_cell(tb, method, seed, out, work, k=args.k, steps=args.steps,
                                  eval_every=args.eval_every, keep_checkpoints=True, dtype=args.eval_dtype)
                else:
                    print(f"[{method} s{seed}] not trained yet (no {cell_dir(work, method, seed)}/train_done.json)")
        elif args.train_only:
            for method, seed in cells:
                train_cell(tb, method, seed, work, extra=extra, **budget)
        elif args.jobs > 1 and len(cells) > 1:
            _run_parallel(cells, argv if argv is not None else sys.argv[1:], args.jobs)
        else:
            for method, seed in cells:
                run_cell(tb, method, seed, out, k=args.k, keep_checkpoints=args.keep_checkpoints, extra=extra,
                         work_root=work, dtype=args.eval_dtype, **budget)
    if args.no_aggregate or args.train_only:
        return 0
    res = aggregate(out, tb, args.k, expected=[(m, s) for s in args.seeds for m in methods])
    if res["runs"]:
        print(out.with_suffix(".md").read_text())
    if res["missing"]:
        print(f"missing cells: {' '.join(res['missing'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
