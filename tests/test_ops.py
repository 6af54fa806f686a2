"""verl_prpo.ops against plain-Python references written from ALGORITHMS.md (and against verl's own GRPO)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

from verl_prpo import ops

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------------------------------
# plain-Python references
# ----------------------------------------------------------------------------------------------------------------------


def ref_group_stats(values, uids):
    """{uid: (mean, std)} with verl's conventions: unbiased std, a group of one has mean 0, std 1."""
    groups: dict = {}
    for v, u in zip(values, uids):
        groups.setdefault(u, []).append(float(v))
    return {u: ((0.0, 1.0) if len(vs) == 1 else (statistics.fmean(vs), statistics.stdev(vs))) for u, vs in groups.items()}


def ref_outcome(R, uids, norm_by_std=True, eps=1e-6):
    stats = ref_group_stats(R, uids)
    a_out, beta = [], []
    for r, u in zip(R, uids):
        mean, std = stats[u]
        beta.append(r - mean)
        a_out.append((r - mean) / (std + eps) if norm_by_std else r - mean)
    return a_out, beta


@st.composite
def batches(draw, max_b=10, max_l=10):
    B = draw(st.integers(1, max_b))
    L = draw(st.integers(1, max_l))
    n_groups = draw(st.integers(1, B))
    uids = [f"q{draw(st.integers(0, n_groups - 1))}" for _ in range(B)]
    lengths = [draw(st.integers(0, L)) for _ in range(B)]
    holes = draw(st.booleans())
    mask = np.zeros((B, L), dtype=np.int64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        if holes and n > 2:
            mask[i, draw(st.integers(1, n - 2))] = 0  # a hole strictly inside the response
    grid = st.sampled_from([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 2.0])
    x = np.array([[draw(grid) for _ in range(L)] for _ in range(B)], dtype=np.float32)
    R = [draw(st.sampled_from([-1.0, 0.0, 0.5, 1.0])) for _ in range(B)]
    return {"uids": np.array(uids, dtype=object), "mask": torch.tensor(mask), "x": torch.tensor(x), "R": R}


def rewards_tensor(R, mask):
    B, L = mask.shape
    out = torch.zeros(B, L)
    for i, r in enumerate(R):
        valid = [t for t in range(L) if mask[i, t]]
        out[i, valid[-1] if valid else 0] = r
    return out


# ----------------------------------------------------------------------------------------------------------------------
# group_ids
# ----------------------------------------------------------------------------------------------------------------------


def test_group_ids_any_order():
    uids = np.array(["b", "a", "b", "c", "a"], dtype=object)
    gid, G = ops.group_ids(uids)
    assert G == 3 and gid.dtype == torch.long and gid.shape == (5,)
    g = gid.tolist()
    assert g[0] == g[2] and g[1] == g[4] and len({g[0], g[1], g[3]}) == 3


def test_group_ids_accepts_list_and_ints():
    gid, G = ops.group_ids([3, 1, 3])
    assert G == 2 and gid[0] == gid[2] != gid[1]
    gid, G = ops.group_ids(torch.tensor([7, 7, 8]))
    assert G == 2 and gid[0] == gid[1] != gid[2]


@pytest.mark.parametrize("bad", [None, float("nan"), np.nan])
def test_group_ids_rejects_missing_uid(bad):
    with pytest.raises(ValueError, match="None/NaN"):
        ops.group_ids(np.array(["a", bad, "a"], dtype=object))


def test_group_ids_rejects_none_index_and_length_mismatch():
    with pytest.raises(ValueError, match="uid"):
        ops.group_ids(None)
    with pytest.raises(ValueError, match="length 2.*3 responses"):
        ops.group_ids(np.array(["a", "b"], dtype=object), expected_len=3)


# ----------------------------------------------------------------------------------------------------------------------
# group_mean_std / outcome_advantage
# ----------------------------------------------------------------------------------------------------------------------


def test_group_mean_std_hand_case():
    values = torch.tensor([1.0, 3.0, 10.0, 5.0, 2.0])
    gid = torch.tensor([0, 0, 1, 0, 2])
    mean, std, count = ops.group_mean_std(values, gid, 3)
    assert mean.tolist() == pytest.approx([3.0, 0.0, 0.0])  # groups 1 and 2 have one member: mean 0, std 1
    assert std.tolist() == pytest.approx([2.0, 1.0, 1.0])  # unbiased std of (1, 3, 5) is 2
    assert count.tolist() == [3.0, 1.0, 1.0]


def test_outcome_advantage_hand_case():
    mask = torch.ones(4, 3)
    rewards = torch.zeros(4, 3)
    rewards[:, -1] = torch.tensor([1.0, 0.0, 1.0, 5.0])
    uids = np.array(["a", "a", "a", "solo"], dtype=object)
    a_out, beta = ops.outcome_advantage(rewards, mask, uids)
    m, s = 2 / 3, statistics.stdev([1.0, 0.0, 1.0])
    assert beta.tolist() == pytest.approx([1 - m, -m, 1 - m, 5.0])
    assert a_out.tolist() == pytest.approx([(1 - m) / (s + 1e-6), -m / (s + 1e-6), (1 - m) / (s + 1e-6), 5.0 / (1 + 1e-6)])
    a_out, beta2 = ops.outcome_advantage(rewards, mask, uids, norm_by_std=False)
    assert torch.equal(a_out, beta2)


@SETTINGS
@given(batches())
def test_outcome_advantage_matches_reference_and_verl_grpo(b):
    rewards = rewards_tensor(b["R"], b["mask"])
    a_out, beta = ops.outcome_advantage(rewards, b["mask"], b["uids"])
    ref_a, ref_beta = ref_outcome(b["R"], list(b["uids"]))
    np.testing.assert_allclose(a_out.numpy(), ref_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(beta.numpy(), ref_beta, rtol=1e-5, atol=1e-6)
    verl_adv, _ = compute_grpo_outcome_advantage(rewards, b["mask"].float(), b["uids"])
    np.testing.assert_allclose((a_out[:, None] * b["mask"]).numpy(), verl_adv.numpy(), rtol=1e-5, atol=1e-5)


@SETTINGS
@given(batches(), st.randoms(use_true_random=False))
def test_outcome_advantage_permutation_equivariant(b, rnd):
    rewards = rewards_tensor(b["R"], b["mask"])
    perm = list(range(len(b["R"])))
    rnd.shuffle(perm)
    a, _ = ops.outcome_advantage(rewards, b["mask"], b["uids"])
    ap, _ = ops.outcome_advantage(rewards[perm], b["mask"][perm], b["uids"][perm])
    torch.testing.assert_close(ap, a[perm], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# suffix / prefix sums and per-position group statistics
# ----------------------------------------------------------------------------------------------------------------------


@SETTINGS
@given(batches())
def test_masked_suffix_and_prefix_sums(b):
    x, mask = b["x"], b["mask"]
    B, L = x.shape
    suf, pre = ops.masked_suffix_sum(x, mask), ops.masked_cumsum(x, mask)
    for i in range(B):
        for t in range(L):
            assert suf[i, t].item() == pytest.approx(sum(float(x[i, j]) for j in range(t, L) if mask[i, j]), abs=1e-5)
            assert pre[i, t].item() == pytest.approx(sum(float(x[i, j]) for j in range(t + 1) if mask[i, j]), abs=1e-5)


def test_masked_sums_ignore_nan_outside_mask():
    x = torch.tensor([[1.0, 2.0, float("nan")]])
    mask = torch.tensor([[1, 1, 0]])
    assert ops.masked_suffix_sum(x, mask).tolist() == [[3.0, 2.0, 0.0]]
    assert ops.masked_cumsum(x, mask).tolist() == [[1.0, 3.0, 3.0]]


@SETTINGS
@given(batches())
def test_group_position_stats_matches_loops(b):
    x, mask, uids = b["x"], b["mask"], list(b["uids"])
    gid, G = ops.group_ids(b["uids"])
    total, count, mean, std = ops.group_position_stats(x, mask, gid, G)
    xm = x * mask
    t2, c2, m2, s2 = ops.group_position_stats(xm, mask.float(), gid, G, with_std=False)
    assert s2 is None and torch.equal(c2, count)
    torch.testing.assert_close(m2, mean)
    assert torch.equal(xm, x * mask)  # input untouched
    B, L = x.shape
    for i in range(B):
        g = int(gid[i])
        for t in range(L):
            alive = [float(x[k, t]) for k in range(B) if uids[k] == uids[i] and mask[k, t]]
            assert count[g, t].item() == len(alive)
            assert total[g, t].item() == pytest.approx(sum(alive), abs=1e-5)
            assert mean[g, t].item() == pytest.approx(statistics.fmean(alive) if alive else 0.0, abs=1e-5)
            assert std[g, t].item() == pytest.approx(statistics.stdev(alive) if len(alive) > 1 else 0.0, abs=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# check_finite / masked_mean_std
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_check_finite_names_the_tensor(bad):
    x = torch.zeros(2, 3)
    x[1, 2] = bad
    with pytest.raises(ValueError, match=r"old_log_probs .*\(1, 2\)"):
        ops.check_finite("old_log_probs", x, torch.ones(2, 3))
    with pytest.raises(ValueError, match="entropy"):
        ops.check_finite("entropy", x)


def test_check_finite_ignores_outside_mask():
    x = torch.tensor([[1.0, float("nan")]])
    assert ops.check_finite("x", x, torch.tensor([[1, 0]])) is False  # tells the caller to keep NaN out
    assert ops.check_finite("x", torch.ones(2, 2), torch.ones(2, 2)) is True
    assert ops.check_finite("ids", torch.ones(2, 2, dtype=torch.long)) is True


def test_masked_mean_std():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, float("nan"), 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    x = torch.where(mask.bool(), x, torch.zeros(()))
    mean, std = ops.masked_mean_std(x, mask)
    assert mean == pytest.approx(2.0) and std == pytest.approx(1.0)
    assert ops.masked_mean_std(x, torch.zeros(2, 3)) == (0.0, 0.0)
    assert ops.masked_mean(x, mask) == pytest.approx(2.0) and ops.masked_mean(x, torch.zeros(2, 3)) == 0.0
    assert ops.masked_mean(x, mask.bool()) == pytest.approx(2.0)
    assert ops.masked_mean_std(torch.tensor([[5.0]]), torch.ones(1, 1)) == (5.0, 0.0)
    assert math.isfinite(ops.masked_mean_std(torch.randn(3, 4))[1])


def test_masked_mean_std_matches_float64_on_random_masks_and_offsets():
    """Two passes keep the std exact to float32 rounding even when the mean dwarfs the spread (a one-pass
    sum-of-squares formula loses every digit here: offset**2 / var = 1e12)."""
    gen = torch.Generator().manual_seed(3)
    for offset in (0.0, 1e3):
        x = offset + 1e-3 * torch.randn(37, 129, generator=gen)
        mask = torch.rand(37, 129, generator=gen) < 0.6
        ref = x.double()[mask]
        for m in (mask, mask.float(), mask.long()):
            mean, std = ops.masked_mean_std(x, m)
            assert mean == pytest.approx(float(ref.mean()), rel=1e-6)
            assert std == pytest.approx(float(ref.std()), rel=1e-3)
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.masked_mean_std(torch.ones(2, 2, dtype=torch.bfloat16), torch.ones(2, 2))


def test_masked_stats_zero_off_mask_skip_the_product_only():
    gen = torch.Generator().manual_seed(4)
    mask = torch.rand(9, 33, generator=gen) < 0.5
    x = torch.randn(9, 33, generator=gen) * mask
    before = x.clone()
    assert ops.masked_mean_std(x, mask.float(), zero_off_mask=True) == pytest.approx(ops.masked_mean_std(x, mask))
    assert ops.masked_mean(x, mask, zero_off_mask=True) == pytest.approx(ops.masked_mean(x, mask))
    assert torch.equal(x, before)  # the caller's tensor is read, not written
    # the flag is a promise: with values off the mask it would count them (documented, not checked)
    y = x + (~mask) * 100.0
    assert ops.masked_mean(y, mask, zero_off_mask=True) != pytest.approx(ops.masked_mean(y, mask))
