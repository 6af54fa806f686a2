"""PRM config and the token-classification adapter (TRL layout), packing, truncation and error paths."""

from __future__ import annotations

import math

import pytest
import torch

from examples.credit_assignment.tiny_assets import build_tiny_assets
from verl_prpo.prm import PRMConfig, TokenClassificationPRMAdapter, load_prm
from verl_prpo.prm.adapters import resolve_adapter_kind

QUESTION = "What is the sum of 3 and 4? Compute $3 + 4$."
SEGMENTS = ["We compute $3 + 4 = 7$.", "\n\nSo the answer is $\\boxed{7}$.", " Done."]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_tiny_assets(tmp_path_factory.mktemp("tiny"))


def _adapter(assets, **kw) -> TokenClassificationPRMAdapter:
    cfg = PRMConfig(enable=True, model_path=str(assets.prm_dir), adapter="token_classification", **kw)
    ad = load_prm(cfg, "cpu")
    assert isinstance(ad, TokenClassificationPRMAdapter)
    return ad


class CountingModel(torch.nn.Module):
    """Wraps a model and counts its forward calls (and the batch shapes it saw)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.shapes = []

    def forward(self, **kw):
        self.calls += 1
        self.shapes.append(tuple(kw["input_ids"].shape))
        return self.inner(**kw)


class FixedLogits(torch.nn.Module):
    """Returns fixed per-label logits at every position (as a tuple, like some remote-code PRMs)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float32)

    def forward(self, input_ids, attention_mask=None):
        B, T = input_ids.shape
        return (self.logits.expand(B, T, -1).clone(),)


# ---------------------------------------------------------------------------------------------------- config
def test_config_defaults_and_validation():
    cfg = PRMConfig()
    assert cfg.enable is False and cfg.adapter == "auto" and cfg.max_tokens_per_batch == 16384
    assert cfg.param_offload is True  # colocate default
    assert PRMConfig(placement="own_pool").param_offload is False
    with pytest.raises(ValueError, match=r"prm\.model_path"):
        PRMConfig(enable=True)
    with pytest.raises(ValueError, match=r"prm\.adapter"):
        PRMConfig(adapter="nope")
    with pytest.raises(ValueError, match=r"prm\.placement"):
        PRMConfig(placement="anywhere")
    with pytest.raises(ValueError, match=r"prm\.max_tokens_per_batch"):
        PRMConfig(max_length=4096, max_tokens_per_batch=100)
    with pytest.raises(ValueError, match=r"prm\.dtype"):
        PRMConfig(dtype="int8")
    with pytest.raises(ValueError, match=r"prm\.positive_label"):
        PRMConfig(positive_label=-1)
    with pytest.raises(ValueError, match=r"prm\.segmentation"):
        PRMConfig.from_config({"segmentation": "entropy"})


def test_config_from_omegaconf():
    from omegaconf import OmegaConf

    node = OmegaConf.create({"enable": True, "model_path": "/x", "max_length": 128, "max_tokens_per_batch": 256})
    cfg = PRMConfig.from_config(node)
    assert cfg.model_path == "/x" and cfg.max_length == 128
    assert PRMConfig.from_config(None) == PRMConfig()
    assert PRMConfig.from_config(cfg) == cfg


def test_auto_adapter_resolution(assets):
    from transformers import AutoConfig, AutoTokenizer

    mc = AutoConfig.from_pretrained(assets.prm_dir)
    tok = AutoTokenizer.from_pretrained(assets.prm_dir)
    # the tiny PRM tokenizer has <extra_0> and a chat template
    assert resolve_adapter_kind(PRMConfig(), mc, tok) == "qwen_math_prm"
    # no longer tied to trust_remote_code (off by default): the tokenizer alone decides
    assert resolve_adapter_kind(PRMConfig(trust_remote_code=True), mc, tok) == "qwen_math_prm"
    tok.chat_template = None
    assert resolve_adapter_kind(PRMConfig(), mc, tok) == "token_classification"
    mc.architectures = ["Qwen2ForProcessRewardModel"]
    assert resolve_adapter_kind(PRMConfig(trust_remote_code=False), mc, None) == "qwen_math_prm"


