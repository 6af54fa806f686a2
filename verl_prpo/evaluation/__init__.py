"""Evaluation: avg@n, pass@k, maj@k and greedy pass@1 on prepared math parquet files.

* :mod:`verl_prpo.evaluation.metrics`: the estimators;
* :mod:`verl_prpo.evaluation.generate`: sampling with vLLM (lazy, optional) or Hugging Face ``generate``;
* :mod:`verl_prpo.evaluation.evaluate`: grading, report (JSON + Markdown), verl checkpoint conversion notes;
* :mod:`verl_prpo.evaluation.cli`: ``python -m verl_prpo.evaluation.cli --model DIR --data a.parquet ...``.
"""

from verl_prpo.evaluation.metrics import avg_at_k, greedy_pass_at_1, maj_at_k, majority_answer, pass_at_k

__all__ = ["avg_at_k", "greedy_pass_at_1", "maj_at_k", "majority_answer", "pass_at_k"]
