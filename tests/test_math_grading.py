"""Answer extraction and grading (verl_prpo.math_grading)."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_prpo.math_grading import (
    GradeResult,
    extract_gsm8k_answer,
    grade,
    is_equivalent,
    last_boxed,
    normalize_answer,
)

MATH500 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eval" / "math500.jsonl"


# ---------------------------------------------------------------------------------------------------------------
# last_boxed
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is \\boxed{42}.", "42"),
        ("\\boxed{1} then \\boxed{2}", "2"),  # the last one
        ("$\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),  # nested braces
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces are literal
        ("\\boxed{a\\}b}", "a\\}b"),
        ("\\fbox{7}", "7"),
        ("\\boxed{3} and finally \\fbox{4}", "4"),
        ("\\fbox{3} and finally \\boxed{4}", "4"),
        ("so $\\boxed 5$.", "5"),  # brace-less form
        ("so \\boxed 12\nmore", "12"),
        ("\\boxed {9}", "9"),
        ("no box here", None),
        ("", None),
        (None, None),
        ("\\boxed{\\frac{1}{2", None),  # truncated final box
        ("\\boxed{1} ... \\boxed{\\frac{1}{", None),  # an unclosed LAST box is not replaced by an earlier one
        ("\\boxed{}", ""),
        ("\\boxedfoo{3}", None),  # another command
        ("\\boxed{\\text{(C)}}", "\\text{(C)}"),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab12+-{} \\^_", max_size=20).filter(lambda s: s.count("{") == s.count("}")))
def test_last_boxed_roundtrip_balanced(content):
    """Any content whose braces balance (after escapes) comes back unchanged from \\boxed{content}."""
    depth = 0
    i = 0
    while i < len(content):  # keep only contents whose unescaped braces never go negative and end balanced
        c = content[i]
        if c == "\\":
            i += 2
            continue
        depth += {"{": 1, "}": -1}.get(c, 0)
        if depth < 0:
            return
        i += 1
    if depth != 0 or content.endswith("\\"):
        return
    assert last_boxed(f"text \\boxed{{x}} then \\boxed{{{content}}} end") == content.strip()


# ---------------------------------------------------------------------------------------------------------------
# GSM8K answers
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("She makes 9 * 2 = $<<9*2=18>>18.\n#### 18", "18"),
        ("... #### 70,000", "70000"),
        ("#### -5", "-5"),
        ("#### $1,234.50", "1234.50"),
        ("no marker 18", None),
        ("####   ", None),
    ],
)
def test_extract_gsm8k_answer(text, expected):
    assert extract_gsm8k_answer(text) == expected


# ---------------------------------------------------------------------------------------------------------------
# equivalence
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("42", "42"),
        ("0.5", "\\frac{1}{2}"),
        ("\\dfrac{1}{2}", "\\frac12"),
        ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt 3}{2}"),
        ("(3,\\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\{1,2\\}", "\\{2, 1\\}"),
        ("[1,3)", "[1, 3)"),
        ("x^2+2x+1", "(x+1)^2"),
        ("14{,}400", "14400"),
        ("025", "25"),
        ("27", "27.0"),
        ("\\text{Evelyn}", "\\text{Evelyn}"),
        ("30^\\circ", "30"),
        ("2\\sqrt{2}", "\\sqrt{8}"),
    ],
)
def test_equivalent(pred, gold):
    assert is_equivalent(pred, gold)


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("41", "42"),
        ("0.51", "\\frac{1}{2}"),
        ("(3,\\pi)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("x^2+1", "(x+1)^2"),
        ("\\text{Alice}", "\\text{Evelyn}"),
        ("", "1"),
        (None, "1"),
        ("1", None),
    ],
)
def test_not_equivalent(pred, gold):
    assert not is_equivalent(pred, gold)


def test_normalize_answer():
    assert normalize_answer(" \\left( 3, \\frac{\\pi}{2} \\right) ") == "(3,\\frac{\\pi}{2})"
    assert normalize_answer("\\dfrac{1}{2}") == "\\frac{1}{2}"
    assert normalize_answer("\\text{ 5 }") == "5"
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("-007") == "-7"
    assert normalize_answer("1,2") == "1,2"  # not a thousands separator
    assert normalize_answer(None) is None


def test_math_verify_exception_falls_back_to_strings(monkeypatch):
    """What a grading worker runs: math-verify raising is "not equal"; the string comparison still decides."""
    import verl_prpo.math_grading as mg

    def boom(*a, **k):
        raise RuntimeError("math-verify exploded")

    mg._math_verify()  # import it first, then break parse
    parse, verify, L, E, T = mg._MV
    assert mg._math_verify_equal("0.5", "\\frac{1}{2}", 5)
    monkeypatch.setattr(mg, "_MV", (boom, verify, L, E, T))
    assert not mg._math_verify_equal("0.5", "\\frac{1}{2}", 5)


def test_math_verify_timeout_is_caught(monkeypatch):
    import verl_prpo.math_grading as mg

    mg._math_verify()
    parse, verify, L, E, TimeoutException = mg._MV

    def slow(*a, **k):
        raise TimeoutException("Operation timed out!")

    monkeypatch.setattr(mg, "_MV", (slow, verify, L, E, TimeoutException))
    assert not mg._math_verify_equal("0.5", "\\frac{1}{2}", 5)


def test_without_math_verify_strings_decide(monkeypatch):
    """Workers that report math-verify missing: string comparison only (a warning), no error."""
    import verl_prpo.math_grading as mg

    pool = mg.get_grading_pool().start()
    monkeypatch.setattr(pool, "math_verify_available", False)
    assert is_equivalent("\\frac{1}{2}", " \\dfrac{1}{2} ")  # normalised strings
    assert not is_equivalent("0.5", "\\frac{1}{2}")  # would need math-verify
    assert grade("\\boxed{0.5}", "\\frac{1}{2}") == GradeResult(True, False, "0.5", timed_out=False)


def test_works_in_threads():
    """Off the main thread math-verify's signal-based timeout must be disabled (it would raise ValueError)."""
    results: dict[int, list[bool]] = {}

    def work(i):
        results[i] = [
            is_equivalent("0.5", "\\frac{1}{2}"),
            grade("so \\boxed{\\frac{2}{4}}", "0.5").correct,
            is_equivalent("0.6", "\\frac{1}{2}"),
        ]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: [True, True, False] for i in range(4)}


