"""Confidence intervals for the grid and its diagnostics: problem-level bootstrap, t intervals over seeds, AUC.

* ``bootstrap_accuracy``: one evaluation's per-problem correct counts (k samples each) -> accuracy and a percentile
  bootstrap interval over problems (the held-out problems are the unit: they are a sample of the task, and the k
  samples of one problem are not independent of each other's difficulty).
* ``bootstrap_gain``: the paired gain of two evaluations on the same problems (and sampling seeds): resampling
  problems keeps each problem's pair together, so the problem-difficulty variance cancels.
* ``pooled_gain``: the mean gain over several seeds' runs of a method, the same problem resample for every seed
  (evaluation noise only: the training seeds are taken as given).
* ``t_interval``: mean over seeds with a Student t interval (training and evaluation noise together; wide with 3).
* ``auc`` and ``bootstrap_auc``: ROC AUC with ties counted 1/2, and a bootstrap over groups (responses) of it.

numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: two-sided 95 % quantiles of Student's t (0.975) by degrees of freedom (scipy is not a dependency)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}
DEFAULT_RESAMPLES = 4000


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (tabulated; 1.96 beyond 30)."""
    if df < 1:
        raise ValueError(f"t quantile needs df >= 1, got {df}")
    if df in _T975:
        return _T975[df]
    if df > 30:
        return 1.96
    lower = max(d for d in _T975 if d < df)
    return _T975[lower]  # conservative: the next tabulated smaller df


def t_interval(values: Sequence[float]) -> dict:
    """Mean of ``values`` (one per seed) with its 95 % t interval; one value gives no interval (None)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("t_interval of no values")
    mean = float(x.mean())
    if x.size == 1:
        return {"mean": mean, "lo": None, "hi": None, "sd": None, "n": 1}
    sd = float(x.std(ddof=1))
    half = t975(x.size - 1) * sd / math.sqrt(x.size)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "sd": sd, "n": int(x.size)}


def _indices(n: int, resamples: int, seed: int) -> np.ndarray:
    if n < 1:
        raise ValueError("bootstrap over no problems")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _interval(point: float, draws: np.ndarray) -> dict:
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return {"mean": float(point), "lo": float(lo), "hi": float(hi), "se": float(draws.std(ddof=1))}


def bootstrap_accuracy(counts: Sequence[int], k: int, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """Accuracy sum(counts) / (N k) and its 95 % percentile bootstrap interval over the N problems."""
    c = np.asarray(counts, dtype=float) / k
    draws = c[_indices(c.size, resamples, seed)].mean(axis=1)
    return _interval(c.mean(), draws)


def bootstrap_gain(counts_before: Sequence[int], counts_after: Sequence[int], k: int, *,
                   k_after: int | None = None, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """Paired gain mean(after/k_after - before/k) over the same problems, with a 95 % bootstrap interval that
    resamples problems (each problem's pair together)."""
    a = np.asarray(counts_before, dtype=float) / k
    b = np.asarray(counts_after, dtype=float) / (k_after or k)
    if a.shape != b.shape:
        raise ValueError(f"paired gain needs the same problems: {a.shape} vs {b.shape}")
    d = b - a
    draws = d[_indices(d.size, resamples, seed)].mean(axis=1)
    return _interval(d.mean(), draws)


def pooled_gain(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], k: int, *,
                resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """Mean over runs (seeds) of each run's paired gain, with a bootstrap interval that draws ONE problem resample
    per replicate for all runs (the runs share the held-out problems)."""
    d = np.stack([np.asarray(b, dtype=float) / k - np.asarray(a, dtype=float) / k for a, b in pairs])  # (R, N)
    idx = _indices(d.shape[1], resamples, seed)
    draws = d[:, idx].mean(axis=2).mean(axis=0)  # (R, B, N) -> (B,)
    return _interval(d.mean(), draws)


def auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """ROC AUC: probability that a random positive scores above a random negative (ties 1/2); NaN without both."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    cum = np.cumsum(counts)
    ranks = (cum - (counts - 1) / 2)[inverse]  # 1-based ranks, ties at their average
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_auc(scores: Sequence[float], labels: Sequence[int], groups: Sequence[int], *,
                  resamples: int = 1000, seed: int = 0) -> dict:
    """AUC with a 95 % bootstrap interval that resamples whole groups (e.g. the segments of one response together:
    they share a prefix, so they are not independent)."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels).astype(int)
    g = np.asarray(groups)
    uniq, inverse = np.unique(g, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(uniq.size)]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        pick = np.concatenate([members[i] for i in rng.integers(0, uniq.size, uniq.size)])
        v = auc(s[pick], y[pick])
        if not math.isnan(v):
            draws.append(v)
    point = auc(s, y)
    if not draws:
        return {"mean": point, "lo": None, "hi": None, "se": None}
    return _interval(point, np.asarray(draws))


def paired_method_difference(runs_a: dict[int, tuple[Sequence[int], Sequence[int]]],
                             runs_b: dict[int, tuple[Sequence[int], Sequence[int]]], k: int, *,
                             resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict | None:
    """Gain of method A minus gain of method B over the seeds both have, each seed's pair evaluated on the same
    problems with the same sampling seed: ``{"seeds", "per_seed", "t": t_interval over seeds, "pooled": one problem
    resample per replicate for every seed}``; None without a common seed. ``runs_*``: seed -> (step-0 counts, final
    counts)."""
    seeds = sorted(set(runs_a) & set(runs_b))
    if not seeds:
        return None
    per_seed, diffs = [], []
    for s in seeds:
        (a0, a1), (b0, b1) = runs_a[s], runs_b[s]
        d = (np.asarray(a1, float) - np.asarray(a0, float) - np.asarray(b1, float) + np.asarray(b0, float)) / k
        diffs.append(d)
        per_seed.append(float(d.mean()))
    d = np.stack(diffs)
    draws = d[:, _indices(d.shape[1], resamples, seed)].mean(axis=2).mean(axis=0)
    return {"seeds": seeds, "per_seed": per_seed, "t": t_interval(per_seed), "pooled": _interval(d.mean(), draws)}


def verdict(interval: dict, direction: int) -> str:
    """``supported`` when the 95 % interval lies on the claimed side of 0 (``direction`` +1: A > B, -1: A < B),
    ``contradicted`` when it lies on the other side, ``cannot decide`` when it contains 0 (or does not exist)."""
    lo, hi = interval.get("lo"), interval.get("hi")
    if lo is None or hi is None:
        return "cannot decide"
    if (lo > 0 and direction > 0) or (hi < 0 and direction < 0):
        return "supported"
    if (lo > 0 and direction < 0) or (hi < 0 and direction > 0):
        return "contradicted"
    return "cannot decide"
