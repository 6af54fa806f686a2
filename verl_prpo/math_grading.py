"""Answer extraction and equivalence checking for math reasoning (outcome reward and evaluation).

* :func:`last_boxed` returns the content of the **last** ``\\boxed{...}`` / ``\\fbox{...}`` of a text (nested and
  escaped braces handled; the brace-less form ``\\boxed 5`` too).
* :func:`extract_gsm8k_answer` returns what follows ``####`` (GSM8K reference solutions), commas stripped.
* :func:`is_equivalent` decides whether a predicted answer equals a gold answer: a normalised string comparison
  first (cheap, exact), then `math-verify <https://github.com/huggingface/Math-Verify>`_ (sympy-based
  equivalence: ``0.5 == \\frac{1}{2}``, ``(3, \\frac{\\pi}{2})`` with spacing differences, sets, intervals, ...).
  If math-verify raises or times out, the string comparison's verdict stands.
* :func:`grade` combines them: the model's answer is the last box of its response.

Threads. math-verify implements its timeouts with ``signal.alarm``, which only works in the main thread of the
main interpreter; elsewhere it raises ``ValueError``. verl's reward loop runs ``run_single`` inside an asyncio
Ray actor and grades in executor threads, so :func:`is_equivalent` passes ``parsing_timeout=None`` /
``timeout_seconds=None`` (math-verify's documented way to disable the signal) whenever it is called off the main
thread. To keep runaway sympy work unlikely there, inputs longer than ``max_len`` characters skip math-verify
(string comparison only); callers that need a hard bound (the reward manager) additionally wrap the call in an
``asyncio.wait_for``.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass

logger = logging.getLogger(__name__)

__all__ = [
    "GradeResult",
    "last_boxed",
    "extract_gsm8k_answer",
    "normalize_answer",
    "is_equivalent",
    "grade",
]

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def _match_braces(text: str, open_pos: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_pos``; escaped braces (``\\{``, ``\\}``) are literal."""
    depth = 0
    i = open_pos
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2  # skip the escaped character (\{, \}, \\ ...); command letters are harmless to skip
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _box_starts(text: str) -> list[tuple[int, int]]:
    """(start, end-of-command) of every ``\\boxed`` / ``\\fbox`` command in ``text``, in order."""
    out = []
    for cmd in _BOX_COMMANDS:
        start = text.find(cmd)
        while start != -1:
            end = start + len(cmd)
            # `\boxedfoo` is another command, not a box
            if end >= len(text) or not text[end].isalpha():
                out.append((start, end))
            start = text.find(cmd, end)
    out.sort()
    return out


def last_boxed(text: str | None) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}`` in ``text``, or ``None``.

    * Nested braces are matched (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``), escaped braces are literal
      (``\\boxed{\\{1, 2\\}}`` -> ``\\{1, 2\\}``).
    * The brace-less form ``\\boxed 5`` yields the text up to the next ``$``, newline or end (``5``).
    * If the *last* box is never closed (a response truncated inside its final answer) the result is ``None``:
      an earlier box is not taken as the final answer.
    * An empty box gives ``""`` (callers treat it as "no answer").
    """
    if not text:
        return None
    starts = _box_starts(text)
    if not starts:
        return None
    _, end = starts[-1]
    i = end
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        close = _match_braces(text, i)
        if close is None:
            return None
        return text[i + 1 : close].strip()
    if i == end:
        # `\boxed` directly followed by something that is neither a brace nor a space (e.g. `\boxed$`)
        return None
    m = re.match(r"[^$\n]*", text[i:])
    content = m.group(0).strip() if m else ""
    return content or None


def extract_gsm8k_answer(text: str | None) -> str | None:
    """The answer after the last ``####`` of a GSM8K solution, commas and a leading ``$`` removed; else ``None``."""
    if not text or "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1].strip()
    tail = tail.split("\n", 1)[0].strip()
    tail = tail.replace(",", "").replace("$", "").strip()
    if tail.endswith("."):
        tail = tail[:-1].strip()
    return tail or None


# ---------------------------------------------------------------------------------------------------------------
# normalisation (string fast path, fallback and majority voting)
# ---------------------------------------------------------------------------------------------------------------

_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")


