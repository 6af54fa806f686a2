"""``prm.backend=vllm`` without an engine: config validation, start-up checks, the row read-out, verl's server config.

The engines themselves are in ``test_prm_vllm_equality.py`` (in process) and ``test_prm_vllm_server.py`` (verl's
server replicas).
"""

from __future__ import annotations

import json
import types

import pytest

from verl_prpo.prm import PRMConfig
from verl_prpo.prm.adapters import PRMInputs

vb = pytest.importorskip("verl_prpo.prm.vllm_backend")

ARCHS = {"Qwen2ForCausalLM", "LlamaForCausalLM", "Qwen2ForProcessRewardModel"}


def _cfg(**kw):
    base = dict(architectures=["Qwen2ForTokenClassification"], hidden_size=64, num_attention_heads=2, head_dim=None,
                max_position_embeddings=4096, num_labels=2)
    base.update(kw)
    return types.SimpleNamespace(**base)


def _check(model_config, device_type="cpu", **prm):
    config = PRMConfig(enable=True, model_path="/models/prm", backend="vllm", **prm)
    vb.check_vllm_servable(config, model_config, None, device_type=device_type, supported_archs=ARCHS,
                           cpu_head_sizes=[32, 64, 80, 96, 112, 128])


def test_config_backend_keys_are_validated():
    assert PRMConfig().backend == "fsdp"
    cfg = PRMConfig.from_config({"enable": True, "model_path": "d", "backend": "vllm", "tensor_parallel_size": 2,
                                 "engine_kwargs": {"max_num_seqs": 8}, "request_timeout_s": 30})
    assert (cfg.backend, cfg.tensor_parallel_size, cfg.engine_kwargs, cfg.request_timeout_s) == (
        "vllm", 2, {"max_num_seqs": 8}, 30.0)
    with pytest.raises(ValueError, match=r"prm\.backend: must be one of"):
        PRMConfig(backend="sglang")
    with pytest.raises(ValueError, match=r"prm\.tensor_parallel_size: applies to prm\.backend=vllm only"):
        PRMConfig(tensor_parallel_size=2)
    with pytest.raises(ValueError, match=r"prm\.tensor_parallel_size: 2 does not divide the PRM's own pool"):
        PRMConfig(backend="vllm", placement="own_pool", n_gpus_per_node=3, tensor_parallel_size=2)
    with pytest.raises(ValueError, match=r"prm\.engine_kwargs\.max_model_len: is set by the vLLM backend"):
        PRMConfig(backend="vllm", engine_kwargs={"max_model_len": 10})
    with pytest.raises(ValueError, match=r"prm\.request_timeout_s: must be > 0"):
        PRMConfig(backend="vllm", request_timeout_s=0)
    with pytest.raises(ValueError, match=r"prm\.gpu_memory_utilization: must be in \(0, 1\]"):
        PRMConfig(backend="vllm", gpu_memory_utilization=1.5)


def test_yaml_defaults_are_the_dataclass_defaults():
    from omegaconf import OmegaConf

    from verl_prpo.conf import CONFIG_DIR

    node = OmegaConf.load(f"{CONFIG_DIR}/prpo_base.yaml").prm
    assert PRMConfig.from_config(node) == PRMConfig()


def test_servable_checkpoints_pass():
    _check(_cfg())  # TRL layout on a Qwen2 body: vLLM converts Qwen2ForCausalLM
    _check(_cfg(architectures=["Qwen2ForProcessRewardModel"], num_labels=None))
    _check(_cfg(architectures=["LlamaForTokenClassification"], hidden_size=128, num_attention_heads=2))
    _check(_cfg(hidden_size=48, num_attention_heads=3), device_type="cuda")  # head size 16: GPU kernels take it


