"""The prefix PRM's labels and training examples (examples/credit_assignment/prefix_prm.py, task.prefix_is_right)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from examples.credit_assignment import task
from examples.credit_assignment.task import Problem

REPO = Path(__file__).resolve().parents[2]
P = Problem(7, (("add", 5), ("mul", 3), ("sub", 4)))  # 7 + 5 = 12, 12 * 3 = 36, 36 - 4 = 32


def test_prefix_labels_on_a_hand_made_solution():
    right = task.format_solution(P)
    assert task.prefix_is_right(P, "") and task.prefix_is_right(P, right)
    assert task.prefix_is_right(P, "7 + 5 = 1")  # can still become 12
    assert not task.prefix_is_right(P, "7 + 5 = 13")
    assert task.prefix_is_right(P, "7 + 5 = 12\n\n12 * 3 = 3")
    # step-local labels call the second step right (it carries 13 on correctly); the prefix label does not
    wrong = "7 + 5 = 13\n\n13 * 3 = 39\n\n39 - 4 = 35\n\nThe answer is \\boxed{35}"
    assert task.step_labels(P, task.split_steps(wrong)) == [False, True, True, True]
    assert not task.prefix_is_right(P, wrong[:len("7 + 5 = 13\n\n13 * 3")])
    assert not task.prefix_is_right(P, right + "\n\n1")  # anything after the answer is wrong


def test_first_wrong_step_span():
    wrong = "7 + 5 = 12\n\n12 * 3 = 35\n\n35 - 4 = 31\n\nThe answer is \\boxed{31}"
    a, b = task.first_wrong_step(P, wrong)
    assert wrong[a:b] == "12 * 3 = 35"
    assert task.first_wrong_step(P, task.format_solution(P)) is None
    assert task.first_wrong_step(P, "7 + 5 = 12\n\n12 * 3 = 36") is None  # incomplete but no wrong step
    a, b = task.first_wrong_step(P, "7 + 5 = 12\n\nhello\n\n")
    assert (a, b) == (12, 17)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(REPO / "testbed_artifacts" / "v3" / "tokenizer")


def test_pieces_at_cuts_rebuild_the_text_and_merge_blank_pieces(tokenizer):
    from examples.credit_assignment.prefix_prm import pieces_at_cuts, random_cuts

    text = "7 + 5 = 12\n\n12 * 3 = 36"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    nl = [i for i, t in enumerate(ids) if tokenizer.decode([t]) == "\n\n"][0]
    pieces = pieces_at_cuts(tokenizer, ids, [nl, nl + 1])  # the "\n\n" token alone: blank, joins the first piece
    assert [t for t, _ in pieces] == ["7 + 5 = 12\n\n", "12 * 3 = 36"]
    assert [e for _, e in pieces] == [nl + 1, len(ids)]
    every = pieces_at_cuts(tokenizer, ids, list(range(1, len(ids))))
    non_blank = sum(1 for t in ids if tokenizer.decode([t]).strip())  # " " and "\n\n" tokens join the piece before
    assert "".join(t for t, _ in every) == text and len(every) == non_blank < len(ids)
    rng = random.Random(0)
    for _ in range(50):
        cuts = random_cuts(len(ids), rng)
        assert cuts == sorted(set(cuts)) and all(1 <= c < len(ids) for c in cuts)
        assert "".join(t for t, _ in pieces_at_cuts(tokenizer, ids, cuts)) == text


def test_prefix_example_labels_flip_at_the_first_wrong_token_and_sit_on_separators(tokenizer):
    from transformers import Qwen2Config, Qwen2ForTokenClassification

    from examples.credit_assignment.build import STEP_TAG
    from examples.credit_assignment.prefix_prm import _adapter, prefix_example

    model = Qwen2ForTokenClassification(Qwen2Config(vocab_size=384, hidden_size=32, intermediate_size=64,
                                                    num_hidden_layers=1, num_attention_heads=1,
                                                    num_key_value_heads=1, num_labels=2))
    adapter = _adapter(model, tokenizer)
    sol = "7 + 5 = 12\n\n12 * 3 = 35\n\n35 - 4 = 31\n\nThe answer is \\boxed{31}"
    n = len(tokenizer(sol, add_special_tokens=False)["input_ids"])
    ids, pos, labels = prefix_example(adapter, tokenizer, P, sol, list(range(1, n)))
    sep = tokenizer.convert_tokens_to_ids(STEP_TAG)
    assert all(ids[p] == sep for p in pos) and len(pos) == len(labels)
    first_bad = labels.index(False)
    assert all(labels[:first_bad]) and not any(labels[first_bad:])  # monotone
    # the first wrong token is the "5" of "35": the text up to it is "7 + 5 = 12\n\n12 * 3 = 35"
    text_so_far = tokenizer.decode([t for t in ids[:pos[first_bad]] if t != sep])
    assert text_so_far.rstrip().endswith("12 * 3 = 35")  # its "\n\n" piece is blank: merged into it


def test_committed_prefix_prm_verifies_and_leaves_the_testbed_checksums_alone():
    from examples.credit_assignment.build import read_checksums
    from examples.credit_assignment.prefix_prm import FOLDER, MANIFEST, PrefixPRMSettings, pinned_prefix_prm

    root = REPO / "testbed_artifacts" / "v3"
    if not (root / FOLDER / MANIFEST).exists():
        pytest.skip("prefix PRM not pinned yet")
    assert pinned_prefix_prm(PrefixPRMSettings(), REPO / "testbed_artifacts") == root / FOLDER
    assert not any(rel.startswith(FOLDER) for rel in read_checksums(root))  # the testbed's own list is unchanged
    m = json.loads((root / FOLDER / MANIFEST).read_text())
    assert m["origin"] == "pinned" and m["prefix_prm"]["random_cuts"]["auc"] > 0.5
