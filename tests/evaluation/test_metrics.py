"""pass@k, avg@k, maj@k, greedy pass@1 (verl_prpo.evaluation.metrics)."""

from __future__ import annotations

from math import comb

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_prpo.evaluation.metrics import avg_at_k, greedy_pass_at_1, maj_at_k, majority_answer, pass_at_k


# ---------------------------------------------------------------------------------------------------------------
# pass@k
# ---------------------------------------------------------------------------------------------------------------


def test_pass_at_k_n_equals_k():
    # with n == k, pass@k is 1 iff at least one sample is correct
    assert pass_at_k(8, 0, 8) == 0.0
    assert pass_at_k(8, 1, 8) == 1.0
    assert pass_at_k(8, 8, 8) == 1.0
    assert pass_at_k(1, 1, 1) == 1.0
    assert pass_at_k(1, 0, 1) == 0.0


def test_pass_at_k_n_greater_than_k():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 = c/n
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 1, 2) == 0.5
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # n - c < k: every k-subset has a correct sample
    assert pass_at_k(5, 4, 2) == 1.0


def test_pass_at_k_c_zero_and_c_n():
    for n, k in [(1, 1), (8, 1), (8, 4), (16, 8)]:
        assert pass_at_k(n, 0, k) == 0.0
        assert pass_at_k(n, n, k) == 1.0


def test_pass_at_k_errors():
    with pytest.raises(ValueError, match="n >= k"):
        pass_at_k(4, 1, 8)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, -1, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 0)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_binomials(nck):
    n, c, k = nck
    expected = 1 - comb(n - c, k) / comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_large_n_is_exact():
    # float binomials would overflow here; the product form with rationals does not
    assert 0.0 < pass_at_k(2000, 1, 1000) < 1.0
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------------------------
# avg@k, greedy
# ---------------------------------------------------------------------------------------------------------------


def test_avg_at_k():
    assert avg_at_k(8, 3, 8) == 3 / 8
    assert avg_at_k(8, 3, 1) == 3 / 8  # unbiased estimate of one sample's accuracy from 8 samples
    assert avg_at_k(8, 0, 4) == 0.0
    assert avg_at_k(8, 8, 8) == 1.0
    with pytest.raises(ValueError):
        avg_at_k(4, 1, 8)


def test_greedy_pass_at_1():
    assert greedy_pass_at_1([True, False, True, True]) == 0.75
    assert greedy_pass_at_1([False]) == 0.0


# ---------------------------------------------------------------------------------------------------------------
# maj@k
# ---------------------------------------------------------------------------------------------------------------


def test_maj_at_k_plain_majority():
    preds = ["3", "5", "5", "7"]
    correct = [False, True, True, False]
    assert maj_at_k(preds, correct, 4) == 1.0
    assert maj_at_k(["3", "3", "5"], [False, False, True], 3) == 0.0


def test_maj_at_k_ties_go_to_first_seen():
    # "3" and "5" both have two votes; "3" appears first
    preds = ["3", "5", "5", "3"]
    assert maj_at_k(preds, [True, False, False, True], 4) == 1.0
    assert maj_at_k(preds, [False, True, True, False], 4) == 0.0
    assert majority_answer(preds) == (0, "3")
    # all different: the first answer wins
    assert majority_answer(["a", "b", "c"]) == (0, "a")
    assert majority_answer([None, "b", "c"]) == (1, "b")


def test_maj_at_k_uses_first_k_samples_only():
    preds = ["1", "2", "2", "2"]
    correct = [True, False, False, False]
    assert maj_at_k(preds, correct, 1) == 1.0
    assert maj_at_k(preds, correct, 4) == 0.0
    with pytest.raises(ValueError):
        maj_at_k(preds, correct, 5)


def test_maj_at_k_normalised_votes_and_missing_answers():
    # "\\dfrac{1}{2}" and "\\frac{1}{2}" normalise equal; None (no boxed answer) does not vote
    preds = [None, None, "\\dfrac{1}{2}", "\\frac{1}{2}", "3"]
    correct = [False, False, True, True, False]
    assert maj_at_k(preds, correct, 5) == 1.0
    assert maj_at_k([None, None], [False, False], 2) == 0.0
    assert majority_answer([None, ""]) == (None, None)