# ---------------------------------------------------------------------------------------------------- layout
def test_trl_layout_and_separator_positions(assets):
    ad = _adapter(assets, step_separator="\n\n")
    tok = ad.tokenizer
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    sep = enc("\n\n")
    assert len(sep) == 2  # the last separator token is where the label is read
    x = ad.build_inputs(QUESTION, SEGMENTS)
    expected, positions = list(enc(QUESTION)), []
    for s in SEGMENTS:
        expected += enc(s) + sep
        positions.append(len(expected) - 1)
    assert x.input_ids == expected
    assert x.score_positions == positions
    assert [x.input_ids[p] for p in positions] == [sep[-1]] * len(SEGMENTS)
    assert x.num_kept == len(SEGMENTS) and not x.question_truncated


def test_separator_from_model_config(assets):
    ad = _adapter(assets)  # the tiny PRM's config records step_separator = "<extra_0>"
    assert ad.step_separator == "<extra_0>"
    x = ad.build_inputs(QUESTION, SEGMENTS)
    sep_id = ad.tokenizer.convert_tokens_to_ids("<extra_0>")
    assert [x.input_ids[p] for p in x.score_positions] == [sep_id] * 3
    assert x.input_ids.count(sep_id) == 3


def test_scores_are_positive_label_softmax_at_positions(assets):
    ad = _adapter(assets)
    x = ad.build_inputs(QUESTION, SEGMENTS)
    with torch.no_grad():
        logits = ad.model(input_ids=torch.tensor([x.input_ids])).logits[0]
    ref = torch.softmax(logits[x.score_positions], dim=-1)[:, 1].tolist()
    got = ad.score([QUESTION], [SEGMENTS])[0]
    assert len(got) == len(SEGMENTS)
    assert got == pytest.approx(ref, abs=1e-6)
    # positive_label selects the softmax column
    ad0 = _adapter(assets, positive_label=0)
    got0 = ad0.score([QUESTION], [SEGMENTS])[0]
    assert got0 == pytest.approx([1 - p for p in ref], abs=1e-6)


def test_positive_label_column_with_fixed_logits(assets):
    ad = _adapter(assets, positive_label=1)
    ad.model = FixedLogits([0.0, math.log(3.0)])  # softmax = [0.25, 0.75]
    assert ad.score([QUESTION], [SEGMENTS]) == [pytest.approx([0.75] * 3)]
    ad.positive_label = 0
    assert ad.score([QUESTION], [SEGMENTS]) == [pytest.approx([0.25] * 3)]


# ---------------------------------------------------------------------------------------------------- batching
def _many(n):
    qs, segs = [], []
    for i in range(n):
        qs.append(f"What is {i} plus {i + 1}?" + " Think." * (i % 4))
        segs.append([f"We add {i} and {i + 1}.", f"\n\nThe answer is {2 * i + 1}."][: 1 + i % 2] + ["ok"] * (i % 3))
    return qs, segs


def test_one_forward_per_packed_batch_and_batch_invariance(assets):
    ad = _adapter(assets)
    qs, segs = _many(7)
    single = [ad.score([q], [s])[0] for q, s in zip(qs, segs)]
    counter = CountingModel(ad.model)
    ad.model = counter
    batched = ad.score(qs, segs)
    assert counter.calls == 1 == ad.last_stats["model_calls"]  # everything fits in the default budget
    for a, b, s in zip(batched, single, segs):
        assert len(a) == len(s)
        assert a == pytest.approx(b, abs=1e-5)  # right padding does not change the scores


def test_token_budget_packing(assets):
    qs, segs = _many(9)
    lengths = None
    for budget in (64, 100, 160, 400, 100000):
        ad = _adapter(assets, max_length=64, max_tokens_per_batch=budget)
        counter = CountingModel(ad.model)
        ad.model = counter
        ad.score(qs, segs)
        if lengths is None:
            lengths = [len(ad.build_inputs(q, s).input_ids) for q, s in zip(qs, segs)]
        assert counter.calls == ad.last_stats["model_calls"] == len(ad._plan([ad.build_inputs(q, s)
                                                                               for q, s in zip(qs, segs)]))
        assert 1 <= counter.calls <= len(qs)
        for shape in counter.shapes:
            assert shape[0] * shape[1] <= budget
        assert sum(b for b, _ in counter.shapes) == len(qs)  # each response in exactly one forward
    assert max(lengths) <= 64