# ---------------------------------------------------------------------------------------------------------------
# grade()
# ---------------------------------------------------------------------------------------------------------------


def test_grade():
    assert grade("... so \\boxed{42}.", "42") == GradeResult(True, True, "42")
    assert grade("... so \\boxed{41}.", "42") == GradeResult(True, False, "41")
    assert grade("the answer is 42", "42") == GradeResult(False, False, None)  # missing box
    assert grade("\\boxed{}", "42") == GradeResult(False, False, None)  # empty box
    assert grade("\\boxed{\\frac{1}{\\sqrt{4}}}", "0.5").correct  # nested braces + math-verify
    assert grade("\\boxed{27}", 27.0).correct  # numeric ground truth
    assert grade("\\boxed{B}", ["A", "B"]).correct  # several acceptable answers
    assert not grade("\\boxed{C}", ["A", "B"]).correct
    assert not grade(None, "1").answer_found


# ---------------------------------------------------------------------------------------------------------------
# MATH500 self-consistency: every reference solution's last box matches its `answer`
# ---------------------------------------------------------------------------------------------------------------


def _math500():
    if not MATH500.exists():
        pytest.skip(f"{MATH500} not present")
    return [json.loads(line) for line in MATH500.read_text().splitlines() if line.strip()]


def test_math500_reference_solutions_are_correct():
    rows = _math500()
    assert len(rows) == 500
    results = [grade(r["solution"], r["answer"]) for r in rows]
    wrong = [(r["unique_id"], res.predicted, r["answer"]) for r, res in zip(rows, results) if not res.correct]
    print(f"MATH500 reference solutions graded correct: {500 - len(wrong)}/500")
    assert all(res.answer_found for res in results)
    assert wrong == []  # 500/500


def test_math500_math_verify_alone():
    """The same check without the string fast path: math-verify alone accepts every reference answer."""
    rows = _math500()
    wrong = [r["unique_id"] for r in rows
             if not is_equivalent(last_boxed(r["solution"]), r["answer"], string_fast_path=False)]
    print(f"MATH500 reference answers accepted by math-verify alone: {500 - len(wrong)}/500")
    assert wrong == []  # 500/500 with math-verify 0.9.0


def _perturb(answer: str) -> str:
    if re.fullmatch(r"-?\d+", answer):
        return str(int(answer) + 1)
    m = re.search(r"\d+", answer)
    if m:  # change the first number: 3\sqrt{2} -> 4\sqrt{2}, (3, \frac{\pi}{2}) -> (4, ...)
        return answer[: m.start()] + str(int(m.group()) + 1) + answer[m.end():]
    return answer + "+1"


def test_math500_perturbed_answers_are_wrong():
    rows = _math500()
    wrongly_accepted = []
    for r in rows:
        bad = _perturb(r["answer"])
        res = grade(r["solution"].rsplit("\\boxed", 1)[0] + "\\boxed{" + bad + "}", r["answer"])
        assert res.answer_found and res.predicted == bad
        if res.correct:
            wrongly_accepted.append((r["unique_id"], bad, r["answer"]))
    assert wrongly_accepted == []
