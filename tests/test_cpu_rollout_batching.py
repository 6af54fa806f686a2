"""The CPU rollout server cuts one batch for requests that arrive one after another (verl's agent loop sends a
step's requests as separate calls), without Ray."""

from __future__ import annotations

import asyncio

import pytest

from verl_prpo.cpu import rollout as rollout_mod


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from verl_prpo.assets import build_tiny_assets

    a = build_tiny_assets(tmp_path_factory.mktemp("tiny"), n_train=8, n_val=2, vocab_size=300, hidden_size=32,
                          num_layers=1)
    return rollout_mod.HFRolloutServer({"prompt_length": 16, "response_length": 4, "max_num_seqs": 64},
                                       {"path": str(a.policy_dir)})


def _fire(server, n: int, gap_s: float) -> list:
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True, "max_tokens": 4}

    async def one(i):
        await asyncio.sleep(i * gap_s)
        return await server.generate([5, 6, 7, 8][: 1 + i % 4], params, f"r{i}")

    async def main():
        return await asyncio.gather(*[one(i) for i in range(n)])

    return asyncio.run(main())


def test_requests_arriving_a_few_ms_apart_share_one_generate_call(server):
    before = dict(server.stats)
    outs = _fire(server, 24, gap_s=0.004)  # 24 requests over ~0.1 s: each gap < BATCH_SETTLE_S
    assert server.stats["requests"] - before["requests"] == 24
    assert server.stats["batches"] - before["batches"] == 1
    assert all(1 <= len(o.token_ids) <= 4 and len(o.log_probs) == len(o.token_ids) for o in outs)


def test_the_wait_for_more_requests_is_bounded(server, monkeypatch):
    monkeypatch.setattr(rollout_mod, "BATCH_WAIT_MAX_S", 0.06)
    before = dict(server.stats)
    _fire(server, 8, gap_s=0.02)  # arrivals keep coming for 0.16 s, longer than the bound
    assert server.stats["batches"] - before["batches"] >= 2