def normalize_answer(ans: str | None) -> str | None:
    """A canonical string form of an answer used for exact comparison and for majority voting.

    Removes ``$``, spaces, ``\\left``/``\\right``, thin spaces (``\\!``, ``\\,``, ``\\;``), ``\\text{}``-style
    wrappers, degree marks, a trailing full stop, ``\\dfrac``/``\\tfrac`` -> ``\\frac``, thousands separators
    in plain numbers (``14{,}400`` / ``14,400`` -> ``14400``) and leading zeros/trailing ``.0`` of integers
    (``025`` -> ``25``, ``27.0`` -> ``27``). Conservative: two strings that normalise equal are the same answer.
    """
    if ans is None:
        return None
    s = str(ans).strip()
    if not s:
        return ""
    s = s.replace("$", "")
    s = s.replace("\\left", "").replace("\\right", "")
    for thin in ("\\!", "\\,", "\\;", "\\:", "\\ ", "~"):
        s = s.replace(thin, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for _ in range(3):  # nested \text{\textbf{...}}
        s2 = _TEXT_CMD.sub(r"\1", s)
        if s2 == s:
            break
        s = s2
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\circ", "")
    s = s.replace("\\%", "").replace("%", "")
    s = re.sub(r"\s+", "", s)
    s = s.rstrip(".")
    # thousands separators in plain numbers
    if re.fullmatch(r"-?\d{1,3}(?:(?:\{,\}|,)\d{3})+(?:\.\d+)?", s):
        s = s.replace("{,}", "").replace(",", "")
    # integers: leading zeros, trailing .0
    m = re.fullmatch(r"(-?)0*(\d+)(?:\.0+)?", s)
    if m:
        s = m.group(1) + m.group(2)
        if s == "-0":
            s = "0"
    return s


# ---------------------------------------------------------------------------------------------------------------
# math-verify
# ---------------------------------------------------------------------------------------------------------------

_MV = None  # lazily imported (parse, verify, LatexExtractionConfig, ExprExtractionConfig, TimeoutException)


def _math_verify():
    global _MV
    if _MV is None:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
        from math_verify.errors import TimeoutException

        _MV = (parse, verify, LatexExtractionConfig, ExprExtractionConfig, TimeoutException)
    return _MV


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _wrap(ans: str) -> str:
    """Give math-verify a LaTeX anchor: a bare answer is wrapped in ``\\boxed{}`` (``$..$`` kept as is)."""
    a = ans.strip()
    if "\\boxed" in a or "\\fbox" in a:
        return a
    if a.startswith("$") and a.endswith("$") and len(a) > 1:
        return a
    return "\\boxed{" + a + "}"


def _math_verify_equal(pred: str, gold: str, timeout: int | None) -> bool:
    parse, verify, LatexCfg, ExprCfg, TimeoutException = _math_verify()
    cfg = [LatexCfg(), ExprCfg()]
    try:
        gold_parsed = parse(_wrap(gold), extraction_config=cfg, parsing_timeout=timeout)
        pred_parsed = parse(_wrap(pred), extraction_config=cfg, parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except TimeoutException:
        logger.debug("math-verify timed out on pred=%r gold=%r", pred[:200], gold[:200])
        return False
    except Exception as exc:  # noqa: BLE001 - math-verify/sympy can raise nearly anything
        logger.debug("math-verify raised %r on pred=%r gold=%r", exc, pred[:200], gold[:200])
        return False


def is_equivalent(
    pred: str | None,
    gold: str | None,
    *,
    timeout: int = 5,
    max_len: int = 1000,
    use_math_verify: bool = True,
    string_fast_path: bool = True,
) -> bool:
    """True if the predicted answer equals the gold answer.

    1. normalised string equality (:func:`normalize_answer`) -> True (skipped with ``string_fast_path=False``);
    2. math-verify: both sides wrapped in ``\\boxed{}`` (unless already boxed or ``$..$``), parsed with LaTeX and
       plain-expression extraction, compared with ``verify(gold, pred)``. Timeouts and exceptions count as
       "not equivalent" (the string comparison of step 1 decided already).

    ``timeout`` (seconds) is applied through math-verify's ``signal.alarm`` in the main thread only; in any other
    thread the timeouts are disabled (``parsing_timeout=None``, ``timeout_seconds=None``) because signals cannot
    be used there, and inputs longer than ``max_len`` characters skip math-verify.
    """
    if pred is None or gold is None:
        return False
    pred = str(pred).strip()
    gold = str(gold).strip()
    if not pred or not gold:
        return False
    np_, ng = normalize_answer(pred), normalize_answer(gold)
    if np_ == ng and string_fast_path:
        return True
    if not use_math_verify:
        return np_ == ng
    main = _in_main_thread()
    if not main and (len(pred) > max_len or len(gold) > max_len):
        return np_ == ng
    try:
        ok = _math_verify_equal(pred, gold, timeout if main else None)
    except ImportError:
        logger.warning("math-verify is not installed; falling back to string comparison (pip install math-verify)")
        return np_ == ng
    return ok or (np_ == ng)


@dataclass(frozen=True)
class GradeResult:
    """Outcome of grading one response: was a final answer found, is it correct, and what was it."""

    answer_found: bool
    correct: bool
    predicted: str | None


def grade(response: str | None, ground_truth, **kwargs) -> GradeResult:
    """Grade a model response against a ground truth answer.

    The predicted answer is the content of the response's last ``\\boxed{}`` (:func:`last_boxed`); a response
    without one (or with an empty one) has ``answer_found=False, correct=False``. ``ground_truth`` may be a string,
    a number (``27.0`` is treated as ``27``) or a list of acceptable answers. Keyword arguments go to
    :func:`is_equivalent`.
    """
    predicted = last_boxed(response)
    if predicted is None or not predicted.strip():
        return GradeResult(answer_found=False, correct=False, predicted=None)
    golds = ground_truth if isinstance(ground_truth, list | tuple) else [ground_truth]
    correct = False
    for g in golds:
        if g is None:
            continue
        if isinstance(g, float) and g.is_integer():
            g = int(g)
        if is_equivalent(predicted, str(g), **kwargs):
            correct = True
            break
    return GradeResult(answer_found=True, correct=correct, predicted=predicted)
