"""Evaluation metrics over n sampled answers per problem (definitions in ``docs/ALGORITHMS.md``, "Evaluation metrics").

* ``pass@k``: the unbiased estimator ``1 - C(n-c, k) / C(n, k)`` from ``n >= k`` samples of which ``c`` are
  correct (Chen et al., 2021), computed exactly with rationals in the product form
  ``C(n-c, k) / C(n, k) = prod_{i=0}^{k-1} (n-c-i) / (n-i)``.
* ``avg@k`` (mean@k): the expected fraction of correct answers among k samples. Every sample has the same
  success probability, so its unbiased (and minimum-variance) estimate from ``n >= k`` samples is ``c / n``:
  avg@k does not depend on k, and the report prints it once, as ``avg@n``.
* ``maj@k``: majority vote over the **first** k samples' predicted answers, compared by
  :func:`verl_prpo.math_grading.normalize_answer` (two answers vote together when their normalised strings are
  equal; ``0.5`` and ``\\frac{1}{2}`` are different votes). Samples without an answer do not vote; with no vote
  at all the problem counts as wrong. **Ties** go to the tied answer that appears first among the samples. The
  vote is correct when the winning answer was graded correct.
* greedy pass@1: the fraction of problems whose single temperature-0 answer is correct.

Per-dataset values are means over problems; the cross-dataset average is the unweighted mean of the datasets'
values (each benchmark counts once, as in the papers' "Avg." columns).
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from verl_prpo.math_grading import normalize_answer

__all__ = ["pass_at_k", "avg_at_k", "maj_at_k", "majority_answer", "greedy_pass_at_1", "mean"]


def _check(n: int, c: int, k: int) -> None:
    for name, v in (("n", n), ("c", c), ("k", k)):
        if int(v) != v:
            raise ValueError(f"{name} must be an integer, got {v!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n < k:
        raise ValueError(f"pass@k/avg@k need n >= k samples, got n={n}, k={k}")
    if not 0 <= c <= n:
        raise ValueError(f"the number of correct samples must be in [0, n], got c={c}, n={n}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate ``1 - C(n-c, k)/C(n, k)`` (exact; ``ValueError`` if ``n < k``)."""
    _check(n, c, k)
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    ratio = Fraction(1)
    for i in range(k):
        ratio *= Fraction(n - c - i, n - i)
    return float(1 - ratio)


def avg_at_k(n: int, c: int, k: int) -> float:
    """Expected accuracy of k samples estimated from n >= k samples with c correct: ``c / n``."""
    _check(n, c, k)
    return c / n


def majority_answer(predictions: Sequence[str | None]) -> tuple[int | None, str | None]:
    """(index of the first sample of the winning answer, its normalised form); ``(None, None)`` if nobody voted.

    Ties: the answer whose first occurrence comes earliest wins.
    """
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, p in enumerate(predictions):
        key = normalize_answer(p) if p is not None else None
        if not key:
            continue
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, i)
    if not counts:
        return None, None
    best = max(counts, key=lambda a: (counts[a], -first[a]))
    return first[best], best


def maj_at_k(predictions: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """1.0 if the majority answer among the first ``k`` samples is correct, else 0.0 (see module docstring)."""
    if len(predictions) != len(correct):
        raise ValueError("predictions and correct must have the same length")
    if k < 1 or len(predictions) < k:
        raise ValueError(f"maj@k needs at least k samples, got {len(predictions)} for k={k}")
    idx, _ = majority_answer(predictions[:k])
    if idx is None:
        return 0.0
    return 1.0 if correct[idx] else 0.0


def greedy_pass_at_1(correct: Sequence[bool]) -> float:
    """Fraction of problems whose greedy answer is correct."""
    return mean([1.0 if c else 0.0 for c in correct])


def mean(values: Sequence[float]) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else float("nan")
