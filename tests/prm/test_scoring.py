"""Token-space PRM scoring: segments decoded with the POLICY tokenizer, scored by a PRM with a DIFFERENT tokenizer,
scores mapped back onto the right policy tokens; questions from the batch; metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from examples.credit_assignment.tiny_assets import BOXED_INSTRUCTION, build_prm, build_tiny_assets, build_tokenizer
from verl_prpo.prm import (
    PRMConfig,
    load_prm,
    prm_metrics,
    question_from_messages,
    questions_from_batch,
    score_batch,
    segment_texts,
)

PROBLEMS = [
    ("What is the sum of 2 and 9? Compute $2 + 9$.",
     ["We add the numbers: ", "$2 + 9 = 11$.", "\n\nSo the answer is $\\boxed{11}$."]),
    ("What is the product of 3 and 5? Compute $3 * 5$.", ["Three times five is fifteen. $\\boxed{15}$"]),
    ("What is the difference of 8 and 6? Compute $8 - 6$.", ["First,", " $8 - 6 = 2$.", "\n\n", "Answer: 2."]),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("prm_scoring")
    assets = build_tiny_assets(root / "tiny")
    # a second PRM whose tokenizer is trained on a different corpus with a different vocabulary size
    corpus = ["Completely different text about rivers, mountains and 0123456789.", "\n\n", "The answer is"] * 4
    corpus += [p for p, _ in PROBLEMS] + ["".join(s) for _, s in PROBLEMS]
    prm_tok = build_tokenizer(root / "prm2_tok", corpus, vocab_size=300)
    build_prm(root / "prm2", prm_tok, hidden_size=32, num_layers=1, seed=7)
    from transformers import AutoTokenizer

    policy_tok = AutoTokenizer.from_pretrained(assets.tokenizer_dir)
    prm = load_prm(PRMConfig(enable=True, model_path=str(root / "prm2"), adapter="token_classification",
                             step_separator="\n\n"), "cpu")
    assert len(prm.tokenizer) != len(policy_tok)
    return policy_tok, prm


def _batch(policy_tok, problems, *, eos=True, pad_to=None):
    """Tokenise each segment with the policy tokenizer, concatenate, add EOS, right-pad; segment ids by hand."""
    rows, segs = [], []
    for _, segments in problems:
        ids, sid = [], []
        for s, text in enumerate(segments):
            t = policy_tok(text, add_special_tokens=False)["input_ids"]
            assert t, text
            ids += t
            sid += [s] * len(t)
        if eos:
            ids.append(policy_tok.eos_token_id)
            sid.append(len(segments) - 1)
        rows.append(ids)
        segs.append(sid)
    L = pad_to or max(len(r) for r in rows) + 3
    responses = torch.full((len(rows), L), policy_tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    segment_ids = torch.full((len(rows), L), -1, dtype=torch.long)
    for i, (r, s) in enumerate(zip(rows, segs)):
        responses[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        segment_ids[i, : len(s)] = torch.tensor(s)
    return responses, mask, segment_ids


#: PROBLEMS as the PRM sees them: the blank segment "\n\n" of the third response joins the step before it
STEPS = [PROBLEMS[0][1], PROBLEMS[1][1], ["First,", " $8 - 6 = 2$.\n\n", "Answer: 2."]]
#: step of every policy segment of PROBLEMS
SEGMENT_TO_STEP = [[0, 1, 2], [0], [0, 1, 1, 2]]


def test_segment_texts_decode_with_policy_tokenizer_and_strip_eos(env):
    policy_tok, _ = env
    responses, mask, seg = _batch(policy_tok, PROBLEMS)
    texts = segment_texts(policy_tok, responses, mask, seg)
    assert texts == STEPS  # EOS removed; the blank segment merged into the step before it
    # special tokens never reach a step, even when no extra stop id is given
    texts_no_extra = segment_texts(policy_tok, responses, mask, seg, eos_token_ids=[])
    assert texts_no_extra == STEPS
    assert not any(policy_tok.eos_token in t for row in texts_no_extra for t in row)


def test_scores_map_back_to_policy_tokens_with_different_tokenizers(env):
    policy_tok, prm = env
    questions = [q for q, _ in PROBLEMS]
    responses, mask, seg = _batch(policy_tok, PROBLEMS)
    prm_scores, stats = score_batch(prm, policy_tok, responses, mask, seg, questions)
    assert prm_scores.dtype == torch.float32 and prm_scores.shape == responses.shape
    assert torch.all(prm_scores[mask == 0] == 0)
    for i, q in enumerate(questions):
        direct = prm.score([q], [STEPS[i]])[0]  # the adapter on the step texts
        for s, step in enumerate(SEGMENT_TO_STEP[i]):
            tokens = (seg[i] == s) & (mask[i] == 1)
            assert tokens.any()
            assert torch.allclose(prm_scores[i][tokens], torch.tensor(direct[step]), atol=1e-5)
    assert stats["model_calls"] == 1
    assert stats["truncated_segments"] == 0
    assert stats["segments"] == 7 and stats["merged_segments"] == 1
    assert stats["special_tokens_removed"] == 3  # one EOS per response
    assert stats["response_tokens"] == int(mask.sum())
    assert stats["tokens_per_response_token"] == pytest.approx(stats["prm_tokens"] / int(mask.sum()))


def test_realistic_cuts_inside_one_tokenisation(env):
    """Segments cut at arbitrary policy-token positions of one tokenised response."""
    policy_tok, prm = env
    text = "We compute $12 + 7 = 19$.\n\nThen we check: 19 - 7 = 12.\n\nSo the answer is $\\boxed{19}$."
    ids = policy_tok(text, add_special_tokens=False)["input_ids"] + [policy_tok.eos_token_id]
    L = len(ids) + 4
    cuts = [0, 5, 11, len(ids) - 3]
    sid = torch.full((1, L), -1, dtype=torch.long)
    for s, c in enumerate(cuts):
        sid[0, c: len(ids)] = s
    responses = torch.full((1, L), policy_tok.pad_token_id, dtype=torch.long)
    responses[0, : len(ids)] = torch.tensor(ids)
    mask = (sid >= 0).long()
    spans = list(zip(cuts, cuts[1:] + [len(ids) - 1]))  # EOS excluded from the last segment's text
    expected = [policy_tok.decode(ids[a:b], skip_special_tokens=False) for a, b in spans]
    assert segment_texts(policy_tok, responses, mask, sid) == [expected]
    q = "What is 12 plus 7?"
    prm_scores, _ = score_batch(prm, policy_tok, responses, mask, sid, [q])
    direct = prm.score([q], [expected])[0]
    per_token = torch.tensor([direct[int(s)] for s in sid[0, : len(ids)]])
    assert torch.allclose(prm_scores[0, : len(ids)], per_token, atol=1e-5)
    assert torch.all(prm_scores[0, len(ids):] == 0)


def test_empty_response_row_and_truncation_fallback(env, tmp_path):
    policy_tok, prm = env
    responses, mask, seg = _batch(policy_tok, PROBLEMS)
    mask[1] = 0
    seg[1] = -1
    prm_scores, stats = score_batch(prm, policy_tok, responses, mask, seg, [q for q, _ in PROBLEMS])
    assert torch.all(prm_scores[1] == 0)
    assert stats["per_response"]["num_segments"][1] == 0
    # a PRM with a tiny max_length: dropped segments carry the prior mean on their policy tokens
    small = load_prm(PRMConfig(enable=True, model_path=prm.model.name_or_path, adapter="token_classification",
                               step_separator="\n\n", max_length=12, max_tokens_per_batch=64), "cpu")
    responses, mask, seg = _batch(policy_tok, PROBLEMS[:1])
    prm_scores, stats = score_batch(small, policy_tok, responses, mask, seg, [PROBLEMS[0][0]], prior_mean=0.25)
    assert stats["truncated_segments"] >= 1
    last = (seg[0] == 2) & (mask[0] == 1)
    assert torch.all(prm_scores[0][last] == 0.25)


def test_invalid_segment_ids(env):
    policy_tok, prm = env
    responses, mask, seg = _batch(policy_tok, PROBLEMS[:1])
    bad = seg.clone()
    bad[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        score_batch(prm, policy_tok, responses, mask, bad, ["q"])
    gap = seg.clone()
    gap[gap == 1] = 5
    with pytest.raises(ValueError, match="contiguous"):
        score_batch(prm, policy_tok, responses, mask, gap, ["q"])
    with pytest.raises(ValueError, match="questions"):
        score_batch(prm, policy_tok, responses, mask, seg, ["q", "q"])


def test_with_the_segmentation_module(env):
    segmentation = pytest.importorskip("verl_prpo.segmentation")
    policy_tok, prm = env
    responses, mask, _ = _batch(policy_tok, PROBLEMS)
    try:
        sg = segmentation.segment("uniform", mask, k=2)
    except Exception as exc:  # the module is being written concurrently
        pytest.skip(f"segmentation.segment not usable yet: {exc!r}")
    prm_scores, stats = score_batch(prm, policy_tok, responses, mask, sg.segment_ids, [q for q, _ in PROBLEMS])
    assert stats["segments"] + stats["merged_segments"] == int(sg.num_segments.sum())
    assert torch.all(prm_scores[mask == 0] == 0) and torch.all(prm_scores[mask == 1] > 0)


# ---------------------------------------------------------------------------------------------------- questions
def test_questions_from_messages_and_batch():
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "first"},
            {"role": "assistant", "content": "x"}, {"role": "user", "content": f"What is 1+1?\n{BOXED_INSTRUCTION}"}]
    assert question_from_messages(msgs) == f"What is 1+1?\n{BOXED_INSTRUCTION}"
    assert question_from_messages(msgs, strip_instruction=True) == "What is 1+1?"
    assert question_from_messages(np.array(msgs, dtype=object)) == msgs[-1]["content"]
    assert question_from_messages("plain prompt") == "plain prompt"
    with pytest.raises(ValueError, match="no user message"):
        question_from_messages([{"role": "system", "content": "s"}])
    raw = np.empty(3, dtype=object)
    raw[:] = [msgs, [{"role": "user", "content": "Q1"}], None]
    extra = np.array([{"question": "clean question"}, {"index": 3}, {"question": "Q2"}], dtype=object)
    assert questions_from_batch(raw, extra) == ["clean question", "Q1", "Q2"]
    assert questions_from_batch(raw[:2]) == [msgs[-1]["content"], "Q1"]
    with pytest.raises(ValueError, match="row 2"):
        questions_from_batch(raw, [None, None, {}])


def test_prm_metrics():
    scores = torch.tensor([[0.9, 0.9, 0.0], [0.2, 0.2, 0.2], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    stats = {"prm_tokens": 20, "response_tokens": 5, "truncated_segments": 2}
    m = prm_metrics(scores, mask, stats, correctness=torch.tensor([1.0, 1.0, 0.0]))
    assert m["prm/tokens_per_response_token"] == pytest.approx(4.0)
    assert m["prm/truncated_segments"] == 2.0
    assert m["prm/score_mean"] == pytest.approx((0.9 * 2 + 0.2 * 3) / 5)
    vals = torch.tensor([0.9, 0.9, 0.2, 0.2, 0.2], dtype=torch.float64)
    assert m["prm/score_std"] == pytest.approx(float(vals.std(unbiased=False)))
    assert m["prm/agreement"] == pytest.approx(0.5)  # row 0 agrees, row 1 does not, row 2 is empty
    m2 = prm_metrics(scores, mask, correctness=torch.tensor([True, False, True]))
    assert m2["prm/agreement"] == pytest.approx(1.0)
    assert all(isinstance(v, float) for v in m.values())
