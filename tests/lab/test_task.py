"""The testbed's task: generator, solutions, noisy solver, step labels and grading, on hand-written cases."""

from __future__ import annotations

import json
import random

import pytest

from examples.credit_assignment import task
from examples.credit_assignment.task import Problem

P = Problem(7, (("add", 5), ("mul", 3), ("sub", 4)))


def test_question_values_and_solution_text():
    assert P.question == "Start with 7. Add 5. Multiply by 3. Subtract 4."
    assert P.values == [12, 36, 32] and P.answer == 32
    assert task.format_solution(P) == "7 + 5 = 12\n\n12 * 3 = 36\n\n36 - 4 = 32\n\nThe answer is \\boxed{32}"


def test_step_labels_hand_cases():
    lab = lambda text: task.step_labels(P, task.split_steps(text))  # noqa: E731
    assert lab(task.format_solution(P)) == [True, True, True, True]
    # a wrong result, then steps consistent with it: only the wrong step is wrong; the answer follows the last line
    assert lab("7 + 5 = 13\n\n13 * 3 = 39\n\n39 - 4 = 35\n\nThe answer is \\boxed{35}") == [False, True, True, True]
    # a miscopied operand: wrong, though its own arithmetic is right
    assert lab("7 + 5 = 12\n\n11 * 3 = 33\n\n33 - 4 = 29\n\nThe answer is \\boxed{29}") == [True, False, True, True]
    # the wrong operation (the problem says multiply by 3)
    assert lab("7 + 5 = 12\n\n12 + 3 = 15\n\n15 - 4 = 11\n\nThe answer is \\boxed{11}") == [True, False, True, True]
    # a boxed value that is not the last line's result
    assert lab("7 + 5 = 12\n\n12 * 3 = 36\n\n36 - 4 = 32\n\nThe answer is \\boxed{33}") == [True, True, True, False]
    # a skipped step: the next equation is not the 2nd operation, and the answer comes too early
    assert lab("7 + 5 = 12\n\n12 - 4 = 8\n\nThe answer is \\boxed{8}") == [True, False, False]
    # unparsable text and a step after the answer
    assert lab("seven plus five\n\nThe answer is \\boxed{32}") == [False, False]
    assert lab(task.format_solution(P) + "\n\n32 + 1 = 33") == [True, True, True, True, False]


def test_outcome_grading():
    assert task.is_correct(P, "36 - 4 = 32\n\nThe answer is \\boxed{32}")
    assert not task.is_correct(P, "The answer is \\boxed{31}")
    assert not task.is_correct(P, "no box here")
    assert task.boxed_answer("\\boxed{1} then \\boxed{2}") == "2"


def test_generator_keeps_values_in_range_and_is_seeded():
    ps = task.problems(300, seed=3)
    assert len({p.question for p in ps}) == 300
    for p in ps:
        assert 2 <= len(p.ops) <= 4
        assert 2 <= p.start <= 9
        assert all(0 <= v <= task.MAX_VALUE for v in p.values)
        assert all((o in ("add", "sub") and 1 <= b <= 9) or (o == "mul" and b in (2, 3)) for o, b in p.ops)
    assert task.problems(5, seed=3) == ps[:5]
    held_out = {p.question for p in ps[:50]}
    assert not held_out & {p.question for p in task.problems(200, seed=4, exclude=held_out)}


def test_noisy_solver_errors_are_step_local_and_at_the_rate_asked():
    rng = random.Random(0)
    n_wrong = n_steps = 0
    for p in task.problems(400, seed=5):
        sol = task.noisy_solution(p, rng, 0.25)
        labels = task.step_labels(p, task.split_steps(sol))
        assert labels[-1]  # the answer always boxes the last stated value
        n_wrong += labels.count(False)
        n_steps += len(labels) - 1
        assert task.is_correct(p, sol) == all(labels) or not all(labels)
        values = [int(s.split(" = ")[1]) for s in task.split_steps(sol)[:-1]]
        assert all(0 <= v <= task.MAX_VALUE for v in values)
    assert 0.2 < n_wrong / n_steps < 0.3
    # p_err = 0: the solver is exact
    assert all(task.is_correct(p, task.noisy_solution(p, rng, 0.0)) for p in task.problems(50, seed=6))


def test_corrupted_solutions_parse_and_contain_negatives():
    rng = random.Random(1)
    labels = [v for p in task.problems(300, seed=7) for v in task.step_labels(p, task.split_steps(
        task.corrupt_solution(p, rng, 0.2)))]
    assert 0.4 < sum(labels) / len(labels) < 0.8


@pytest.mark.parametrize("text,expected", [("7 + 5 = 12\n\n12 * 3 = 36\n\n36 - 4 = 32\n\nThe answer is \\boxed{32}", 1.0),
                                           ("36 - 4 = 31\n\nThe answer is \\boxed{31}", -1.0),
                                           ("36 - 4 = 32", -1.0)])
def test_prpo_reward_manager_grade_agrees_with_the_task(text, expected):
    # the training reward (math-verify on the last \boxed{}) and the testbed's own evaluation agree
    from verl_prpo.math_grading import grade

    assert (1.0 if grade(text, "32").correct else -1.0) == expected
    assert task.is_correct(P, text) == (expected > 0)


def _run_file(out, method, seed, budget):
    ev = [{"step": 0, "greedy_accuracy": 0.5, "sampled_accuracy": 0.3, "pass_at_k": 0.6, "response_length": 30.0,
           "entropy": 0.1}]
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "runs" / f"{method}_s{seed}.json").write_text(json.dumps(
        {"method": method, "seed": seed, "steps": 0, "wall_s": 1.0, "eval": ev, "budget": budget}))


class _FakeTestbed:
    manifest = {"task": {"name": "t"}, "policy": {"params": 1, "sft_accuracy": 0.3, "sft_greedy_accuracy": 0.8},
                "prm": {"params": 1, "step_accuracy": 0.9, "step_auc": 0.9, "eval_steps": 10}}


def test_aggregate_records_the_runs_budget_and_refuses_to_mix_budgets(tmp_path):
    from examples.credit_assignment.grid import aggregate

    out = tmp_path / "grid"
    b = {"steps": 20, "prompts_per_step": 16, "n": 16, "lr": 5e-5, "updates_per_step": 2, "k": 4}
    _run_file(out, "grpo", 0, b)
    _run_file(out, "prpo", 0, b)
    res = aggregate(out, _FakeTestbed(), k=4)
    assert res["task"]["budget"] == b and len(res["runs"]) == 2
    _run_file(out, "prl", 0, {**b, "n": 8})
    with pytest.raises(ValueError, match="different budgets"):
        aggregate(out, _FakeTestbed(), k=4)


def test_evaluate_does_not_import_build():
    # the import cycle build <-> evaluate is gone: evaluate (and task) stand without build
    import ast
    from pathlib import Path

    import examples.credit_assignment.evaluate as ev

    tree = ast.parse(Path(ev.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "examples.credit_assignment.build" not in imported


def test_build_progress_reports_elapsed_and_remaining(capsys, monkeypatch):
    import logging

    import torch

    from examples.credit_assignment import build

    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    model = torch.nn.Linear(2, 1)
    build._fit(model, lambda: model(torch.ones(1, 2)).sum() ** 2, steps=4, lr=0.1, name="unit", log_every=2)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("unit: step 2/4") and "min elapsed" in err[0] and "min left" in err[0]
