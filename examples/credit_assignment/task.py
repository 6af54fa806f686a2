"""Chained arithmetic: a multi-step task with verifiable steps, for the credit-assignment testbed.

A problem is a start value and 2-4 operations, e.g. ``"Start with 7. Add 5. Multiply by 3. Subtract 4."``; its
solution has one step per paragraph and the answer in ``\\boxed{}``::

    7 + 5 = 12

    12 * 3 = 36

    36 - 4 = 32

    The answer is \\boxed{32}

Every value stays in [0, MAX_VALUE] so that numbers are at most two digits. A *noisy solver* writes solutions in
which each step's result is wrong with probability ``p_err`` (off by 1-3) and later steps carry the wrong value on
consistently, so mistakes are step-local. ``step_labels`` grades each line against the line before it — the label a
process reward model is trained on. Pure Python: no torch, no verl.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

MAX_VALUE = 99
OPS = {"add": ("Add", "+"), "sub": ("Subtract", "-"), "mul": ("Multiply by", "*")}
STEP_SEPARATOR = "\n\n"
ANSWER_PREFIX = "The answer is "


@dataclass(frozen=True)
class Problem:
    start: int
    ops: tuple[tuple[str, int], ...]  # (op, operand): op in OPS

    @property
    def question(self) -> str:
        return " ".join([f"Start with {self.start}."] + [f"{OPS[o][0]} {b}." for o, b in self.ops])

    @property
    def values(self) -> list[int]:
        """The correct running value after each operation."""
        out, v = [], self.start
        for o, b in self.ops:
            v = apply(o, v, b)
            out.append(v)
        return out

    @property
    def answer(self) -> int:
        return self.values[-1]


def apply(op: str, a: int, b: int) -> int:
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    raise ValueError(f"unknown op {op!r}")


def sample_problem(rng: random.Random, min_ops: int = 2, max_ops: int = 4) -> Problem:
    """Start in [2, 9]; add/subtract 1-9, multiply by 2 or 3; every running value in [0, MAX_VALUE]."""
    start = rng.randint(2, 9)
    ops, v = [], start
    for _ in range(rng.randint(min_ops, max_ops)):
        choices = [("add", rng.randint(1, 9)), ("sub", rng.randint(1, 9)), ("mul", rng.randint(2, 3))]
        legal = [(o, b) for o, b in choices if 0 <= apply(o, v, b) <= MAX_VALUE]
        o, b = rng.choice(legal)
        ops.append((o, b))
        v = apply(o, v, b)
    return Problem(start, tuple(ops))


def problems(n: int, seed: int, exclude: set[str] | None = None) -> list[Problem]:
    """``n`` distinct problems (by question text), none of whose questions is in ``exclude``."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    out = []
    while len(out) < n:
        p = sample_problem(rng)
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


def format_step(a: int, op: str, b: int, r: int) -> str:
    return f"{a} {OPS[op][1]} {b} = {r}"


def format_solution(problem: Problem, results: list[int] | None = None) -> str:
    """The solution text; ``results`` are the stated result of each step (default: the correct ones)."""
    results = problem.values if results is None else results
    lines, a = [], problem.start
    for (op, b), r in zip(problem.ops, results):
        lines.append(format_step(a, op, b, r))
        a = r
    lines.append(f"{ANSWER_PREFIX}\\boxed{{{a}}}")
    return STEP_SEPARATOR.join(lines)


def noisy_results(problem: Problem, rng: random.Random, p_err: float) -> list[int]:
    """Each step's result is off by 1-3 with probability ``p_err``; later steps build on the stated value."""
    out, a = [], problem.start
    for j, (op, b) in enumerate(problem.ops):
        r = apply(op, a, b)
        if rng.random() < p_err:
            # only deviations after which the rest of the chain stays in [0, MAX_VALUE]
            deltas = [d for d in (-3, -2, -1, 1, 2, 3) if _chain_in_range(r + d, problem.ops[j + 1:])]
            r += rng.choice(deltas) if deltas else 0
        out.append(r)
        a = r
    return out


def _chain_in_range(v: int, ops) -> bool:
    for op, b in ((None, None), *ops):
        if op is not None:
            v = apply(op, v, b)
        if not 0 <= v <= MAX_VALUE:
            return False
    return True


def noisy_solution(problem: Problem, rng: random.Random, p_err: float) -> str:
    return format_solution(problem, noisy_results(problem, rng, p_err))


_STEP = re.compile(r"^\s*(\d+) ([+\-*]) (\d+) = (\d+)\s*$")
_ANSWER = re.compile(r"^\s*The answer is \\boxed\{(\d+)\}\s*$")
_SYM = {sym: op for op, (_, sym) in OPS.items()}


def split_steps(solution: str) -> list[str]:
    """The solution's steps: its paragraphs (empty ones dropped)."""
    return [s for s in solution.split(STEP_SEPARATOR) if s.strip()]


