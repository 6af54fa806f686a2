"""PRM accuracy at the cuts (examples/credit_assignment/prm_at_cuts.py): segment labels and token roles by hand."""

from __future__ import annotations

from examples.credit_assignment import prm_at_cuts as pc
from examples.credit_assignment.task import Problem

P = Problem(7, (("add", 5), ("mul", 3)))  # 7 + 5 = 12, 12 * 3 = 36
WRONG = "7 + 5 = 12\n\n12 * 3 = 35\n\n35 + 1 = 36\n\nThe answer is \\boxed{36}"


def test_segment_labels_mark_the_segment_with_the_first_wrong_step():
    i = WRONG.index("35")
    spans = [(0, 12), (12, i), (i, i + 4), (i + 4, len(WRONG))]  # step 1, "12 * 3 = ", "35\n\n", the rest
    labels = pc.segment_labels(P, WRONG, spans)
    assert [lab["first_wrong"] for lab in labels] == [False, True, True, False]
    assert [lab["right_prefix"] for lab in labels] == [True, True, False, False]
    assert [lab["after"] for lab in labels] == [False, False, False, True]
    right = "7 + 5 = 12\n\n12 * 3 = 36\n\nThe answer is \\boxed{36}"
    assert not any(lab["first_wrong"] for lab in pc.segment_labels(P, right, [(0, 5), (5, len(right))]))


def test_token_roles_in_a_step_line():
    t = "7 + 5 = 12\n\n12 * 3 = 36\n\nThe answer is \\boxed{36}"
    role = lambda s, e=None: pc.token_role(t, s, e if e is not None else s + 1)  # noqa: E731
    assert role(0) == "left operand"
    assert pc.token_role(t, 1, 3) == "operator"  # " +"
    assert pc.token_role(t, 3, 4) == "operand"  # a lone space before the operand: the operand's role
    assert role(4) == "operand"
    assert pc.token_role(t, 5, 7) == "equals"  # " ="
    assert role(8) == "result" and role(9) == "result"
    assert pc.token_role(t, 10, 12) == "paragraph break"
    assert role(12) == "left operand"  # a step start
    assert role(t.index("The")) == "answer line"
    assert pc.token_role(t, len(t), len(t)) == "eos"
