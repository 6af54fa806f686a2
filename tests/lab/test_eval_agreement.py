"""Reading verl's validation dump against the held-out problems (examples/credit_assignment/eval_agreement.py)."""

from __future__ import annotations

import json

import pytest

from examples.credit_assignment import eval_agreement as ea
from examples.credit_assignment import task
from examples.credit_assignment.task import Problem

PROBLEMS = [Problem(7, (("add", 5), ("mul", 3))), Problem(2, (("add", 1), ("sub", 2)))]


def _dump(tmp_path, rows):
    d = tmp_path / "dump"
    d.mkdir(parents=True)
    (d / "0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def _row(p, output, acc):
    return {"input": f"user\n{p.question}\nassistant\n", "output": output, "score": 1.0 if acc else -1.0,
            "acc": float(acc), "step": 0}


def test_dump_is_mapped_to_problems_and_both_graders_are_counted(tmp_path):
    right0, right1 = task.format_solution(PROBLEMS[0]), task.format_solution(PROBLEMS[1])
    rows = [_row(PROBLEMS[1], right1, True), _row(PROBLEMS[0], right0, True), _row(PROBLEMS[0], "7 + 5 = 13", False),
            _row(PROBLEMS[1], right1, False)]  # verl's acc and the task grader disagree on the last one
    r = ea.read_verl_dump(_dump(tmp_path, rows), PROBLEMS)
    assert r["samples"] == [2, 2] and r["acc_counts"] == [1, 1] and r["task_counts"] == [1, 2]
    assert r["inputs"][0].startswith("user\nStart with 7.")


def test_dump_with_a_foreign_prompt_or_missing_problems_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a held-out question"):
        ea.read_verl_dump(_dump(tmp_path, [_row(Problem(9, (("add", 1),)), "x", False)]), PROBLEMS)
    with pytest.raises(ValueError, match="covers 1 of 2"):
        ea.read_verl_dump(_dump(tmp_path / "b", [_row(PROBLEMS[0], "x", False)]), PROBLEMS)