def test_empty_responses(assets):
    ad = _adapter(assets)
    counter = CountingModel(ad.model)
    ad.model = counter
    assert ad.score([], []) == []
    assert ad.score([QUESTION, QUESTION], [[], []]) == [[], []]
    assert counter.calls == 0
    out = ad.score([QUESTION, "q", QUESTION], [[], SEGMENTS, []])
    assert out[0] == [] and out[2] == [] and len(out[1]) == 3
    assert counter.calls == 1


# ---------------------------------------------------------------------------------------------------- truncation
def test_truncates_question_first(assets):
    long_q = " ".join(f"word{i}" for i in range(60)) + " " + QUESTION
    full = _adapter(assets, max_length=4096).build_inputs(long_q, SEGMENTS)
    seg_tokens = len(full.input_ids) - full.question_tokens
    max_length = seg_tokens + 5  # room for 5 question tokens
    ad = _adapter(assets, max_length=max_length, max_tokens_per_batch=4096)
    x = ad.build_inputs(long_q, SEGMENTS)
    assert len(x.input_ids) == max_length
    assert x.question_tokens == 5 and x.question_truncated and x.num_kept == 3
    q_ids = ad.tokenizer(long_q, add_special_tokens=False)["input_ids"]
    assert x.input_ids[:5] == q_ids[-5:]  # left truncation keeps the end of the question
    scores = ad.score([long_q], [SEGMENTS])
    assert ad.last_stats["truncated_questions"] == 1 and ad.last_stats["truncated_segments"] == 0
    assert all(0 < p < 1 for p in scores[0])


def test_drops_segments_from_the_end_with_counted_fallback(assets):
    ad_full = _adapter(assets)
    segs = SEGMENTS + ["Another step with quite a lot of words in it to be long."] * 3
    pieces = [len(ad_full.build_inputs("", [s]).input_ids) for s in segs]
    max_length = sum(pieces[:2]) + 1  # two segments fit, the question does not, the third does not
    ad = _adapter(assets, max_length=max_length, max_tokens_per_batch=4096)
    x = ad.build_inputs(QUESTION, segs)
    assert x.num_kept == 2 and x.question_tokens == 1 and len(x.input_ids) <= max_length
    for fallback in (0.5, 0.3):
        scores = ad.score([QUESTION, QUESTION], [segs, SEGMENTS[:1]], fallback=fallback)
        assert scores[0][2:] == [fallback] * (len(segs) - 2)
        assert ad.last_stats["truncated_segments"] == len(segs) - 2
        assert ad.last_stats["per_response"]["truncated_segments"] == [len(segs) - 2, 0]
    # the kept scores are those of the same input without the dropped segments (the PRM is causal)
    q_tail = ad.tokenizer.decode(x.input_ids[:1])
    ref = _adapter(assets).score([q_tail], [segs[:2]])[0]
    assert scores[0][:2] == pytest.approx(ref, abs=1e-5)


def test_all_segments_dropped_means_no_forward(assets):
    ad = _adapter(assets, max_length=8, max_tokens_per_batch=64)
    counter = CountingModel(ad.model)
    ad.model = counter
    out = ad.score([QUESTION], [["a very long segment that cannot fit in eight tokens at all, no way"]], fallback=0.5)
    assert out == [[0.5]]
    assert counter.calls == 0 and ad.last_stats["truncated_segments"] == 1


# ---------------------------------------------------------------------------------------------------- errors
def test_nan_scores_raise_with_response_index(assets):
    ad = _adapter(assets)
    ad.model = FixedLogits([float("nan"), 0.0])
    with pytest.raises(ValueError, match="response 1"):
        ad.score(["q0", QUESTION], [[], SEGMENTS])


def test_out_of_range_scores_raise(assets, monkeypatch):
    ad = _adapter(assets)
    monkeypatch.setattr(ad, "_probabilities", lambda logits: torch.full((logits.shape[0],), 1.5))
    with pytest.raises(ValueError, match=r"response 0.*outside \[0, 1\]"):
        ad.score([QUESTION], [SEGMENTS])


def test_bad_fallback_and_mismatched_lengths(assets):
    ad = _adapter(assets)
    with pytest.raises(ValueError, match="fallback"):
        ad.score([QUESTION], [SEGMENTS], fallback=1.5)
    with pytest.raises(ValueError, match="questions"):
        ad.score([QUESTION], [SEGMENTS, SEGMENTS])


def test_wrong_label_count_is_an_error(assets):
    ad = _adapter(assets, positive_label=3)
    with pytest.raises(ValueError, match="positive_label"):
        ad.score([QUESTION], [SEGMENTS])