@pytest.mark.parametrize("model_config, prm, message", [
    (_cfg(architectures=["MyPRMModel"]), {}, r"architectures \['MyPRMModel'\] are not a PRM the vLLM backend serves"),
    (_cfg(architectures=["FalconForTokenClassification"]), {}, r"use prm\.backend=fsdp"),
    (_cfg(hidden_size=64, num_attention_heads=4), {}, r"head size is 16 .*prm\.backend=fsdp"),
    (_cfg(hidden_size=64, num_attention_heads=4, head_dim=24), {}, r"head size is 24"),
    (_cfg(max_position_embeddings=512), {}, r"prm\.max_length=4096 exceeds the PRM's max_position_embeddings=512"),
    (_cfg(), {"positive_label": 2}, r"prm\.positive_label=2 but the PRM has 2 labels"),
    (_cfg(num_attention_heads=2), {"tensor_parallel_size": 4}, r"prm\.tensor_parallel_size=4 does not divide"),
])
def test_unservable_checkpoints_are_start_up_errors_naming_the_setting(model_config, prm, message):
    with pytest.raises(ValueError, match=message):
        _check(model_config, **prm)


def test_step_rows_skip_extra_tags_and_all_rows_are_positions():
    ids = [5, 3, 7, 7, 3, 9, 3, 1]  # tag 3 at 1, 4, 6; the adapter scores at 4 and 6 (1 is inside the question)
    x = PRMInputs(ids, [4, 6], 2, 3, 0)
    step = vb.PoolingSpec("STEP", 3, "Qwen2ForProcessRewardModel")
    assert step.expected_rows(x) == 3 and step.row_index(x) == [1, 2]
    every = vb.PoolingSpec("ALL", 3, "Qwen2ForTokenClassification")
    assert every.expected_rows(x) == len(ids) and every.row_index(x) == [4, 6]
    with pytest.raises(RuntimeError, match="no step tag id 3 at score position 5"):
        step.row_index(PRMInputs(ids, [5], 1, 0, 0))
    assert step.pooler_config() == {"tok_pooling_type": "STEP", "step_tag_id": 3}
    assert every.pooler_config() is None


class _FakeEngine:
    """Returns fixed logits: (rows, 2) with row r = [0, r/10] (so p = sigmoid(r/10))."""

    def __init__(self, spec):
        self.spec = spec
        self.seen = []

    def pool(self, prompts):
        import torch

        self.seen.append(prompts)
        out = []
        for p in prompts:
            n = len(p) if self.spec.pooling == "ALL" else sum(t == self.spec.step_tag_id for t in p)
            out.append(torch.stack([torch.zeros(n), torch.arange(n) / 10.0], dim=1))
        return out, 1


class _Text:
    kind = "qwen_math_prm"
    step_separator = "<s>"
    max_length = 64
    positive_label = 1

    def __init__(self):
        self.tokenizer = None

    def step_text(self, t):
        return t

    def build_inputs(self, question, segments):
        ids = [3] + [1] * len(question)  # a tag inside the "question"
        pos = []
        for s in segments:
            ids += [2] * len(s) + [3]
            pos.append(len(ids) - 1)
        return PRMInputs(ids, pos, len(segments), len(question), 0)

    def _probabilities(self, logits):
        import torch

        return torch.softmax(logits, dim=-1)[:, 1]


def test_adapter_reads_the_rows_of_the_score_positions():
    import math

    spec = vb.PoolingSpec("STEP", 3, "Qwen2ForProcessRewardModel")
    eng = _FakeEngine(spec)
    ad = vb.VLLMPRMAdapter(_Text(), eng, spec)
    scores = ad.score(["ab", "c", "d"], [["x", "yy"], [], ["z"]])
    sig = [1 / (1 + math.exp(-r / 10)) for r in range(3)]
    # rows: the question's tag is row 0; the steps are rows 1, 2 (response 0) and 1 (response 2)
    assert scores[0] == pytest.approx([sig[1], sig[2]]) and scores[1] == [] and scores[2] == pytest.approx([sig[1]])
    assert len(eng.seen) == 1 and len(eng.seen[0]) == 2  # one engine call, no input for the empty response
    assert ad.last_stats["model_calls"] == 1 and ad.last_stats["segments"] == 3

    class Short(_FakeEngine):
        def pool(self, prompts):
            rows, n = super().pool(prompts)
            return [r[:1] for r in rows], n

    with pytest.raises(RuntimeError, match=r"response 0: vLLM returned \(1, 2\) .* expected 3 rows of STEP"):
        vb.VLLMPRMAdapter(_Text(), Short(spec), spec).score(["ab"], [["x", "y"]])


