"""Shaped toy reward for the tiny CPU demo (``reward.custom_reward_function``).

A random-initialised 100k-parameter policy never writes a correct answer, so a pure correctness reward is constant
and every group-relative advantage is 0: nothing would train. This reward keeps correctness on top (1.0 for a
correct boxed answer) and adds a small shaped term, the fraction of the ground-truth answer's characters that
appear in the response, so rewards differ within a group and the loop visibly learns. It exists for the CPU
quickstart and the end-to-end tests only; recipes use the ``prpo`` reward manager.
"""

from __future__ import annotations


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    from verl_prpo.math_grading import grade

    if grade(solution_str, str(ground_truth)).correct:
        return 1.0
    gt = str(ground_truth)
    if not gt:
        return 0.0
    hits = sum(1 for ch in gt if ch in solution_str)
    return 0.5 * hits / len(gt)
