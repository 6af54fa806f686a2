"""The CPU rollout server cuts one batch for requests that arrive one after another (verl's agent loop sends a
step's requests as separate calls), without Ray."""

from __future__ import annotations

import asyncio

import pytest
import torch

from verl_prpo.cpu import rollout as rollout_mod


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from examples.credit_assignment.tiny_assets import build_tiny_assets

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


# ---------------------------------------------------------------- seeded sampling


def test_a_requests_samples_do_not_depend_on_its_batch_or_arrival_order(server, monkeypatch):
    """The same requests, cut into one batch or into several and sent in another order, get the same tokens per
    (prompt, arrival count): with the global RNG every run of the same config sampled differently."""
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True, "max_tokens": 4}
    prompts = [[5, 6, 7, 8][: 1 + i % 4] for i in range(16)]

    def fire(order, gap_s):
        async def one(rank, i):
            await asyncio.sleep(rank * gap_s)
            return i, await server.generate(prompts[i], params, f"r{i}")

        async def main():
            return await asyncio.gather(*[one(rank, i) for rank, i in enumerate(order)])

        server._arrivals.clear()
        before = server.stats["batches"]
        outs = asyncio.run(main())
        by_prompt: dict[tuple, list] = {}
        for i, o in sorted(outs, key=lambda x: order.index(x[0])):  # arrival order within a prompt
            by_prompt.setdefault(tuple(prompts[i]), []).append((o.token_ids, [round(x, 4) for x in o.log_probs]))
        return by_prompt, server.stats["batches"] - before

    together, n_together = fire(list(range(16)), 0.0)
    monkeypatch.setattr(rollout_mod, "BATCH_WAIT_MAX_S", 0.03)
    apart, n_apart = fire(list(reversed(range(16))), 0.05)
    assert n_together == 1 and n_apart >= 4
    assert together == apart
    # the four samples of one prompt differ from each other (distinct seeds), so the check above is not vacuous
    assert all(len({tuple(t) for t, _ in v}) > 1 for v in together.values())


def test_seeds_change_with_the_weights_version_the_base_seed_and_the_arrival_count():
    s = rollout_mod.request_seed
    base = s(42, 0, [1, 2, 3], 0)
    assert base == s(42, 0, [1, 2, 3], 0)
    assert len({base, s(43, 0, [1, 2, 3], 0), s(42, 1, [1, 2, 3], 0), s(42, 0, [1, 2, 3], 1), s(42, 0, [1, 2], 0),
                s(42, 0, [12, 3], 0)}) == 6
    assert 0 <= base < 2**63


def _draws(logits, n, **kw):
    proc = rollout_mod.SeededSampling(list(range(n)), **kw)
    return proc(None, logits.expand(n, -1)).argmax(-1)


def test_seeded_sampling_draws_from_the_tempered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    n = 40_000
    for t in (1.0, 0.5):
        p = (logits[0] / t).softmax(-1)
        freq = torch.bincount(_draws(logits, n, temperature=t), minlength=5).double() / n
        sigma = (p * (1 - p) / n).sqrt()
        assert ((freq - p).abs() < 5 * sigma + 1e-4).all(), (t, freq, p)


def test_seeded_sampling_top_k_and_top_p_supports():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])  # probs about .52 .19 .07 .03 .19 (t = 1)
    assert set(_draws(logits, 4000, temperature=1.0, top_k=2).tolist()) == {0, 1}
    # top_p 0.6: token 0 (.52) is not enough, the next most likely (index 1 or 4, tied mass .19) completes it
    support = set(_draws(logits, 4000, temperature=1.0, top_p=0.6).tolist())
    assert support in ({0, 1}, {0, 4})
    assert set(_draws(logits, 4000, temperature=1.0, top_p=0.5).tolist()) == {0}
    with pytest.raises(ValueError, match="temperature"):
        rollout_mod.SeededSampling([0], temperature=0.0)
