"""PRM forward layouts: padded with a mask, padded without one (causal), packed rows; all equal the plain forward.

The reference is computed here without the adapter's batching: one model call per response on its own input ids
(batch of one, no padding, no mask), softmax at the score positions.
"""

from __future__ import annotations

import random

import pytest
import torch

from examples.credit_assignment.tiny_assets import arithmetic_problems, build_tiny_assets
from verl_prpo.prm import PRMConfig, load_prm
from verl_prpo.prm.adapters import FORWARD_MODES, is_causal_model


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    assets = build_tiny_assets(tmp_path_factory.mktemp("tiny_pack"), n_train=16, n_val=2)
    return load_prm(PRMConfig(enable=True, model_path=str(assets.prm_dir), adapter="token_classification",
                              max_length=512, max_tokens_per_batch=2048), "cpu")


@pytest.fixture(scope="module")
def ragged():
    """Questions and segment lists of very different lengths (1 to 7 segments, short and long texts)."""
    rng = random.Random(0)
    rows = arithmetic_problems(24, seed=5)
    questions, segments = [], []
    for i, r in enumerate(rows):
        words = r["solution"].split()
        n_seg = rng.randint(1, 7)
        segs = []
        for _ in range(n_seg):
            a = rng.randint(0, max(len(words) - 1, 0))
            segs.append(" ".join(words[a: a + rng.randint(1, 3 + 6 * (i % 3))]))
        questions.append(r["problem"] * (1 + i % 4))
        segments.append(segs)
    segments[3] = []  # an empty response: no forward, no score
    return questions, segments


class Recorder(torch.nn.Module):
    """Wraps the PRM; records the keyword arguments and the input shape of every forward."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = []

    def forward(self, **kw):
        self.calls.append({k: tuple(v.shape) if torch.is_tensor(v) else () for k, v in kw.items()})
        assert kw.get("use_cache") is False
        return self.inner(**kw)


def _reference(adapter, questions, segments):
    out = []
    with torch.no_grad():
        for q, segs in zip(questions, segments):
            if not segs:
                out.append([])
                continue
            x = adapter.build_inputs(q, segs)
            logits = adapter.model(input_ids=torch.tensor([x.input_ids])).logits[0]
            probs = torch.softmax(logits[x.score_positions].double(), -1)[:, adapter.positive_label]
            out.append(probs.tolist())
    return out


@pytest.mark.parametrize("mode", ["masked", "causal", "packed", "auto"])
def test_every_layout_gives_the_plain_per_response_scores(adapter, ragged, mode):
    questions, segments = ragged
    lengths = {len(adapter.build_inputs(q, s).input_ids) for q, s in zip(questions, segments) if s}
    assert max(lengths) > 3 * min(lengths)  # really ragged
    ref = _reference(adapter, questions, segments)
    adapter.forward_mode = mode
    try:
        scores, stats = adapter.score_with_stats(questions, segments)
    finally:
        adapter.forward_mode = "auto"
    assert [len(s) for s in scores] == [len(s) for s in segments]
    for got, want in zip(scores, ref):
        assert got == pytest.approx(want, abs=2e-5)
    assert stats["model_calls"] < len(questions) - 1  # several responses per forward
    assert stats["forward_mode"] == ("causal" if mode == "auto" else mode)


def test_padded_layouts_sort_by_length_and_packed_has_no_padding(adapter, ragged):
    questions, segments = ragged
    inputs = [adapter.build_inputs(q, s) if s else None for q, s in zip(questions, segments)]
    for packed in (False, True):
        batches = adapter._plan(inputs, packed=packed)
        flat = [len(inputs[i].input_ids) for b in batches for i in b]
        assert flat == sorted(flat, reverse=True)
        for b in batches:
            sizes = [len(inputs[i].input_ids) for i in b]
            cost = sum(sizes) if packed else len(b) * max(sizes)
            assert cost <= adapter.max_tokens_per_batch
    adapter.forward_mode = "packed"
    try:
        _, stats = adapter.score_with_stats(questions, segments)
    finally:
        adapter.forward_mode = "auto"
    assert stats["padded_tokens"] == stats["prm_tokens"]  # not one padding token
    _, stats = adapter.score_with_stats(questions, segments)  # padded, longest first
    batches = adapter._plan(inputs)
    assert stats["padded_tokens"] == sum(len(b) * max(len(inputs[i].input_ids) for i in b) for b in batches)
    # the same number of rows per forward in input order pads more
    order = [i for i, x in enumerate(inputs) if x is not None]
    chunks, k = [], 0
    for b in batches:
        chunks.append(order[k: k + len(b)])
        k += len(b)
    unsorted = sum(len(c) * max(len(inputs[i].input_ids) for i in c) for c in chunks)
    assert stats["prm_tokens"] < stats["padded_tokens"] < unsorted


def test_what_each_layout_passes_to_the_model(adapter, ragged):
    questions, segments = ragged
    inner = adapter.model
    rec = Recorder(inner)
    adapter.model = rec
    try:
        for mode in ("masked", "causal", "packed"):
            adapter.forward_mode = mode
            rec.calls.clear()
            adapter.score_with_stats(questions, segments)
            for call in rec.calls:
                assert call.pop("use_cache") == ()  # a bool, recorded as (): no KV cache while scoring
                if mode == "masked":
                    assert set(call) == {"input_ids", "attention_mask"}
                    assert call["attention_mask"] == call["input_ids"]
                elif mode == "causal":
                    assert set(call) == {"input_ids"}
                else:
                    assert set(call) == {"input_ids", "position_ids"} and call["input_ids"][0] == 1
    finally:
        adapter.model = inner
        adapter.forward_mode = "auto"


def test_causal_detection():
    from transformers import BertConfig, BertForTokenClassification

    class NoAttention(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return torch.zeros(*input_ids.shape, 2)

    bert = BertForTokenClassification(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                 intermediate_size=32, vocab_size=64))
    assert is_causal_model(bert) is False  # an encoder keeps its attention mask
    assert is_causal_model(NoAttention()) is False  # nothing declared: keep the mask
    with pytest.raises(ValueError, match="forward_mode"):
        from verl_prpo.prm.adapters import TokenClassificationPRMAdapter

        TokenClassificationPRMAdapter(NoAttention(), _Tok(), forward_mode="sideways")
    assert "packed" in FORWARD_MODES


def test_the_tiny_qwen2_prm_is_causal(adapter):
    assert is_causal_model(adapter.model) is True
    assert adapter.resolved_forward_mode() == "causal"


class _Tok:
    pad_token_id = 0
    eos_token_id = 0
    bos_token_id = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1]}
