"""Confidence intervals of the grid (examples/credit_assignment/intervals.py) on cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from examples.credit_assignment import intervals as iv


def test_bootstrap_accuracy_matches_the_binomial_standard_error():
    # 400 problems, k = 1, accuracy 0.3: the problem bootstrap's half-width is 1.96 sqrt(p (1 - p) / N)
    counts = [1] * 120 + [0] * 280
    r = iv.bootstrap_accuracy(counts, 1, seed=1)
    assert r["mean"] == pytest.approx(0.3)
    want = 1.96 * math.sqrt(0.3 * 0.7 / 400)
    assert (r["hi"] - r["lo"]) / 2 == pytest.approx(want, rel=0.1)
    assert r["lo"] < 0.3 < r["hi"]


def test_paired_gain_cancels_problem_difficulty():
    # every problem gains exactly 1 of 4 samples: the gain is 0.25 with no spread, however hard the problems are
    rng = np.random.default_rng(0)
    before = rng.integers(0, 4, 300)
    r = iv.bootstrap_gain(before, before + 1, 4)
    assert r["mean"] == pytest.approx(0.25) and r["lo"] == pytest.approx(0.25) and r["hi"] == pytest.approx(0.25)
    # independent noise: half-width 1.96 sd(d) / sqrt(N)
    after = np.clip(before + rng.integers(-1, 2, 300), 0, 4)
    d = (after - before) / 4
    r = iv.bootstrap_gain(before, after, 4, seed=3)
    assert r["mean"] == pytest.approx(d.mean())
    assert (r["hi"] - r["lo"]) / 2 == pytest.approx(1.96 * d.std(ddof=1) / math.sqrt(300), rel=0.12)
    with pytest.raises(ValueError, match="same problems"):
        iv.bootstrap_gain([1, 2], [1, 2, 3], 4)


def test_pooled_gain_is_the_mean_of_the_runs_gains_and_narrower_than_one_run():
    rng = np.random.default_rng(5)
    pairs = []
    for shift in (0, 1, 2):
        a = rng.integers(0, 8, 200)
        pairs.append((a, np.clip(a + rng.integers(-2, 3, 200) + (shift == 2), 0, 8)))
    pooled = iv.pooled_gain(pairs, 8)
    singles = [iv.bootstrap_gain(a, b, 8) for a, b in pairs]
    assert pooled["mean"] == pytest.approx(np.mean([s["mean"] for s in singles]))
    assert pooled["hi"] - pooled["lo"] < min(s["hi"] - s["lo"] for s in singles)


def test_t_interval_by_hand():
    r = iv.t_interval([0.01, 0.03, 0.05])  # mean 0.03, sd 0.02, t(2) = 4.303
    assert r["mean"] == pytest.approx(0.03) and r["sd"] == pytest.approx(0.02)
    assert r["hi"] - r["mean"] == pytest.approx(4.303 * 0.02 / math.sqrt(3))
    assert iv.t_interval([0.2])["lo"] is None
    assert iv.t975(40) == 1.96 and iv.t975(17) == iv.t975(15)


def test_auc_on_constructed_examples():
    assert iv.auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert iv.auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert iv.auc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5  # ties count 1/2
    # 3 positives x 2 negatives: pairs won 1 + 1 + 0.5 (tie) + 1 + 0 + ... counted by hand
    assert iv.auc([0.9, 0.4, 0.3, 0.4, 0.2], [1, 1, 1, 0, 0]) == pytest.approx((2 + 1.5 + 1) / 6)
    assert math.isnan(iv.auc([0.1, 0.2], [1, 1]))
    # grouped bootstrap: a perfect separator stays at 1
    r = iv.bootstrap_auc([0.1, 0.9, 0.2, 0.8], [0, 1, 0, 1], [0, 0, 1, 1], resamples=50)
    assert r["mean"] == 1.0 and r["lo"] == 1.0


def test_paired_method_difference_and_verdicts():
    a0 = np.array([1, 2, 3, 0] * 50)
    runs_a = {0: (a0, a0 + 1), 1: (a0, a0 + 1), 2: (a0, a0)}  # gains 1/4, 1/4, 0 of the 4 samples
    runs_b = {0: (a0, a0), 1: (a0, a0), 3: (a0, a0)}
    r = iv.paired_method_difference(runs_a, runs_b, 4)
    assert r["seeds"] == [0, 1] and r["per_seed"] == [0.25, 0.25]
    assert r["pooled"]["mean"] == pytest.approx(0.25) and r["pooled"]["lo"] == pytest.approx(0.25)
    assert iv.verdict(r["pooled"], +1) == "supported" and iv.verdict(r["pooled"], -1) == "contradicted"
    assert iv.verdict({"lo": -0.1, "hi": 0.2}, +1) == "cannot decide"
    assert iv.verdict(iv.t_interval([0.1]), +1) == "cannot decide"
    assert iv.paired_method_difference(runs_a, {5: (a0, a0)}, 4) is None


def test_eval_precision_study_splits_within_and_between_problem_variance():
    from examples.credit_assignment.eval_precision import study

    rng = np.random.default_rng(0)
    p = rng.uniform(0.1, 0.9, 300)  # the same policy twice: the true per-problem gain is 0 (no between variance)
    before = (rng.random((300, 32)) < p[:, None]).astype(int).tolist()
    after = (rng.random((300, 32)) < p[:, None]).astype(int).tolist()
    rows = {r["k"]: r for r in study(before, after, [4, 32])}
    assert rows[32]["gain_half_width"] < rows[4]["gain_half_width"] / 2  # about 1/sqrt(8) as wide
    for r in rows.values():
        assert r["var_between"] < 0.25 * r["var_within"]