def step_labels(problem: Problem, steps: list[str]) -> list[bool]:
    """Whether each step follows from the line before it.

    Step j (an equation) is correct when its left operand is the previous line's result (the start value for the
    first step), its operator and operand are the problem's j-th operation, and its result is right. The answer line
    is correct when every operation has been done and it boxes the last line's result. Anything else (an extra
    step, unparsable text) is wrong.
    """
    labels, prev, done = [], problem.start, 0
    for text in steps:
        m, a = _STEP.match(text), _ANSWER.match(text)
        if m:
            x, sym, y, r = int(m[1]), m[2], int(m[3]), int(m[4])
            ok = (done < len(problem.ops) and x == prev and (_SYM[sym], y) == problem.ops[done]
                  and r == apply(_SYM[sym], x, y))
            labels.append(ok)
            prev, done = r, done + 1
        elif a:
            labels.append(done == len(problem.ops) and int(a[1]) == prev)
            prev = None  # nothing may follow the answer
            done = len(problem.ops) + 1
        else:
            labels.append(False)
    return labels


def prefix_is_right(problem: Problem, text: str) -> bool:
    """Whether everything in ``text`` so far is still right: it is a prefix of the problem's correct solution (the
    solution format is fixed, so the right continuation is unique). Monotone: once False, False for every longer
    text; unlike ``step_labels``, a step that carries an earlier wrong value on is not right. The prefix PRM's
    label (``examples.credit_assignment.prefix_prm``)."""
    return format_solution(problem).startswith(text)


def first_wrong_step(problem: Problem, solution: str) -> tuple[int, int] | None:
    """Character span ``[start, end)`` in ``solution`` of its first step (non-blank paragraph) that ``step_labels``
    marks wrong; None when every step is right (a solution can still be wrong without a wrong step: it stops before
    the answer line)."""
    pos, spans = 0, []
    for part in solution.split(STEP_SEPARATOR):
        if part.strip():
            spans.append((pos, pos + len(part)))
        pos += len(part) + len(STEP_SEPARATOR)
    labels = step_labels(problem, [solution[a:b] for a, b in spans])
    return next(((a, b) for (a, b), ok in zip(spans, labels) if not ok), None)


def prompt_ids(tokenizer, question: str) -> list[int]:
    """The policy's prompt for ``question``: one user message in the tokenizer's chat template with the generation
    prompt (what verl's dataset builds from the parquet's ``prompt`` column)."""
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False)


def boxed_answer(solution: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (no nesting in this task)."""
    found = re.findall(r"\\boxed\{([^{}]*)\}", solution)
    return found[-1] if found else None


def is_correct(problem: Problem, solution: str) -> bool:
    """Outcome grading for the testbed's own evaluation: the last boxed value equals the answer."""
    a = boxed_answer(solution)
    return a is not None and a.strip() == str(problem.answer)


def corrupt_solution(problem: Problem, rng: random.Random, p_err: float) -> str:
    """A solution with errors of the kinds a sampling policy makes, for PRM training: a noisy solution, then at most
    one of: a step's left operand miscopied, its operand or operator changed, a step skipped, or a wrong boxed value.
    """
    results = noisy_results(problem, rng, p_err)
    lines, a = [], problem.start
    for (op, b), r in zip(problem.ops, results):
        lines.append([a, op, b, r])
        a = r
    answer = a
    kind = rng.choice(["none", "operand", "operator", "miscopy", "skip", "answer"])
    j = rng.randrange(len(lines))
    if kind == "operand":
        lines[j][2] = rng.choice([x for x in range(1, 10) if x != lines[j][2]])
        lines[j][3] = apply(lines[j][1], lines[j][0], lines[j][2]) if rng.random() < 0.5 else lines[j][3]
    elif kind == "operator":
        lines[j][1] = rng.choice([o for o in OPS if o != lines[j][1]])
        lines[j][3] = apply(lines[j][1], lines[j][0], lines[j][2]) if rng.random() < 0.5 else lines[j][3]
    elif kind == "miscopy":
        lines[j][0] = max(0, lines[j][0] + rng.choice([-2, -1, 1, 2]))
        lines[j][3] = apply(lines[j][1], lines[j][0], lines[j][2]) if rng.random() < 0.5 else lines[j][3]
    elif kind == "skip" and len(lines) > 1:
        del lines[j]
        if j < len(lines):
            lines[j][0] = lines[j - 1][3] if j > 0 else problem.start
            lines[j][3] = apply(lines[j][1], lines[j][0], lines[j][2])
        answer = lines[-1][3]
    if kind == "answer":
        answer = max(0, answer + rng.choice([-2, -1, 1, 2]))
    elif kind != "skip":
        answer = lines[-1][3]
    text = [format_step(x, o, y, max(r, 0)) for x, o, y, r in lines] + [f"{ANSWER_PREFIX}\\boxed{{{answer}}}"]
    return STEP_SEPARATOR.join(text)
