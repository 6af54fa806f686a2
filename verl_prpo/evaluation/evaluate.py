"""Evaluate a model on prepared math parquet files: avg@n, pass@k, maj@k and greedy pass@1.

Inputs are parquet files written by :mod:`verl_prpo.data` (``prompt`` messages and
``reward_model.ground_truth``); every sampled response is graded with :func:`verl_prpo.math_grading.grade` (last
``\\boxed{}`` vs the ground truth through math-verify). Outputs, in ``out_dir``:

* ``results.json``: ``settings`` (model path, n, k list, temperature, top_p, max new tokens, seed, backend asked
  for and used, the dataset files with their row counts and SHA-256, library versions, times), ``datasets``
  (per dataset: metrics as fractions in [0, 1], number of problems, answer-found rate, mean response tokens,
  truncation rate) and ``average`` (unweighted mean over datasets);
* ``results.md``: the same as a Markdown table (percentages) under the settings;
* ``samples/<dataset>.jsonl``: per problem the responses, extracted answers and verdicts.

Evaluating a verl checkpoint: verl saves sharded actor checkpoints
(``<trainer.default_local_dir>/global_step_<N>/actor``). Convert one to a Hugging Face directory with verl's own
model merger first, then pass that directory as ``--model``::

    python -m verl.model_merger merge --backend fsdp \\
        --local_dir checkpoints/<project>/<experiment>/global_step_100/actor \\
        --target_dir checkpoints/<project>/<experiment>/global_step_100/hf

(``scripts/merge_checkpoint.sh CKPT_DIR [TARGET_DIR]`` wraps this; use ``--backend megatron`` for Megatron
checkpoints.)
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from verl_prpo.evaluation.generate import Generator, SamplingSettings
from verl_prpo.evaluation.metrics import avg_at_k, greedy_pass_at_1, maj_at_k, mean, pass_at_k
from verl_prpo.math_grading import grade

logger = logging.getLogger(__name__)

__all__ = ["EvalSettings", "load_problems", "score_dataset", "run_evaluation", "render_markdown"]


@dataclass
class EvalSettings:
    model: str
    data_files: list[str]
    n: int = 8
    ks: list[int] = field(default_factory=lambda: [1, 8])
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 2048
    seed: int = 0
    greedy: bool = False
    backend: str = "auto"
    batch_size: int = 8
    limit: int | None = None
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    max_model_len: int | None = None

    def validate(self) -> None:
        if self.n < 0:
            raise ValueError("--n must be >= 0")
        if self.n == 0 and not self.greedy:
            raise ValueError("--n 0 samples nothing; add --greedy or use n >= 1")
        bad = [k for k in self.ks if k < 1 or k > self.n]
        if bad:
            raise ValueError(f"every k must satisfy 1 <= k <= n (n={self.n}); got {bad}")
        if not self.data_files:
            raise ValueError("no dataset files given")
        missing = [f for f in self.data_files if not Path(f).is_file()]
        if missing:
            raise ValueError(f"dataset file(s) not found: {missing}")
        if not 0 < self.top_p <= 1:
            raise ValueError("--top-p must be in (0, 1]")
        if self.temperature < 0:
            raise ValueError("--temperature must be >= 0")


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------


def _to_py(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    return x


def load_problems(path: str | os.PathLike, limit: int | None = None) -> list[dict]:
    """Rows of a prepared parquet: ``prompt`` (messages), ``ground_truth``, ``data_source``, ``question``, ``index``."""
    import pandas as pd

    df = pd.read_parquet(path)
    missing = [c for c in ("prompt", "reward_model") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a prepared RL parquet (missing columns {missing}; see verl_prpo.data.cli)")
    if limit is not None:
        df = df.head(limit)
    problems = []
    for i, row in enumerate(df.to_dict(orient="records")):
        msgs = [dict(m) for m in _to_py(row["prompt"])]
        extra = row.get("extra_info") or {}
        gt = _to_py(row["reward_model"]["ground_truth"])
        problems.append(
            {
                "prompt": msgs,
                "ground_truth": gt,
                "data_source": str(row.get("data_source", Path(path).stem)),
                "question": extra.get("question", msgs[-1]["content"]),
                "index": int(extra.get("index", i)) if extra.get("index") is not None else i,
            }
        )
    return problems


def _sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dataset_names(files: list[str], problems: list[list[dict]]) -> list[str]:
    """The data_source of each file; the file stem where that is missing or shared by several files."""
    names = [p[0]["data_source"] if p else Path(f).stem for f, p in zip(files, problems)]
    return [n if names.count(n) == 1 else Path(f).stem for n, f in zip(names, files)]


# ---------------------------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------------------------


def score_dataset(problems: list[dict], samples, ks: list[int], greedy=None) -> tuple[dict, list[dict]]:
    """Metrics of one dataset from its generations (``samples`` / ``greedy``: :class:`Generation` or None)."""
    per_problem = []
    metrics: dict[str, list[float]] = {}
    found_rates, tokens, truncs = [], [], []
    for i, prob in enumerate(problems):
        rec = {"index": prob["index"], "question": prob["question"], "ground_truth": prob["ground_truth"]}
        if samples is not None:
            grades = [grade(t, prob["ground_truth"]) for t in samples.texts[i]]
            correct = [g.correct for g in grades]
            preds = [g.predicted for g in grades]
            n, c = len(correct), sum(correct)
            metrics.setdefault(f"avg@{n}", []).append(avg_at_k(n, c, 1))
            for k in ks:
                metrics.setdefault(f"pass@{k}", []).append(pass_at_k(n, c, k))
            for k in ks:
                metrics.setdefault(f"maj@{k}", []).append(maj_at_k(preds, correct, k))
            found_rates.append(mean([g.answer_found for g in grades]))
            tokens.extend(samples.num_tokens[i])
            truncs.extend(samples.truncated[i])
            rec.update(responses=samples.texts[i], predicted=preds, correct=correct,
                       num_tokens=samples.num_tokens[i], truncated=samples.truncated[i])
        if greedy is not None:
            g = grade(greedy.texts[i][0], prob["ground_truth"])
            metrics.setdefault("greedy pass@1", []).append(1.0 if g.correct else 0.0)
            rec.update(greedy_response=greedy.texts[i][0], greedy_predicted=g.predicted, greedy_correct=g.correct)
            if samples is None:
                found_rates.append(float(g.answer_found))
                tokens.extend(greedy.num_tokens[i])
                truncs.extend(greedy.truncated[i])
        per_problem.append(rec)
    out = {name: mean(vals) for name, vals in metrics.items()}
    if "greedy pass@1" in metrics:
        out["greedy pass@1"] = greedy_pass_at_1([v > 0 for v in metrics["greedy pass@1"]])
    out["answer_found"] = mean(found_rates)
    out["mean_response_tokens"] = mean(tokens)
    out["truncated"] = mean([1.0 if t else 0.0 for t in truncs])
    out["num_problems"] = len(problems)
    return out, per_problem


# ---------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------

_NON_PERCENT = {"mean_response_tokens", "num_problems"}


def _metric_columns(report: dict) -> list[str]:
    cols: list[str] = []
    for m in report["datasets"].values():
        for k in m:
            if k not in cols:
                cols.append(k)

    def order(c):
        for rank, prefix in enumerate(("avg@", "pass@", "maj@", "greedy", "answer_found", "truncated",
                                       "mean_response_tokens")):
            if c.startswith(prefix):
                num = c.split("@")[-1]
                return (rank, int(num) if num.isdigit() else 0)
        return (99, 0)

    return sorted((c for c in cols if c not in ("num_problems", "file")), key=order)


def _fmt(col: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if col in _NON_PERCENT:
        return f"{v:.1f}" if isinstance(v, float) else str(v)
    return f"{100 * v:.2f}"


def render_markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"# Evaluation of `{s['model']}`",
        "",
        f"- backend: {s['backend_used']} (asked: {s['backend']})",
        f"- samples per problem n = {s['n']}, k = {s['ks']}, temperature = {s['temperature']}, "
        f"top_p = {s['top_p']}, max new tokens = {s['max_new_tokens']}, seed = {s['seed']}, "
        f"greedy pass@1: {'yes' if s['greedy'] else 'no'}",
        f"- grading: last \\boxed{{}} vs ground truth with math-verify ({s['versions'].get('math_verify', '?')})",
        "- datasets: " + ", ".join(f"`{d['path']}` ({d['rows']} problems{', limit ' + str(s['limit']) if s['limit'] else ''})"
                                   for d in s["data_files"]),
        f"- started {s['started_at']}, finished {s['finished_at']}",
        "",
        "Values in % (except tokens). avg@n is the mean accuracy of the n samples; pass@k is the unbiased "
        "estimator from n samples; maj@k votes over the first k samples; the average row is the unweighted mean "
        "over datasets.",
        "",
    ]
    cols = _metric_columns(report)
    lines.append("| dataset | N | " + " | ".join(cols) + " |")
    lines.append("|---|---:|" + "---:|" * len(cols))
    for name, m in report["datasets"].items():
        lines.append(f"| {name} | {m['num_problems']} | " + " | ".join(_fmt(c, m.get(c)) for c in cols) + " |")
    avg = report["average"]
    total = sum(m["num_problems"] for m in report["datasets"].values())
    lines.append(f"| **average** | {total} | " + " | ".join(_fmt(c, avg.get(c)) for c in cols) + " |")
    lines.append("")
    return "\n".join(lines)


def _versions(backend: str) -> dict:
    out = {"python": platform.python_version()}
    for mod in ("verl_prpo", "verl", "torch", "transformers", "math_verify"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "?")
        except Exception:  # noqa: BLE001
            out[mod] = None
    if backend == "vllm":
        try:
            import vllm

            out["vllm"] = vllm.__version__
        except Exception:  # noqa: BLE001
            out["vllm"] = None
    try:
        from importlib.metadata import version

        out["math_verify"] = version("math-verify")
    except Exception:  # noqa: BLE001
        pass
    return out


def run_evaluation(settings: EvalSettings, out_dir: str | os.PathLike, *, generator: Generator | None = None,
                   progress: bool = True) -> dict:
    """Generate, grade, and write ``results.json``, ``results.md`` and ``samples/`` into ``out_dir``."""
    settings.validate()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    out_dir = Path(out_dir)
    (out_dir / "samples").mkdir(parents=True, exist_ok=True)

    files = [str(f) for f in settings.data_files]
    for f in files:
        if not Path(f).exists():
            raise FileNotFoundError(f"dataset file not found: {f}")
    problems = [load_problems(f, settings.limit) for f in files]
    names = _dataset_names(files, problems)

    if generator is None:
        generator = Generator(
            settings.model, settings.backend, batch_size=settings.batch_size, dtype=settings.dtype,
            tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization, max_model_len=settings.max_model_len,
            seed=settings.seed,
        )
    sampling = SamplingSettings(settings.n, settings.temperature, settings.top_p, settings.max_new_tokens,
                                settings.seed)
    greedy_settings = SamplingSettings(1, 0.0, 1.0, settings.max_new_tokens, settings.seed)

    datasets: dict[str, dict] = {}
    for name, f, probs in zip(names, files, problems):
        prompts = [p["prompt"] for p in probs]
        samples = generator.generate(prompts, sampling, progress=progress) if settings.n > 0 else None
        greedy = generator.generate(prompts, greedy_settings, progress=progress) if settings.greedy else None
        metrics, per_problem = score_dataset(probs, samples, settings.ks, greedy)
        metrics["file"] = f
        datasets[name] = metrics
        with open(out_dir / "samples" / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for rec in per_problem:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        logger.info("%s: %s", name, {k: v for k, v in metrics.items() if k != "file"})

    metric_names = [k for k in next(iter(datasets.values())) if k not in ("file", "num_problems")]
    average = {k: mean([d[k] for d in datasets.values() if k in d]) for k in metric_names}

    settings_out = asdict(settings)
    settings_out.update(
        backend_used=generator.backend,
        data_files=[{"path": f, "rows": len(p), "sha256": _sha256(f), "name": n}
                    for f, p, n in zip(files, problems, names)],
        started_at=started,
        finished_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        versions=_versions(generator.backend),
        grading="verl_prpo.math_grading.grade (last \\boxed{} vs ground truth, math-verify)",
    )
    report = {"settings": settings_out, "datasets": datasets, "average": average}
    (out_dir / "results.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    (out_dir / "results.md").write_text(render_markdown(report), encoding="utf-8")
    return report
