"""``pure`` against a plain-Python transcription of ALGORITHMS.md "PURE" (loops over responses, steps and tokens)."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch

from verl_prpo.config import PUREConfig, from_algorithm_config
from verl_prpo.estimators import compute_pure_advantage


def pure_reference(rewards, mask, uids, p, seg, weighting="min_form", temperature=0.1, baseline="token",
                   vr_coef=1.0, mask_separator=True, whiten=True):
    """The spec, step by step, in float64 Python lists."""
    B, L = len(mask), len(mask[0])
    R = [sum(rewards[i]) for i in range(B)]
    steps, PR, n_tok = [], [], []
    for i in range(B):
        valid = [t for t in range(L) if mask[i][t]]
        n_tok.append(len(valid))
        ids = sorted({seg[i][t] for t in valid})
        row = []
        for s in ids:
            toks = [t for t in valid if seg[i][t] == s]
            row.append({"n": len(toks), "e": max(toks), "r": 2 * p[i][max(toks)] - 1})
        if weighting == "min_form":
            z = [math.exp(-st["r"] / temperature) for st in row]
            w = [x / sum(z) for x in z]
        else:
            w = [1 / len(row)] * len(row) if row else []
        for st, wi in zip(row, w):
            st["q"] = wi * st["r"]
        steps.append(row)
        PR.append(sum(st["q"] for st in row))
    group = {}
    for i, u in enumerate(uids):
        group.setdefault(u, []).append(i)
    adv = [[0.0] * L for _ in range(B)]
    for i in range(B):
        others = [k for k in group[uids[i]] if k != i]
        if baseline == "token":
            den = sum(n_tok[k] for k in others)
            b = sum(PR[k] for k in others) / den if den > 0 else 0.0
        else:
            b = sum(PR[k] / len(steps[k]) if steps[k] else 0.0 for k in others) / len(others) if others else 0.0
        v = R[i] - sum(R[k] for k in others) / len(others) if others else 0.0
        reward = [0.0] * L
        for st in steps[i]:
            reward[st["e"]] += st["q"] - b * (st["n"] if baseline == "token" else 1)
        valid = [t for t in range(L) if mask[i][t]]
        if valid:
            reward[max(valid)] += vr_coef * v
        for t in range(L):
            adv[i][t] = sum(reward[t:]) if mask[i][t] else 0.0
        if mask_separator:
            for st in steps[i]:
                adv[i][st["e"]] = 0.0
    if whiten:
        vals = [adv[i][t] for i in range(B) for t in range(L) if mask[i][t]]
        if vals:
            mean = sum(vals) / len(vals)
            var = sum((x - mean) ** 2 for x in vals) / len(vals)
            sd = math.sqrt(max(var, 1e-8))
            adv = [[(adv[i][t] - mean) / sd if mask[i][t] else 0.0 for t in range(L)] for i in range(B)]
    return torch.tensor(adv, dtype=torch.float64), PR


def random_batch(seed, B=14, L=24, holes=False):
    """Ragged responses (some empty), random steps, one probability per step, groups of 1..4 with shuffled uids."""
    rng = random.Random(seed)
    sizes = []
    while sum(sizes) < B:
        sizes.append(min(rng.choice([1, 2, 3, 4]), B - sum(sizes)))
    uids = [f"u{g}" for g, size in enumerate(sizes) for _ in range(size)]
    rng.shuffle(uids)
    mask = torch.zeros(B, L, dtype=torch.long)
    seg = torch.full((B, L), -1, dtype=torch.long)
    p = torch.zeros(B, L)
    rewards = torch.zeros(B, L)
    for i in range(B):
        n = rng.choice([0, 1, 2] + list(range(3, L + 1)))
        mask[i, :n] = 1
        if holes and n > 4:
            mask[i, rng.randrange(1, n - 1)] = 0
        cuts = sorted(rng.sample(range(1, n), min(n - 1, rng.randrange(0, 5)))) if n > 1 else []
        bounds = [0] + cuts + [n]
        for s in range(len(bounds) - 1):
            prob = rng.choice([0.0, 1.0, rng.random()])
            for t in range(bounds[s], bounds[s + 1]):
                if mask[i, t]:
                    seg[i, t], p[i, t] = s, prob
        if n:
            rewards[i, n - 1] = rng.choice([0.0, 1.0, -1.0, 0.5])
    return rewards, mask, np.array(uids, dtype=object), p, seg


def run(rewards, mask, uids, p, seg, metrics=None, **opts):
    adv, ret = compute_pure_advantage(rewards, mask, uids, {"pure": opts}, prm_scores=p, segment_ids=seg,
                                      metrics=metrics)
    assert adv is ret and adv.dtype == torch.float32 and adv.shape == mask.shape
    return adv


def test_hand_case_mean_weights_token_baseline():
    # ALGORITHMS.md by hand: resp 0 (4 tokens, steps [0,0,1,1], p = 1, 0.5; R = 1), resp 1 (2 tokens, p = 0; R = 0)
    # r = [1, 0] / [-1]; w = 1/2 / 1; PR = 0.5 / -1; b_0 = -1 / 2, b_1 = 0.5 / 4; v = 1 / -1
    # rewards: resp 0: t1 = 0.5 + 0.5 * 2 = 1.5, t3 = 0 + 0.5 * 2 + 1 = 2; resp 1: t1 = -1 - 0.125 * 2 - 1 = -2.25
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    seg = torch.tensor([[0, 0, 1, 1], [0, 0, -1, -1]])
    p = torch.tensor([[1.0, 1.0, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]])
    rewards = torch.tensor([[0.0, 0, 0, 1], [0, 0, 0, 0]])
    uids = np.array(["a", "a"], dtype=object)
    adv = run(rewards, mask, uids, p, seg, weighting="none", mask_separator=False, whiten=False)
    torch.testing.assert_close(adv, torch.tensor([[3.5, 3.5, 2.0, 2.0], [-2.25, -2.25, 0, 0]]))
    adv = run(rewards, mask, uids, p, seg, weighting="none", mask_separator=True, whiten=False)
    torch.testing.assert_close(adv, torch.tensor([[3.5, 0.0, 2.0, 0.0], [-2.25, 0.0, 0, 0]]))
    # baseline = step: b_0 = PR_1 / S_1 = -1, b_1 = PR_0 / S_0 = 0.25 -> resp 0: t1 = 1.5, t3 = 0 + 1 + 1 = 2
    adv = run(rewards, mask, uids, p, seg, weighting="none", baseline="step", mask_separator=False, whiten=False)
    torch.testing.assert_close(adv, torch.tensor([[3.5, 3.5, 2.0, 2.0], [-2.25, -2.25, 0, 0]]))
    adv = run(rewards, mask, uids, p, seg, weighting="none", vr_coef=0.0, mask_separator=False, whiten=False)
    torch.testing.assert_close(adv, torch.tensor([[2.5, 2.5, 1.0, 1.0], [-1.25, -1.25, 0, 0]]))


def test_min_form_is_a_soft_minimum():
    # steps with r = +1 and -1: at T = 0.1 the weights are softmax([-10, 10]), PR ~ -1 (the worse step)
    mask = torch.ones(1, 4, dtype=torch.long)
    seg = torch.tensor([[0, 0, 1, 1]])
    p = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    metrics = {}
    run(torch.zeros(1, 4), mask, np.array(["a"], dtype=object), p, seg, metrics=metrics, whiten=False,
        mask_separator=False)
    w_good = 1 / (1 + math.exp(20))
    assert metrics["pure/soft_min_reward/mean"] == pytest.approx(w_good - (1 - w_good), abs=1e-6)
    assert metrics["pure/singleton_groups"] == 1.0 and metrics["pure/baseline/mean"] == 0.0
    metrics = {}
    run(torch.zeros(1, 4), mask, np.array(["a"], dtype=object), p, seg, metrics=metrics, weighting="none")
    assert metrics["pure/soft_min_reward/mean"] == pytest.approx(0.0, abs=1e-7)


OPTIONS = list(itertools.product(["min_form", "none"], ["token", "step"], [True, False], [True, False]))


@pytest.mark.parametrize("weighting, baseline, mask_separator, whiten", OPTIONS)
@pytest.mark.parametrize("seed", [0, 1])
def test_random_batches_match_reference(seed, weighting, baseline, mask_separator, whiten):
    opts = dict(weighting=weighting, baseline=baseline, mask_separator=mask_separator, whiten=whiten,
                temperature=[0.1, 0.7][seed], vr_coef=[1.0, 0.3][seed])
    rewards, mask, uids, p, seg = random_batch(seed * 31 + len(opts), holes=bool(seed))
    metrics = {}
    adv = run(rewards, mask, uids, p, seg, metrics=metrics, **opts)
    ref, PR = pure_reference(rewards.tolist(), mask.tolist(), list(uids), p.tolist(), seg.tolist(), **opts)
    torch.testing.assert_close(adv.double(), ref, atol=2e-5, rtol=1e-5)
    assert bool((adv[mask == 0] == 0).all())
    nonempty = [x for x, i in zip(PR, range(len(PR))) if mask[i].any()]
    assert metrics["pure/soft_min_reward/mean"] == pytest.approx(sum(nonempty) / len(nonempty), abs=1e-5)
    if whiten:
        vals = adv[mask.bool()].double()
        assert float(vals.mean()) == pytest.approx(0.0, abs=1e-5)
        assert float(vals.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


def test_group_order_does_not_matter():
    rewards, mask, uids, p, seg = random_batch(7)
    perm = torch.randperm(len(uids), generator=torch.Generator().manual_seed(0))
    adv = run(rewards, mask, uids, p, seg)
    adv_perm = run(rewards[perm], mask[perm], uids[perm.numpy()], p[perm], seg[perm])
    torch.testing.assert_close(adv_perm, adv[perm])


def test_int32_and_int64_step_ids_agree():
    # segment() returns int32 ids; ids built elsewhere may be int64 (or another integer type)
    rewards, mask, uids, p, seg = random_batch(3)
    adv = run(rewards, mask, uids, p, seg.long())
    torch.testing.assert_close(run(rewards, mask, uids, p, seg.to(torch.int32)), adv, atol=0, rtol=0)
    torch.testing.assert_close(run(rewards, mask, uids, p, seg.to(torch.int16)), adv, atol=0, rtol=0)


def test_steps_metrics_and_defaults():
    rewards, mask, uids, p, seg = random_batch(3)
    metrics = {}
    adv = compute_pure_advantage(rewards, mask, uids, None, prm_scores=p, segment_ids=seg, metrics=metrics)
    ref, _ = pure_reference(rewards.tolist(), mask.tolist(), list(uids), p.tolist(), seg.tolist())
    torch.testing.assert_close(adv[0].double(), ref, atol=2e-5, rtol=1e-5)
    counts = [len({int(s) for s in seg[i][mask[i].bool()]}) for i in range(len(uids)) if mask[i].any()]
    assert metrics["pure/steps_per_response/mean"] == pytest.approx(sum(counts) / len(counts))
    assert metrics["pure/steps_per_response/max"] == max(counts)
    assert metrics["pure/steps_per_response/min"] == min(counts)
    for key in ("pure/baseline/mean", "adv/mean", "adv/std"):
        assert math.isfinite(metrics[key])


def test_empty_batch_and_empty_responses():
    mask = torch.zeros(3, 5, dtype=torch.long)
    seg = torch.full((3, 5), -1)
    adv = run(torch.zeros(3, 5), mask, np.array(["a", "a", "b"], dtype=object), torch.zeros(3, 5), seg)
    assert bool((adv == 0).all())


def _one():
    return random_batch(11, B=6, L=10)


@pytest.mark.parametrize("field, value, match", [
    ("prm_scores", float("nan"), "prm_scores has 1 NaN/inf"),
    ("prm_scores", 1.5, r"prm_scores must be probabilities in \[0, 1\]"),
    ("prm_scores", -0.1, r"prm_scores must be probabilities in \[0, 1\]"),
])
def test_bad_scores(field, value, match):
    rewards, mask, uids, p, seg = _one()
    i, t = [int(x) for x in mask.nonzero()[0]]
    p = p.clone()
    p[i, t] = value
    with pytest.raises(ValueError, match=match):
        run(rewards, mask, uids, p, seg)


def test_step_probability_is_read_at_the_step_end():
    # p_{i,s} is the score at e_{i,s}, the token the PRM reads: 0.3 for step 0, 0.5 for step 1
    mask = torch.ones(1, 4, dtype=torch.long)
    seg = torch.tensor([[0, 0, 1, 1]])
    args = (torch.zeros(1, 4), mask, np.array(["a"], dtype=object))
    opts = dict(weighting="none", mask_separator=False, whiten=False)
    adv = run(*args, torch.tensor([[0.9, 0.3, 0.1, 0.5]]), seg, **opts)
    torch.testing.assert_close(adv, run(*args, torch.tensor([[0.3, 0.3, 0.5, 0.5]]), seg, **opts))
    torch.testing.assert_close(adv, torch.tensor([[-0.2, -0.2, 0.0, 0.0]]))  # r = [-0.4, 0], w = 1/2


def test_holes_at_step_ends_and_unused_ids():
    # e_{i,s} is the last *valid* token of step s: here a hole ends step 0 (row 0), step 1 is missing (row 1) and a
    # hole starts the response (row 2)
    mask = torch.tensor([[1, 1, 0, 1, 1, 0], [1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 1, 1]])
    seg = torch.tensor([[0, 0, -1, 1, 1, -1], [0, 0, 2, 2, 2, 3], [-1, 0, 0, -1, 0, 1]])
    p = torch.tensor([[0.2, 0.9, 0.5, 0.4, 0.7, 0.1], [0.6, 0.3, 0.8, 0.1, 0.5, 0.9], [0.5, 0.4, 0.2, 0.9, 0.6, 0.3]])
    rewards = torch.zeros(3, 6)
    rewards[0, 4], rewards[2, 5] = 1.0, 1.0
    uids = np.array(["a", "a", "a"], dtype=object)
    for opts in (dict(), dict(weighting="none", baseline="step", whiten=False)):
        ref, _ = pure_reference(rewards.tolist(), mask.tolist(), list(uids), p.tolist(), seg.tolist(), **opts)
        torch.testing.assert_close(run(rewards, mask, uids, p, seg, **opts).double(), ref, atol=2e-5, rtol=1e-5)


def test_step_ids_must_be_non_decreasing():
    mask = torch.ones(2, 4, dtype=torch.long)
    p = torch.full((2, 4), 0.5)
    uids = np.array(["a", "a"], dtype=object)
    for bad in ([[0, 0, 1, 1], [1, 1, 0, 0]], [[0, 1, 0, 1], [0, 0, 0, 0]]):
        with pytest.raises(ValueError, match="non-decreasing"):
            run(torch.zeros(2, 4), mask, uids, p, torch.tensor(bad))


def test_missing_inputs():
    rewards, mask, uids, p, seg = _one()
    with pytest.raises(ValueError, match="needs `prm_scores`.*prpo_sync"):
        compute_pure_advantage(rewards, mask, uids, None, segment_ids=seg)
    with pytest.raises(ValueError, match="needs `segment_ids`.*prpo_sync"):
        compute_pure_advantage(rewards, mask, uids, None, prm_scores=p)
    with pytest.raises(ValueError, match="uid"):
        compute_pure_advantage(rewards, mask, None, None, prm_scores=p, segment_ids=seg)
    bad = seg.clone()
    i, t = [int(x) for x in mask.nonzero()[0]]
    bad[i, t] = -1
    with pytest.raises(ValueError, match="segment_ids must be >= 0"):
        compute_pure_advantage(rewards, mask, uids, None, prm_scores=p, segment_ids=bad)
    with pytest.raises(ValueError, match="segment_ids has shape"):
        compute_pure_advantage(rewards, mask, uids, None, prm_scores=p, segment_ids=seg[:, :-1])
    nan_r = rewards.clone()
    nan_r[0, 0] = float("nan")
    with pytest.raises(ValueError, match="token_level_rewards"):
        compute_pure_advantage(nan_r, mask, uids, None, prm_scores=p, segment_ids=seg)


def test_config_defaults_and_validation():
    assert PUREConfig() == PUREConfig(weighting="min_form", temperature=0.1, baseline="token", vr_coef=1.0,
                                      mask_separator=True, whiten=True, segmentation="newline")
    assert from_algorithm_config({"pure": {"segmentation": "entropy", "cut_rule": "released"}}, "pure").k == 5
    for kwargs, match in [({"weighting": "max"}, "algorithm.pure.weighting"),
                          ({"temperature": 0.0}, "algorithm.pure.temperature must be > 0"),
                          ({"baseline": "group"}, "algorithm.pure.baseline"),
                          ({"vr_coef": -1.0}, "algorithm.pure.vr_coef must be >= 0"),
                          ({"mask_separator": 1}, "algorithm.pure.mask_separator must be true or false"),
                          ({"whiten": "yes"}, "algorithm.pure.whiten"),
                          ({"segmentation": "sentence"}, "algorithm.pure.segmentation"),
                          ({"cut_rule": "paper"}, "algorithm.pure.cut_rule")]:
        with pytest.raises(ValueError, match=match.replace(".", r"\.")):
            PUREConfig(**kwargs)
    with pytest.raises(ValueError, match=r"unknown key\(s\) in algorithm\.pure: algorithm\.pure\.temprature"):
        from_algorithm_config({"pure": {"temprature": 0.2}}, "pure")


def test_registered_in_verl():
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    assert get_adv_estimator_fn("pure") is compute_pure_advantage
