"""The PRM worker group on a local CPU Ray cluster: 2 ranks give the same numbers as the in-process adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from examples.credit_assignment.tiny_assets import build_tiny_assets
from verl_prpo.prm import PRMConfig, load_prm, score_batch

pytestmark = pytest.mark.ray

PROBLEMS = [
    ("What is 2 plus 9?", ["We add: ", "$2 + 9 = 11$.", "\n\nSo $\\boxed{11}$."]),
    ("What is 3 times 5?", ["Three times five is fifteen."]),
    ("What is 8 minus 6?", ["First,", " $8 - 6 = 2$.", "\n\n", "Answer: 2."]),
    ("What is 4 plus 4?", ["$4 + 4 = 8$", " so the answer is 8."]),
    ("What is 7 times 3?", ["$7 * 3 = 21$."]),
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return build_tiny_assets(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    # address="local": always a fresh private cluster, never someone else's
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def _batch(tok):
    rows, sids = [], []
    for _, segments in PROBLEMS:
        ids, sid = [], []
        for s, text in enumerate(segments):
            t = tok(text, add_special_tokens=False)["input_ids"]
            ids += t
            sid += [s] * len(t)
        ids.append(tok.eos_token_id)
        sid.append(len(segments) - 1)
        rows.append(ids)
        sids.append(sid)
    L = max(len(r) for r in rows) + 2
    responses = torch.full((len(rows), L), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    seg = torch.full((len(rows), L), -1, dtype=torch.long)
    for i, (r, s) in enumerate(zip(rows, sids)):
        responses[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        seg[i, : len(s)] = torch.tensor(s)
    return responses, mask, seg


def _check(wg, cfg, assets, fallback=0.5, empty_rows=()):
    from transformers import AutoTokenizer

    from verl_prpo.prm.worker import compute_prm_scores_with_group

    tok = AutoTokenizer.from_pretrained(assets.tokenizer_dir)
    responses, mask, seg = _batch(tok)
    for i in empty_rows:
        mask[i] = 0
        seg[i] = -1
    questions = [q for q, _ in PROBLEMS]  # 5 rows on 2 ranks: exercises the padding to the world size
    got, stats = compute_prm_scores_with_group(wg, responses, mask, seg, questions, prior_mean=fallback)
    ref, ref_stats = score_batch(load_prm(cfg, "cpu"), tok, responses, mask, seg, questions, prior_mean=fallback)
    assert got.shape == ref.shape and got.dtype == torch.float32
    assert torch.allclose(got, ref, atol=1e-5)
    for key in ("truncated_segments", "truncated_questions", "prm_tokens", "segments", "response_tokens"):
        assert stats[key] == ref_stats[key], key
    assert 1 <= stats["model_calls"] <= len(PROBLEMS) + 1  # + the padding row
    return stats


def test_two_rank_cpu_worker_group_matches_the_adapter(assets, ray_cluster):
    from verl_prpo.prm.worker import create_prm_worker_group, make_cpu_resource_pool

    cfg = PRMConfig(enable=True, model_path=str(assets.prm_dir), max_length=256, max_tokens_per_batch=512)
    wg = create_prm_worker_group(cfg, str(assets.tokenizer_dir), make_cpu_resource_pool(2))
    assert wg.world_size == 2
    info = wg.describe()
    assert [d["rank"] for d in info] == [0, 1]
    assert all(d["device"] == "cpu" and not d["sharded"] and d["adapter"] == "qwen_math_prm" for d in info)
    stats = _check(wg, cfg, assets, fallback=0.5)
    assert stats["model_calls"] >= 2  # both ranks did work
    assert stats["truncated_segments"] == 0


def test_two_rank_fsdp_on_cpu_keeps_ranks_in_step(assets, ray_cluster):
    """FSDP2 sharding over gloo: ranks with different numbers of packed batches must not deadlock."""
    from verl_prpo.prm.worker import create_prm_worker_group, make_cpu_resource_pool

    cfg = PRMConfig(enable=True, model_path=str(assets.prm_dir), adapter="token_classification",
                    max_length=40, max_tokens_per_batch=40)
    wg = create_prm_worker_group(cfg, str(assets.tokenizer_dir), make_cpu_resource_pool(2), fsdp="always")
    info = wg.describe()
    assert all(d["sharded"] for d in info)
    full = sum(p.numel() for p in load_prm(cfg, "cpu").model.parameters())
    assert sum(d["local_param_numel"] for d in info) == full and info[0]["local_param_numel"] < full
    # 5 rows + 1 padding row (a copy of row 0): rank 0 gets rows 0-2 (>= 2 packed batches: row 0 alone fills the
    # 40-token budget), rank 1 gets the empty rows 3, 4 and the copy of row 0 (1 batch), so rank 1 must add dummy
    # forwards until both ranks ran as many forwards as rank 0
    stats = _check(wg, cfg, assets, fallback=0.3, empty_rows=(3, 4))
    rank0_forwards = stats["model_calls"] - 1
    assert rank0_forwards >= 2
    assert stats["dummy_model_calls"] == rank0_forwards - 1


SHARDED_CFG = dict(adapter="token_classification", max_length=40, max_tokens_per_batch=40)


@pytest.fixture(scope="module")
def sharded_group(assets, ray_cluster):
    """One 2-rank FSDP (gloo) group shared by the tests below (each group keeps its CPU bundles until the end)."""
    from verl_prpo.prm.worker import create_prm_worker_group, make_cpu_resource_pool

    cfg = PRMConfig(enable=True, model_path=str(assets.prm_dir), **SHARDED_CFG)
    return cfg, create_prm_worker_group(cfg, str(assets.tokenizer_dir), make_cpu_resource_pool(2), fsdp="always")


def test_sharded_group_loads_from_one_host_copy_and_shards_within_the_node(assets, sharded_group):
    """Issue 9 items 2 and 7: only rank 0 materialises the full model on the host; the plan shards over the node."""
    cfg, wg = sharded_group
    info = wg.describe()
    assert [d["host_full_copy"] for d in info] == [True, False]
    assert all(d["plan"]["shard_group_size"] == 2 and d["plan"]["replicas"] == 1 for d in info)
    assert all(d["gathered_param_numel"] == 0 and d["param_dtypes"] == ["torch.float32"] for d in info)
    _check(wg, cfg, assets, fallback=0.3)  # rank 1's shards, received from rank 0, give the reference scores


def test_a_rank_that_fails_makes_every_rank_fail_instead_of_hanging(assets, sharded_group):
    """Issue 9 item 9: rank 1 rejects its rows before the first collective; rank 0 must not wait forever."""
    import ray
    from transformers import AutoTokenizer

    from verl.protocol import DataProto, pad_dataproto_to_divisor

    cfg, wg = sharded_group
    tok = AutoTokenizer.from_pretrained(assets.tokenizer_dir)
    responses, mask, seg = _batch(tok)
    bad = seg.clone()
    bad[4, 0] = -1  # a valid token without a segment: row 4 goes to rank 1
    data = DataProto.from_dict(tensors={"responses": responses, "response_mask": mask, "prm_segment_ids": bad},
                               non_tensors={"question": np.array([q for q, _ in PROBLEMS], dtype=object)},
                               meta_info={"prior_mean": 0.5})
    padded, _ = pad_dataproto_to_divisor(data, 2)
    refs = [w.compute_prm_scores.remote(chunk) for w, chunk in zip(wg.workers, padded.chunk(2))]
    ready, _ = ray.wait(refs, num_returns=2, timeout=120)
    assert len(ready) == 2, "a PRM rank is still waiting in a collective"
    errors = []
    for ref in refs:
        with pytest.raises(Exception) as exc:
            ray.get(ref)
        errors.append(str(exc.value))
    assert "another rank" in errors[0]
    assert "negative" in errors[1]
    _check(wg, cfg, assets, fallback=0.3)  # the group is still usable afterwards