def test_rollout_config_of_the_replicas():
    spec = vb.PoolingSpec("STEP", 151651, "Qwen2ForProcessRewardModel")
    prm = PRMConfig(enable=True, model_path="/m", backend="vllm", max_length=1024, max_tokens_per_batch=8192,
                    tensor_parallel_size=2, engine_kwargs={"max_num_seqs": 64})
    cpu = vb.rollout_config_for_prm(prm, spec, device_type="cpu", sleep=False)
    assert cpu.name == "vllm" and cpu.load_format == "auto" and cpu.skip_tokenizer_init is False
    assert (cpu.dtype, cpu.max_model_len, cpu.max_num_batched_tokens, cpu.tensor_model_parallel_size) == (
        "float32", 1024, 8192, 2)
    assert cpu.enable_prefix_caching is False and cpu.enable_chunked_prefill is False
    assert cpu.free_cache_engine is False and cpu.enable_sleep_mode is False
    kw = cpu.engine_kwargs["vllm"]
    assert kw["runner"] == "pooling" and kw["max_num_seqs"] == 64
    assert json.loads(kw["pooler_config"]) == {"tok_pooling_type": "STEP", "step_tag_id": 151651}
    gpu = vb.rollout_config_for_prm(prm, vb.PoolingSpec("ALL", 5, "X"), device_type="cuda", sleep=True)
    assert gpu.dtype == "bfloat16" and gpu.free_cache_engine and gpu.enable_sleep_mode
    assert "pooler_config" not in gpu.engine_kwargs["vllm"]


@pytest.fixture(scope="module")
def head16_ckpt(tmp_path_factory):
    from examples.credit_assignment.tiny_checkpoints import build_qwen_prm_checkpoint

    return build_qwen_prm_checkpoint(tmp_path_factory.mktemp("head16"), head_dim=16)["path"]


def test_load_prm_refuses_an_unservable_checkpoint_before_starting_vllm(head16_ckpt):
    pytest.importorskip("vllm")
    from verl_prpo.prm import load_prm

    cfg = {"enable": True, "model_path": str(head16_ckpt), "backend": "vllm"}
    with pytest.raises(ValueError, match=r"head size is 16 .*prm\.backend=fsdp"):
        load_prm(PRMConfig.from_config(cfg), "cpu")
    with pytest.raises(ValueError, match=r"prm\.step_separator .* one token"):
        load_prm(PRMConfig.from_config({**cfg, "step_separator": "<extra_0><extra_0>"}), "cpu")
    # the trainer's path checks the same before any replica starts (the pool is never touched)
    with pytest.raises(ValueError, match=r"head size is 16"):
        vb.create_vllm_prm_group(PRMConfig.from_config(cfg), str(head16_ckpt), object(), gpus_per_node=1,
                                 device_type="cpu")
    # the fsdp backend serves it
    assert len(load_prm(PRMConfig.from_config({**cfg, "backend": "fsdp"}), "cpu").score(["q"], [["a", "b"]])[0]) == 2


def test_tensor_parallel_size_must_divide_the_pool(tmp_path):
    pytest.importorskip("vllm")
    from examples.credit_assignment.tiny_checkpoints import build_qwen_prm_checkpoint

    path = str(build_qwen_prm_checkpoint(tmp_path / "prm")["path"])  # 2 heads: tp=2 divides them
    cfg = PRMConfig(enable=True, model_path=path, backend="vllm", tensor_parallel_size=2)
    pool = types.SimpleNamespace(world_size=1)
    with pytest.raises(ValueError, match=r"prm\.tensor_parallel_size=2 does not divide the PRM's pool of 1 devices "
                                         r"\(prm\.placement=colocate\)"):
        vb.create_vllm_prm_group(cfg, path, pool, gpus_per_node=1, device_type="cuda")
