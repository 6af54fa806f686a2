"""The Qwen2.5-Math-PRM adapter against the tiny local PRM (a 2-label Qwen2ForTokenClassification whose tokenizer
has ``<extra_0>`` and a ChatML template: the same (B, T, 2) output as the real Qwen2ForProcessRewardModel)."""

from __future__ import annotations

import pytest
import torch

from examples.credit_assignment.tiny_assets import build_tiny_assets
from verl_prpo.prm import DEFAULT_SYSTEM_PROMPT, PRMConfig, QwenMathPRMAdapter, load_prm

QUESTION = "What is the product of 6 and 7? Compute $6 * 7$."
SEGMENTS = ["We compute $6 * 7 = 42$.", "\n\nSo the answer is $\\boxed{42}$.", ""]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_tiny_assets(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def adapter(assets) -> QwenMathPRMAdapter:
    ad = load_prm(PRMConfig(enable=True, model_path=str(assets.prm_dir)), "cpu")  # adapter=auto
    assert isinstance(ad, QwenMathPRMAdapter)
    return ad


class TupleModel(torch.nn.Module):
    """A stand-in for the remote-code Qwen PRM: returns a tuple whose first element is (B, T, 2) logits."""

    def __init__(self, inner, n_labels=2):
        super().__init__()
        self.inner = inner
        self.n_labels = n_labels

    def forward(self, input_ids, attention_mask=None):
        logits = self.inner(input_ids=input_ids, attention_mask=attention_mask).logits
        if self.n_labels != 2:
            logits = torch.cat([logits, logits[..., :1]], dim=-1)
        return (logits,)


def test_input_is_the_chat_template_with_extra0_after_each_step(adapter):
    tok = adapter.tokenizer
    x = adapter.build_inputs(QUESTION, SEGMENTS)
    reference = tok.apply_chat_template(
        [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": QUESTION},
         {"role": "assistant", "content": "<extra_0>".join(SEGMENTS) + "<extra_0>"}],
        tokenize=False, add_generation_prompt=False)
    assert x.input_ids == tok(reference, add_special_tokens=False)["input_ids"]
    decoded = tok.decode(x.input_ids)
    assert decoded == reference
    assert f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>" in decoded
    assert f"<|im_start|>user\n{QUESTION}<|im_end|>" in decoded
    assert "<|im_start|>assistant\nWe compute" in decoded
    sep = tok.convert_tokens_to_ids("<extra_0>")
    assert x.score_positions == [j for j, t in enumerate(x.input_ids) if t == sep]
    assert len(x.score_positions) == len(SEGMENTS)
    # each <extra_0> closes its step: the text before it ends with that step
    for s, p in zip(SEGMENTS, x.score_positions):
        assert tok.decode(x.input_ids[:p]).endswith(s)
    assert adapter.build_inputs(QUESTION, []).score_positions == []


def test_scores_are_softmax_class_1_at_extra0(adapter):
    x = adapter.build_inputs(QUESTION, SEGMENTS)
    with torch.no_grad():
        logits = adapter.model(input_ids=torch.tensor([x.input_ids])).logits[0]
    ref = torch.softmax(logits[x.score_positions].float(), dim=-1)[:, 1]
    got = adapter.score([QUESTION], [SEGMENTS])[0]
    assert got == pytest.approx(ref.tolist(), abs=1e-6)
    assert all(0.0 <= p <= 1.0 for p in got)


def test_tuple_output_model_and_label_check(adapter):
    inner = adapter.model
    try:
        ref = adapter.score([QUESTION], [SEGMENTS])
        adapter.model = TupleModel(inner)
        assert adapter.score([QUESTION], [SEGMENTS]) == [pytest.approx(ref[0], abs=1e-6)]
        adapter.model = TupleModel(inner, n_labels=3)
        with pytest.raises(ValueError, match="2 logits"):
            adapter.score([QUESTION], [SEGMENTS])
    finally:
        adapter.model = inner


def test_separator_inside_a_segment_is_removed(adapter):
    x = adapter.build_inputs(QUESTION, ["a<extra_0>b", "c"])
    y = adapter.build_inputs(QUESTION, ["ab", "c"])
    assert x.input_ids == y.input_ids and len(x.score_positions) == 2


def test_piecewise_assembly_matches_the_reference_tokenisation(adapter):
    """The truncation path assembles head/question/mid/segments/tail piece by piece; without truncation it gives
    the same ids as tokenising the whole rendered conversation."""
    x = adapter.build_inputs(QUESTION, SEGMENTS)
    enc = adapter._encode
    pieces = [enc(s) + [adapter.separator_id] for s in SEGMENTS]
    y = adapter._fit(enc(adapter._head_text), enc(QUESTION), enc(adapter._mid_text), pieces,
                     enc(adapter._tail_text), len(SEGMENTS))
    assert y.input_ids == x.input_ids and y.score_positions == x.score_positions


def test_truncation_keeps_template_and_question_end(assets):
    full = load_prm(PRMConfig(enable=True, model_path=str(assets.prm_dir)), "cpu")
    long_q = "Some long preamble. " * 30 + QUESTION
    n_full = len(full.build_inputs(long_q, SEGMENTS).input_ids)
    ad = load_prm(PRMConfig(enable=True, model_path=str(assets.prm_dir), max_length=n_full - 40,
                            max_tokens_per_batch=4096), "cpu")
    x = ad.build_inputs(long_q, SEGMENTS)
    assert len(x.input_ids) <= n_full - 40 and x.question_truncated and x.num_kept == len(SEGMENTS)
    decoded = ad.tokenizer.decode(x.input_ids)
    assert decoded.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n")
    assert f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n" in decoded
    assert decoded.endswith("<extra_0><|im_end|>\n")
    scores = ad.score([long_q], [SEGMENTS])
    assert ad.last_stats["truncated_questions"] == 1 and len(scores[0]) == len(SEGMENTS)


def test_custom_system_prompt(assets):
    ad = load_prm(PRMConfig(enable=True, model_path=str(assets.prm_dir), system_prompt="Be brief."), "cpu")
    decoded = ad.tokenizer.decode(ad.build_inputs(QUESTION, SEGMENTS).input_ids)
    assert decoded.startswith("<|im_start|>system\nBe brief.<|im_end|>")
