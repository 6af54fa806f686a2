"""The PRM worker on the GPU path, checked on CPU (issue 9, items 2, 6, 7, 8).

* 2: the PRM's dtype follows the device it COMPUTES on (bf16 on a GPU) even when its weights are loaded to host
  memory first (offload); CUDA is faked so that the worker takes its GPU branch up to the first real CUDA call.
* 6: a sharded PRM is resharded and the CUDA cache emptied after every scoring call.
* 7: placement rule: one full copy per GPU when it fits, shards only within a node; a 7B Qwen PRM (built on the
  meta device with the real dimensions) is replicated on 80 GB GPUs and sharded within a node on 24 GB GPUs.
* 8: PRM forwards run under ``torch.no_grad`` (as verl's engines do), not ``torch.inference_mode``.
"""

from __future__ import annotations

import socket
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from examples.credit_assignment.tiny_assets import build_tiny_assets
from verl_prpo.prm import PRMConfig, load_prm
from verl_prpo.prm.worker import PRMWorker, plan_placement

GiB = 2**30


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_tiny_assets(tmp_path_factory.mktemp("tiny"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def single_rank_env(monkeypatch):
    """The environment verl's RayWorkerGroup gives rank 0 of a 1-rank group, in this process."""
    import torch.distributed as dist

    for k, v in {"WORLD_SIZE": "1", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
                 "RAY_LOCAL_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(k, v)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def _data(tok, n=3):
    from verl.protocol import DataProto

    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in
            ["We add: $2 + 9 = 11$.", "So the answer is 15.", "First, $8 - 6 = 2$. Answer: 2."][:n]]
    L = max(map(len, rows))
    responses = torch.full((n, L), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((n, L), dtype=torch.long)
    seg = torch.full((n, L), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        responses[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        seg[i, : len(r)] = (torch.arange(len(r)) >= len(r) // 2).long()  # two segments
    return DataProto.from_dict(tensors={"responses": responses, "response_mask": mask, "prm_segment_ids": seg},
                               non_tensors={"question": np.array(["What is it?"] * n, dtype=object)},
                               meta_info={"prior_mean": 0.5})


# ---------------------------------------------------------------------------------------------------- item 7
def _plan(**kw):
    base = dict(sharding="auto", use_cuda=True, world_size=16, ranks_per_node=8, replica_memory_fraction=0.3)
    base.update(kw)
    return plan_placement(**base)


def test_auto_placement_replicates_when_it_fits_and_shards_only_within_a_node():
    bf16_7b = int(7.6e9 * 2)
    p = _plan(param_bytes=bf16_7b, device_memory_bytes=80 * GiB)
    assert p["sharded"] is False and p["replicas"] == 16
    p = _plan(param_bytes=bf16_7b, device_memory_bytes=24 * GiB)
    assert p["sharded"] is True and p["shard_group_size"] == 8 and p["replicas"] == 2  # never across nodes
    assert _plan(param_bytes=bf16_7b, device_memory_bytes=24 * GiB, ranks_per_node=1)["sharded"] is False
    assert _plan(param_bytes=bf16_7b, device_memory_bytes=None, use_cuda=False)["sharded"] is False
    assert _plan(sharding="replicate", param_bytes=bf16_7b, device_memory_bytes=24 * GiB)["sharded"] is False
    forced = _plan(sharding="shard", param_bytes=1, device_memory_bytes=80 * GiB)
    assert forced["sharded"] and forced["shard_group_size"] == 8
    with pytest.raises(ValueError, match="whole number of nodes"):
        _plan(world_size=12, param_bytes=1, device_memory_bytes=80 * GiB)


def test_sharding_defaults_to_auto():
    assert PRMConfig().sharding == "auto" and PRMConfig().replica_memory_fraction == 0.3
    with pytest.raises(ValueError, match=r"prm\.sharding"):
        PRMConfig(sharding="everywhere")


def test_real_7b_qwen_prm_size_decides_the_placement():
    """Qwen2.5-Math-PRM-7B's dimensions (VERL_NOTES.md), on the meta device: ~7.1e9 parameters, 14 GiB in bf16."""
    from transformers import Qwen2Config

    from verl_prpo.prm.adapters import build_empty_model

    mc = Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                     num_key_value_heads=4, vocab_size=152064, max_position_embeddings=4096,
                     tie_word_embeddings=False)
    mc.architectures = ["Qwen2ForProcessRewardModel"]
    skel = build_empty_model(PRMConfig(), "qwen_math_prm", mc, torch.bfloat16)
    assert all(p.is_meta for p in skel.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in skel.parameters())
    assert 7.0e9 < nbytes / 2 < 7.2e9
    assert not _plan(param_bytes=nbytes, device_memory_bytes=80 * GiB)["sharded"]  # H100/A100-80GB: replicas
    assert _plan(param_bytes=nbytes, device_memory_bytes=40 * GiB)["sharded"]  # A100-40GB: shard in the node


# ---------------------------------------------------------------------------------------------------- item 2
def test_offloaded_prm_is_loaded_in_bf16_when_it_computes_on_a_gpu(assets, single_rank_env, monkeypatch):
    """colocate default (param_offload=true): weights land in host memory, but in prm.dtype, not float32."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=80 * GiB))
    pinned = []
    monkeypatch.setattr(PRMWorker, "_pin_host_params", lambda self, model: pinned.append(model))
    cfg = PRMConfig(enable=True, model_path=str(assets.prm_dir))
    assert cfg.param_offload is True and cfg.dtype == "bfloat16"
    w = PRMWorker(cfg.to_dict(), str(assets.tokenizer_dir))
    info = w.init_model()
    assert info["dtype"] == "torch.bfloat16" and info["param_dtypes"] == ["torch.bfloat16"]
    assert info["device"] == "cuda:0" and not info["sharded"] and info["plan"]["replicas"] == 1
    assert pinned and all(p.device.type == "cpu" for p in pinned[0].parameters())  # host copy, pinned, bf16


def test_cpu_prm_stays_float32(assets, single_rank_env):
    info = PRMWorker(PRMConfig(enable=True, model_path=str(assets.prm_dir)).to_dict(),
                     str(assets.tokenizer_dir)).init_model()
    assert info["dtype"] == "torch.float32" and info["param_dtypes"] == ["torch.float32"]


# ---------------------------------------------------------------------------------------------------- item 6
def test_sharded_prm_releases_gathered_parameters_after_every_call(assets, single_rank_env):
    from transformers import AutoTokenizer

    cfg = PRMConfig(enable=True, model_path=str(assets.prm_dir), max_length=64, max_tokens_per_batch=64)
    w = PRMWorker(cfg.to_dict(), str(assets.tokenizer_dir), fsdp="always")
    info = w.init_model()
    assert info["sharded"] and info["gathered_param_numel"] == 0
    out = w.compute_prm_scores(_data(AutoTokenizer.from_pretrained(assets.tokenizer_dir)))
    assert out.batch["prm_scores"].shape[0] == 3
    after = w.describe()
    assert after["gathered_param_numel"] == 0  # FSDP2 leaves the root gathered after a forward unless resharded
    assert after["memory_releases"] == 1
    w.compute_prm_scores(_data(AutoTokenizer.from_pretrained(assets.tokenizer_dir), n=2))
    assert w.describe()["memory_releases"] == 2 and w.describe()["gathered_param_numel"] == 0


def test_release_memory_reshards_and_empties_the_cuda_cache(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    w = PRMWorker.__new__(PRMWorker)
    w.adapter = SimpleNamespace(model=SimpleNamespace(reshard=lambda: calls.append("reshard")))
    w.sharded, w._offload, w.device, w.memory_releases = True, False, torch.device("cuda", 0), 0
    w._release_memory()
    assert calls == ["reshard", "empty_cache"] and w.memory_releases == 1


# ---------------------------------------------------------------------------------------------------- item 8
def test_prm_forwards_run_under_no_grad_not_inference_mode(assets):
    ad = load_prm(PRMConfig(enable=True, model_path=str(assets.prm_dir)), "cpu")
    seen = []
    inner = ad.model

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            seen.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
            return self.inner(**kw)

    ad.model = Probe()
    ad.score(["What is 2 plus 2?"], [["2 + 2 = 4.", " So 4."]])
    ad._dummy_forward()
    assert len(seen) == 2 and all(mode == (False, False) for mode in seen)
