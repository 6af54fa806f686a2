"""The PRM sees the response the grader sees: no special token of the policy tokenizer in a step, a response cut at
its first stop token, no empty step, and one score per step mapped back onto every policy segment.

The policy tokenizer here is built locally with Qwen's special tokens (``<|endoftext|>``, ``<|im_start|>``,
``<|im_end|>``; ``<extra_0>`` is NOT one of its special tokens, as for a Qwen2.5-Math policy, so the PRM's separator
string can appear inside a step's text). The PRM is a tiny Qwen-layout PRM (chat template, ``<extra_0>`` after
every step), scored through ``QwenMathPRMAdapter``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from examples.credit_assignment.tiny_assets import build_prm, build_tokenizer
from verl_prpo.prm import PRMConfig, load_prm, prm_metrics, score_batch, segment_texts
from verl_prpo.prm.scoring import build_segment_texts
from verl_prpo.response_text import response_text, stop_token_ids

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["We compute $2 + 3 = 5$.", "\n\n", "So the answer is $\\boxed{5}$.", "user", "assistant",
          "Let me check: 5 - 3 = 2.", "0123456789", "<extra_0>",
          "\u00e9\u00e8 \u2211 \u221a \u03c0 \u4e2d\u6587 \U0001f600"]
FUZZ_EXAMPLES = 300


def _qwen_policy_tokenizer(path, *, eos: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=QWEN_SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token=eos,
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("prm_special")
    # instruct-style: tokenizer EOS <|im_end|>; the generation config also stops on <|endoftext|>
    policy = _qwen_policy_tokenizer(root / "policy", eos="<|im_end|>")
    prm_tok = build_tokenizer(root / "prm_tok", CORPUS * 2, vocab_size=300)
    build_prm(root / "prm", prm_tok, hidden_size=32, num_layers=1, seed=3)
    prm = load_prm(PRMConfig(enable=True, model_path=str(root / "prm"), adapter="qwen_math_prm"), "cpu")
    assert prm.kind == "qwen_math_prm" and prm.step_separator == "<extra_0>"
    gen_eos = [policy.convert_tokens_to_ids("<|im_end|>"), policy.convert_tokens_to_ids("<|endoftext|>")]
    return policy, prm, gen_eos


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _rows(pieces_per_row: list[list[list[int]]], pad_id: int, extra: int = 2):
    """(responses, mask, segment_ids): each row is a list of segments, each a list of token ids (right-padded)."""
    lengths = [sum(len(p) for p in row) for row in pieces_per_row]
    L = max(lengths + [1]) + extra
    B = len(pieces_per_row)
    responses = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    seg = torch.full((B, L), -1, dtype=torch.long)
    for i, row in enumerate(pieces_per_row):
        t = 0
        for s, piece in enumerate(row):
            responses[i, t: t + len(piece)] = torch.tensor(piece, dtype=torch.long)
            mask[i, t: t + len(piece)] = 1
            seg[i, t: t + len(piece)] = s
            t += len(piece)
    return responses, mask, seg


def _separators(prm, question: str, steps: list[str]) -> int:
    """How many scores the PRM input holds (separator positions of the built input)."""
    return len(prm.build_inputs(question, steps).score_positions) if steps else 0


def test_stop_tokens_of_a_qwen_policy(env):
    policy, _, gen_eos = env
    ids = {policy.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    # <|im_start|> and <|endoftext|> end a response even without the generation config: chat-turn tokens
    assert stop_token_ids(policy) == ids
    assert stop_token_ids(policy, gen_eos) == ids


def test_answer_step_has_no_special_tokens(env):
    """The issue's case: the last, answer-bearing step ends in <|im_end|><|endoftext|>."""
    policy, prm, gen_eos = env
    im_end, eot = (policy.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    steps = [_ids(policy, "We compute $2 + 3 = 5$."),
             _ids(policy, "\n\nSo the answer is $\\boxed{5}$.") + [im_end, eot]]
    responses, mask, seg = _rows([steps], policy.pad_token_id)
    st = build_segment_texts(policy, responses, mask, seg, eos_token_ids=gen_eos, step_text=prm.step_text)
    assert st.texts == [["We compute $2 + 3 = 5$.", "\n\nSo the answer is $\\boxed{5}$."]]
    assert st.special_tokens_removed == [2] and st.run_on_tokens == [0] and st.merged_segments == [0]
    q = "What is 2 + 3?"
    scores, stats = score_batch(prm, policy, responses, mask, seg, [q], eos_token_ids=gen_eos)
    assert stats["special_tokens_removed"] == 2
    assert prm_metrics(scores, mask, stats)["prm/special_tokens_removed"] == 2.0
    direct = prm.score([q], st.texts)[0]
    for s in range(2):
        assert torch.allclose(scores[0][(seg[0] == s) & (mask[0] == 1)], torch.tensor(direct[s]), atol=1e-6)


def test_response_that_runs_on_into_a_new_turn_is_cut(env):
    policy, prm, gen_eos = env
    im_end, im_start = (policy.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|im_start|>"))
    steps = [_ids(policy, "We compute $2 + 3 = 5$."),
             _ids(policy, "So the answer is $\\boxed{5}$.") + [im_end] + _ids(policy, "\n"),
             [im_start] + _ids(policy, "user\nLet me check: 5 - 3 = 2."),
             _ids(policy, "So the answer is $\\boxed{2}$.") + [im_end]]
    responses, mask, seg = _rows([steps], policy.pad_token_id)
    st = build_segment_texts(policy, responses, mask, seg, eos_token_ids=gen_eos, step_text=prm.step_text)
    assert st.texts == [["We compute $2 + 3 = 5$.", "So the answer is $\\boxed{5}$."]]
    assert st.segment_to_step == [[0, 1, 1, 1]]  # the run-on segments join the last step
    assert st.merged_segments == [2] and st.special_tokens_removed == [3] and st.run_on_tokens[0] > 0
    # the grader reads the same text (the response up to its first stop token)
    valid = responses[0][mask[0].bool()].tolist()
    assert "".join(st.texts[0]) == response_text(policy, valid, stop_token_ids(policy, gen_eos))
    scores, _ = score_batch(prm, policy, responses, mask, seg, ["q"], eos_token_ids=gen_eos)
    last_step = scores[0][(seg[0] == 1) & (mask[0] == 1)][0]
    assert torch.all(scores[0][(seg[0] >= 1) & (mask[0] == 1)] == last_step)


def test_eos_only_segment_merges_into_the_previous_step(env):
    """A cut on the last valid token: the one-token segment [EOS] is no step of its own (no score read at a
    separator right after another separator); its token carries the previous step's score."""
    policy, prm, gen_eos = env
    im_end = policy.convert_tokens_to_ids("<|im_end|>")
    steps = [_ids(policy, "We compute $2 + 3 = 5$."), _ids(policy, "So the answer is $\\boxed{5}$."), [im_end]]
    responses, mask, seg = _rows([steps], policy.pad_token_id)
    q = "What is 2 + 3?"
    texts = segment_texts(policy, responses, mask, seg)
    assert texts == [["We compute $2 + 3 = 5$.", "So the answer is $\\boxed{5}$."]]
    assert _separators(prm, q, texts[0]) == 2
    scores, stats = score_batch(prm, policy, responses, mask, seg, [q])
    assert stats["segments"] == 2 and stats["merged_segments"] == 1
    eos_pos = int(mask[0].sum()) - 1
    assert scores[0, eos_pos] == scores[0, eos_pos - 1]
    # the estimators see two steps, not three: the EOS token carries the second step's id
    n0, n1 = len(steps[0]), len(steps[1])
    assert stats["step_ids"][0].tolist() == [0] * n0 + [1] * (n1 + 1) + [-1] * (mask.shape[1] - n0 - n1 - 1)


def test_separator_string_and_blank_segments(env):
    """A step that is only the PRM's separator string, or only whitespace, joins its neighbour; leading blanks join
    the first step."""
    policy, prm, _ = env
    steps = [_ids(policy, "\n\n"), _ids(policy, "We compute <extra_0>$2 + 3 = 5$."), _ids(policy, "<extra_0>"),
             _ids(policy, "\n\n"), _ids(policy, "So the answer is $\\boxed{5}$.")]
    responses, mask, seg = _rows([steps], policy.pad_token_id)
    st = build_segment_texts(policy, responses, mask, seg, step_text=prm.step_text)
    assert st.texts == [["\n\nWe compute $2 + 3 = 5$.\n\n", "So the answer is $\\boxed{5}$."]]
    assert st.segment_to_step == [[0, 0, 0, 0, 1]]
    # for the policy alone the separator string is text (not one of its special tokens): a step of its own
    plain = segment_texts(policy, responses, mask, seg)
    assert plain == [["\n\nWe compute <extra_0>$2 + 3 = 5$.", "<extra_0>\n\n", "So the answer is $\\boxed{5}$."]]
    q = "q"
    scores, stats = score_batch(prm, policy, responses, mask, seg, [q])
    assert stats["segments"] == 2 and _separators(prm, q, st.texts[0]) == 2
    last = seg[0] == 4
    assert torch.all(stats["step_ids"][0][(mask[0] == 1) & ~last] == 0) and torch.all(stats["step_ids"][0][last] == 1)


def test_response_without_text_gets_the_prior(env):
    policy, prm, gen_eos = env
    im_end, eot = (policy.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    rows = [[[im_end]], [[eot, im_end], _ids(policy, "late text")], [_ids(policy, "So $\\boxed{5}$."), [im_end]]]
    responses, mask, seg = _rows(rows, policy.pad_token_id)
    scores, stats = score_batch(prm, policy, responses, mask, seg, ["q"] * 3, prior_mean=0.3,
                                eos_token_ids=gen_eos)
    assert stats["per_response"]["empty_responses"] == [1, 1, 0] and stats["empty_responses"] == 2
    assert stats["per_response"]["num_segments"] == [0, 0, 1]
    prior = torch.tensor(0.3, dtype=torch.float32)
    assert torch.all(scores[0][mask[0] == 1] == prior) and torch.all(scores[1][mask[1] == 1] == prior)
    assert torch.all(scores[2][mask[2] == 1] != prior)
    # without text a response keeps its own segment ids (row 1: two segments); the merged EOS of row 2 joins step 0
    assert torch.equal(stats["step_ids"][1][mask[1] == 1], seg[1][mask[1] == 1])
    assert torch.all(stats["step_ids"][2][mask[2] == 1] == 0)
    assert prm_metrics(scores, mask, stats)["prm/empty_responses"] == 2.0


# ---------------------------------------------------------------------------------------------------------------
# fuzz: random responses, random cuts
# ---------------------------------------------------------------------------------------------------------------

_TEXT = st.text(alphabet=st.characters(blacklist_characters="|", blacklist_categories=("Cs",)), max_size=12)
_PIECE = st.one_of(
    st.sampled_from(QWEN_SPECIAL),  # special tokens anywhere
    st.sampled_from(["<extra_0>", "\n\n", " ", "\\boxed{5}", "$2 + 3 = 5$.", "\u4e2d\u6587", "\U0001f600"]),
    _TEXT,  # unicode
)


@st.composite
def _response(draw):
    """(token ids, segment sizes): pieces tokenised one by one and concatenated; 0..n random cuts."""
    pieces = draw(st.lists(_PIECE, min_size=0, max_size=10))
    return pieces, draw(st.randoms(use_true_random=False))


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                             HealthCheck.too_slow])
@given(batch=st.lists(_response(), min_size=1, max_size=4), one_token=st.booleans())
def test_fuzz_scores_match_segments(env, batch, one_token):
    policy, prm, gen_eos = env
    specials = [t for t in policy.all_special_tokens]
    rows, texts_in = [], []
    for pieces, rnd in batch:
        ids: list[int] = []
        for p in pieces:
            ids += _ids(policy, p)
        if one_token and ids:
            ids = ids[:1]
        n = len(ids)
        cuts = sorted(rnd.sample(range(1, n), rnd.randint(0, min(n - 1, 6)))) if n > 1 else []
        bounds = [0] + cuts + [n]
        rows.append([ids[a:b] for a, b in zip(bounds, bounds[1:]) if b > a])
        texts_in.append(ids)
    responses, mask, seg = _rows(rows, policy.pad_token_id)
    questions = ["What is 2 + 3?"] * len(rows)

    st_ = build_segment_texts(policy, responses, mask, seg, eos_token_ids=gen_eos, step_text=prm.step_text)
    scores, stats = score_batch(prm, policy, responses, mask, seg, questions, eos_token_ids=gen_eos)

    assert scores.shape == responses.shape and torch.all(scores[mask == 0] == 0)
    valid_scores = scores[mask == 1]
    assert torch.all((valid_scores >= 0) & (valid_scores <= 1))
    per = stats["per_response"]
    for i, row in enumerate(rows):
        steps, owner = st_.texts[i], st_.segment_to_step[i]
        # one score per step, one step per PRM separator, every policy segment mapped onto a step (or none)
        assert per["num_segments"][i] == len(steps) == _separators(prm, questions[i], steps)
        assert len(owner) == len(row)
        assert owner == sorted(owner) and set(owner) == (set(range(len(steps))) if steps else ({-1} if row else set()))
        assert per["empty_responses"][i] == int(bool(row) and not steps)
        for text in steps:
            assert text.strip() and prm.step_separator not in text
            assert not any(s in text for s in specials)
        # tokens of segments that share a step share its score
        for s, k in enumerate(owner):
            toks = scores[i][(seg[i] == s) & (mask[i] == 1)]
            first = scores[i][(mask[i] == 1) & (seg[i] == owner.index(k))][0]
            assert torch.all(toks == first)
            # the estimators' step ids: the step's, or the segment's own for a response without text
            assert torch.all(stats["step_ids"][i][(seg[i] == s) & (mask[i] == 1)] == (k if steps else s))
        assert torch.all(stats["step_ids"][i][mask[i] == 0] == -1)
    # the public API: no empty or blank string, no special-token text; its steps, joined, are the text the grader
    # reads (the policy's text: the PRM adapter's separator string not yet dropped), unless a multi-byte character
    # was cut in two by a segment boundary (each half decodes to U+FFFD)
    public = segment_texts(policy, responses, mask, seg, eos_token_ids=gen_eos)
    for i, steps in enumerate(public):
        assert all(t and t.strip() and not any(s in t for s in specials) for t in steps)
        grader = response_text(policy, texts_in[i], stop_token_ids(policy, gen_eos))
        if steps and not any("\ufffd" in t for t in steps):
            assert "".join(steps) == grader
        if not steps:
            assert not grader.strip()
