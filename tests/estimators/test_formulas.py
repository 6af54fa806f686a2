"""prpo, prm_avg, prl, spro against plain-Python references written from ALGORITHMS.md.

The references loop over responses and tokens in float64 and share no code with ``verl_prpo``.
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from verl_prpo import estimators as E

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EPS = 1e-6
SIGMA = math.sqrt(1 / 12)
FNS = {
    "prpo": E.compute_prpo_advantage,
    "prm_avg": E.compute_prm_avg_advantage,
    "prl": E.compute_prl_advantage,
    "spro": E.compute_spro_advantage,
}


# ----------------------------------------------------------------------------------------------------------------------
# plain-Python references (ALGORITHMS.md)
# ----------------------------------------------------------------------------------------------------------------------


def R_of(b):
    """R_i = sum of token_level_rewards over the response row."""
    return [float(sum(row)) for row in b["rewards"].tolist()]


def valid(b, i):
    return [t for t in range(b["mask"].shape[1]) if b["mask"][i, t]]


def grpo_stats(values, uids):
    """{uid: (mean, std)}; unbiased std; a group of one has mean 0 and std 1 (verl)."""
    groups: dict = {}
    for v, u in zip(values, uids):
        groups.setdefault(u, []).append(v)
    return {u: ((0.0, 1.0) if len(vs) == 1 else (statistics.fmean(vs), statistics.stdev(vs))) for u, vs in groups.items()}


def a_out_ref(values, uids, norm=True, eps=EPS):
    st_ = grpo_stats(values, uids)
    return [(v - st_[u][0]) / (st_[u][1] + eps) if norm else v - st_[u][0] for v, u in zip(values, uids)]


def ref_prpo(b, mu=0.5, sigma=SIGMA, normalization="fixed", outcome_shift=True, beta_norm="none", eps=EPS):
    B, L = b["mask"].shape
    uids, R, p = list(b["uids"]), R_of(b), b["p"].tolist()
    st_ = grpo_stats(R, uids)
    tok_stats = {}
    for u in set(uids):
        vals = [p[i][t] for i in range(B) if uids[i] == u for t in valid(b, i)]
        tok_stats[u] = (statistics.fmean(vals) if vals else 0.0, statistics.stdev(vals) if len(vals) > 1 else 1.0)
    out = np.zeros((B, L))
    for i in range(B):
        mean, std = st_[uids[i]]
        beta = (R[i] - mean) / (std + eps) if beta_norm == "std" else R[i] - mean
        for t in valid(b, i):
            if normalization == "fixed":
                z = (p[i][t] - mu) / sigma
            else:
                z = (p[i][t] - tok_stats[uids[i]][0]) / (tok_stats[uids[i]][1] + eps)
            out[i, t] = z + beta if outcome_shift else z
    return out


def ref_prm_avg(b, mu=0.5, norm=True, eps=EPS):
    B, L = b["mask"].shape
    uids, R, p = list(b["uids"]), R_of(b), b["p"].tolist()
    r2 = []
    for i in range(B):
        v = valid(b, i)
        r2.append(R[i] + (sum(p[i][t] for t in v) / len(v) if v else mu))
    a = a_out_ref(r2, uids, norm, eps)
    out = np.zeros((B, L))
    for i in range(B):
        for t in valid(b, i):
            out[i, t] = a[i]
    return out


def ref_steps(b, i, seg_ids=None, step_len=256):
    """{step id: [valid positions]} of response i."""
    steps: dict = {}
    for t in valid(b, i):
        steps.setdefault(int(seg_ids[i, t]) if seg_ids is not None else t // step_len, []).append(t)
    return steps


def ref_prl(b, eta=100.0, variant="outcome_first", kl_scope="step_end", step_len=256, seg_ids=None, norm=True,
            eps=EPS):
    B, L = b["mask"].shape
    uids, R = list(b["uids"]), R_of(b)
    d = (b["old"].double() - b["ref"].double()).tolist()
    a = a_out_ref(R, uids, norm, eps)
    out = np.zeros((B, L))
    for i in range(B):
        v = valid(b, i)

        def kl_from(start, strict=False):
            return sum(d[i][j] for j in v if (j > start if strict else j >= start))

        if variant == "process_first":
            for t in v:
                out[i, t] = R[i] - kl_from(t) / eta
            continue
        for toks in ref_steps(b, i, seg_ids, step_len).values():
            first, last = min(toks), max(toks)
            S = {"step_end": kl_from(last), "after_step": kl_from(last, strict=True), "whole_step": kl_from(first)}
            for t in toks:
                out[i, t] = a[i] - S[kl_scope] / eta
    return out


def ref_spro(b, beta_s=0.05, msa_norm="none", norm=True, eps=EPS):
    B, L = b["mask"].shape
    uids, R = list(b["uids"]), R_of(b)
    d = (b["old"].double() - b["ref"].double()).tolist()
    a = a_out_ref(R, uids, norm, eps)
    cpr = [[sum(beta_s * d[i][j] for j in range(t + 1) if b["mask"][i, j]) for t in range(L)] for i in range(B)]
    out = np.zeros((B, L))
    for i in range(B):
        for t in valid(b, i):
            alive = [cpr[k][t] for k in range(B) if uids[k] == uids[i] and b["mask"][k, t]]
            if len(alive) == 1:
                msa = 0.0
            else:
                msa = cpr[i][t] - statistics.fmean(alive)
                if msa_norm == "std":
                    msa /= statistics.stdev(alive) + eps
            out[i, t] = a[i] + msa
    return out


# ----------------------------------------------------------------------------------------------------------------------
# batches
# ----------------------------------------------------------------------------------------------------------------------


def make_batch(lengths, uids, R, p=None, old=None, ref=None, L=None):
    L = L or max(max(lengths), 1)
    B = len(lengths)
    mask = torch.zeros(B, L, dtype=torch.long)
    rewards = torch.zeros(B, L)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        rewards[i, max(n - 1, 0)] = R[i]
    g = torch.Generator().manual_seed(0)
    return {
        "uids": np.array(uids, dtype=object),
        "mask": mask,
        "rewards": rewards,
        "p": torch.rand(B, L, generator=g) if p is None else torch.as_tensor(p, dtype=torch.float32),
        "old": -torch.rand(B, L, generator=g) if old is None else torch.as_tensor(old, dtype=torch.float32),
        "ref": -torch.rand(B, L, generator=g) if ref is None else torch.as_tensor(ref, dtype=torch.float32),
    }


@st.composite
def batches(draw, max_b=9, max_l=9):
    """Random lengths (empty and one-token responses included), groups of one, shuffled uids, optional holes.

    Values come from small dyadic grids so that float32 sums are exact and std denominators stay well away from 0.
    """
    B, L = draw(st.integers(1, max_b)), draw(st.integers(1, max_l))
    n_groups = draw(st.integers(1, B))
    uids = [f"q{draw(st.integers(0, n_groups - 1))}" for _ in range(B)]
    mask = torch.zeros(B, L, dtype=torch.long)
    holes = draw(st.booleans())
    for i in range(B):
        n = draw(st.integers(0, L))
        mask[i, :n] = 1
        if holes and n > 2 and draw(st.booleans()):
            mask[i, draw(st.integers(1, n - 2))] = 0
    rewards = torch.zeros(B, L)
    for i in range(B):
        v = [t for t in range(L) if mask[i, t]]
        rewards[i, v[-1] if v else 0] = draw(st.sampled_from([-1.0, 0.0, 1.0, 0.5]))

    def grid(values):
        return torch.tensor([[draw(st.sampled_from(values)) for _ in range(L)] for _ in range(B)])

    return {
        "uids": np.array(uids, dtype=object),
        "mask": mask,
        "rewards": rewards,
        "p": grid([0.0, 0.125, 0.25, 0.5, 0.75, 1.0]),
        "old": grid([-2.0, -1.0, -0.5, -0.25, 0.0]),
        "ref": grid([-1.5, -1.0, -0.25, 0.0]),
    }


def run(name, b, config=None, **kw):
    kwargs = {"prm_scores": b["p"], "old_log_probs": b["old"], "ref_log_prob": b["ref"], **kw}
    adv, ret = FNS[name](b["rewards"], b["mask"], b["uids"], config, **kwargs)
    assert adv is ret and adv.dtype == torch.float32 and adv.shape == b["mask"].shape
    return adv


def close(adv, ref, tol=2e-5):
    np.testing.assert_allclose(adv.double().numpy(), ref, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------------------------------------------------
# hand-worked cases
# ----------------------------------------------------------------------------------------------------------------------


def test_prpo_hand_case():
    # group "a": R = (1, -1), mean 0 -> beta = (1, -1); "b": group of one, mean 0 -> beta = R = 1
    p = [[0.5, 0.8, 0.0], [1.0, 0.2, 0.2], [0.5, 0.5, 0.5]]
    b = make_batch([3, 2, 1], ["a", "a", "b"], [1.0, -1.0, 1.0], p=p)
    adv = run("prpo", b)
    s = SIGMA
    expected = [[1 + 0, 1 + 0.3 / s, 1 - 0.5 / s], [-1 + 0.5 / s, -1 - 0.3 / s, 0], [1, 0, 0]]
    close(adv, np.array(expected))


def test_prm_avg_hand_case():
    # R' = R + mean p: (1 + 0.5, 0 + 0.25); group std of (1.5, 0.25) = 0.8839
    b = make_batch([2, 2], ["a", "a"], [1.0, 0.0], p=[[0.25, 0.75], [0.5, 0.0]])
    adv = run("prm_avg", b)
    s = statistics.stdev([1.5, 0.25])
    close(adv, np.array([[0.625 / (s + EPS)] * 2, [-0.625 / (s + EPS)] * 2]))


def test_prl_hand_case_all_scopes():
    # one response, group of one: A_out = R = 1; steps of 2 tokens: [0,1], [2,3], [4]; d = (1, 2, 3, 4, 5)
    b = make_batch([5], ["a"], [1.0], old=[[1, 2, 3, 4, 5]], ref=[[0, 0, 0, 0, 0]])
    cfg = {"prl": {"step_len": 2, "eta": 10.0}}
    # step_end: sums from the step's last token: 2+3+4+5, 4+5, 5
    close(run("prl", b, cfg), np.array([[1 - 14 / 10] * 2 + [1 - 9 / 10] * 2 + [1 - 5 / 10]]))
    cfg["prl"]["kl_scope"] = "after_step"  # 3+4+5, 5, 0
    close(run("prl", b, cfg), np.array([[1 - 12 / 10] * 2 + [1 - 5 / 10] * 2 + [1.0]]))
    cfg["prl"]["kl_scope"] = "whole_step"  # 1+..+5, 3+4+5, 5
    close(run("prl", b, cfg), np.array([[1 - 15 / 10] * 2 + [1 - 12 / 10] * 2 + [1 - 5 / 10]]))
    cfg["prl"]["variant"] = "process_first"
    close(run("prl", b, cfg), np.array([[1 - 15 / 10, 1 - 14 / 10, 1 - 12 / 10, 1 - 9 / 10, 1 - 5 / 10]]))


def test_spro_hand_case():
    # group of two, R equal -> A_out = 0; beta_s = 1; d rows (1, 1, 1) and (3, -1); response 2 dies after t = 1
    b = make_batch([3, 2], ["a", "a"], [1.0, 1.0], old=[[1, 1, 1], [3, -1, 0]], ref=[[0, 0, 0], [0, 0, 0]])
    adv = run("spro", b, {"spro": {"beta_s": 1.0}})
    # CPR: (1, 2, 3) and (3, 2); means at t=0: 2, t=1: 2; t=2: one alive -> 0
    close(adv, np.array([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    adv = run("spro", b, {"spro": {"beta_s": 1.0, "msa_norm": "std"}})
    s = statistics.stdev([1.0, 3.0])
    close(adv, np.array([[-1 / (s + EPS), 0.0, 0.0], [1 / (s + EPS), 0.0, 0.0]]))


# ----------------------------------------------------------------------------------------------------------------------
# property tests against the references
# ----------------------------------------------------------------------------------------------------------------------


@SETTINGS
@given(
    batches(),
    st.sampled_from(["fixed", "relative"]),
    st.booleans(),
    st.sampled_from(["none", "std"]),
    st.sampled_from([(0.5, SIGMA), (0.5, math.sqrt(1 / 24)), (0.25, 1.0)]),
)
def test_prpo_matches_reference(b, normalization, outcome_shift, beta_norm, mu_sigma):
    mu, sigma = mu_sigma
    cfg = {"prpo": {"mu": mu, "sigma": sigma, "normalization": normalization, "outcome_shift": outcome_shift,
                    "beta_norm": beta_norm}}
    ref = ref_prpo(b, mu, sigma, normalization, outcome_shift, beta_norm)
    close(run("prpo", b, cfg), ref, tol=1e-4)


@SETTINGS
@given(batches(), st.booleans())
def test_prm_avg_matches_reference(b, norm):
    close(run("prm_avg", b, {"norm_adv_by_std_in_grpo": norm}), ref_prm_avg(b, norm=norm), tol=1e-4)


@SETTINGS
@given(
    batches(),
    st.sampled_from(["outcome_first", "process_first"]),
    st.sampled_from(["step_end", "after_step", "whole_step"]),
    st.integers(1, 5),
    st.sampled_from([1.0, 10.0, 100.0]),
)
def test_prl_matches_reference(b, variant, kl_scope, step_len, eta):
    cfg = {"prl": {"variant": variant, "kl_scope": kl_scope, "step_len": step_len, "eta": eta}}
    close(run("prl", b, cfg), ref_prl(b, eta, variant, kl_scope, step_len), tol=1e-4)


@SETTINGS
@given(batches(), st.sampled_from(["step_end", "after_step", "whole_step"]), st.integers(0, 2**31 - 1))
def test_prl_with_given_segment_ids_matches_reference(b, kl_scope, seed):
    # arbitrary non-decreasing step ids (e.g. the trainer's newline segmentation), -1 outside the mask
    g = torch.Generator().manual_seed(seed)
    seg = (torch.rand(b["mask"].shape, generator=g) < 0.4).long().cumsum(-1)
    seg = torch.where(b["mask"].bool(), seg, torch.full_like(seg, -1))
    cfg = {"prl": {"kl_scope": kl_scope, "eta": 2.0}}
    close(run("prl", b, cfg, segment_ids=seg), ref_prl(b, 2.0, "outcome_first", kl_scope, seg_ids=seg), tol=1e-4)


@SETTINGS
@given(batches(), st.sampled_from(["none", "std"]), st.sampled_from([0.5, 1.0, 0.05]), st.booleans())
def test_spro_matches_reference(b, msa_norm, beta_s, norm):
    if msa_norm == "std" and beta_s == 0.05:
        beta_s = 0.25  # keep the float32 CPR sums exact where the std may be tiny
    cfg = {"spro": {"beta_s": beta_s, "msa_norm": msa_norm}, "norm_adv_by_std_in_grpo": norm}
    close(run("spro", b, cfg), ref_spro(b, beta_s, msa_norm, norm=norm), tol=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# invariants
# ----------------------------------------------------------------------------------------------------------------------


@SETTINGS
@given(batches(), st.sampled_from(sorted(FNS)), st.randoms(use_true_random=False))
def test_mask_respected_and_permutation_equivariant(b, name, rnd):
    adv = run(name, b)
    assert torch.all(adv[b["mask"] == 0] == 0)
    assert torch.isfinite(adv).all()
    perm = list(range(len(b["uids"])))
    rnd.shuffle(perm)
    pb = {k: v[perm] for k, v in b.items()}
    torch.testing.assert_close(run(name, pb), adv[perm], rtol=1e-5, atol=1e-5)


@SETTINGS
@given(batches())
def test_prpo_equals_beta_when_prm_is_uninformative(b):
    b["p"] = torch.full_like(b["p"], 0.5)
    adv = run("prpo", b)
    R, uids = R_of(b), list(b["uids"])
    st_ = grpo_stats(R, uids)
    for i in range(len(R)):
        for t in valid(b, i):
            assert adv[i, t].item() == pytest.approx(R[i] - st_[uids[i]][0], abs=1e-6)


@SETTINGS
@given(batches(), st.sampled_from(["none", "std"]))
def test_spro_msa_sums_to_zero_over_alive_responses(b, msa_norm):
    adv = run("spro", b, {"spro": {"msa_norm": msa_norm, "beta_s": 0.5}}).double()
    a = a_out_ref(R_of(b), list(b["uids"]))
    msa = (adv - torch.tensor(a, dtype=torch.float64)[:, None]) * b["mask"]
    uids = list(b["uids"])
    for u in set(uids):
        rows = [i for i in range(len(uids)) if uids[i] == u]
        for t in range(b["mask"].shape[1]):
            alive = [i for i in rows if b["mask"][i, t]]
            if len(alive) >= 2:
                assert abs(sum(msa[i, t].item() for i in alive)) < 1e-4
            elif alive:
                assert abs(msa[alive[0], t].item()) < 1e-6  # a lone response gets MSA = 0


@SETTINGS
@given(batches(), st.integers(1, 4))
def test_prl_constant_within_a_step(b, step_len):
    adv = run("prl", b, {"prl": {"step_len": step_len}})
    for i in range(len(b["uids"])):
        for toks in ref_steps(b, i, step_len=step_len).values():
            assert len({adv[i, t].item() for t in toks}) == 1


def test_group_of_one_and_all_equal_rewards():
    # group of one: A_out = R (mean 0, std 1); all-equal rewards: A_out = 0
    b = make_batch([3, 3, 3, 2], ["solo", "g", "g", "g"], [1.0, 0.5, 0.5, 0.5], old=torch.zeros(4, 3),
                   ref=torch.zeros(4, 3), p=torch.full((4, 3), 0.5))
    m = b["mask"].float()
    for name in ("prl", "spro"):  # d = 0: no process term
        expected = torch.tensor([1.0 / (1 + EPS), 0.0, 0.0, 0.0])[:, None] * m
        torch.testing.assert_close(run(name, b), expected)
    torch.testing.assert_close(run("prpo", b), torch.tensor([1.0, 0.0, 0.0, 0.0])[:, None] * m)
    torch.testing.assert_close(run("prm_avg", b), torch.tensor([1.5 / (1 + EPS), 0.0, 0.0, 0.0])[:, None] * m)


def test_prm_avg_empty_response_uses_mu_and_logs(caplog):
    b = make_batch([0, 2, 2], ["a", "a", "a"], [0.0, 1.0, 0.0], p=[[0.9, 0.9], [1.0, 1.0], [0.0, 0.0]])
    with caplog.at_level("WARNING"):
        adv = run("prm_avg", b)
    assert "1 empty response" in caplog.text
    close(adv, ref_prm_avg(b))
    assert torch.isfinite(adv).all() and torch.all(adv[0] == 0)


def test_output_float32_and_inputs_untouched():
    b = make_batch([3, 2], ["a", "a"], [1.0, 0.0])
    before = {k: v.clone() for k, v in b.items() if isinstance(v, torch.Tensor)}
    for name in FNS:
        for dtype in (torch.float64, torch.bfloat16):
            adv, _ = FNS[name](
                b["rewards"].to(dtype), b["mask"].bool(), b["uids"], None, prm_scores=b["p"].to(dtype),
                old_log_probs=b["old"].to(dtype), ref_log_prob=b["ref"].to(dtype),
            )
            assert adv.dtype == torch.float32
        run(name, b)
        for k, v in before.items():
            assert torch.equal(b[k], v), f"{name} modified {k}"


def test_float_mask_and_config_sources():
    b = make_batch([3, 2], ["a", "a"], [1.0, 0.0])
    base = run("prpo", b, {"prpo": {"sigma": 0.2}})
    node = OmegaConf.create({"adv_estimator": "prpo", "prpo": {"sigma": 0.2}})
    OmegaConf.set_struct(node, True)
    torch.testing.assert_close(run("prpo", b, node), base)
    bf = dict(b, mask=b["mask"].float())
    torch.testing.assert_close(run("prpo", bf, {"prpo": {"sigma": 0.2}}), base)


# ----------------------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, field, hint",
    [
        ("prpo", "prm_scores", "prm.enable=true"),
        ("prm_avg", "prm_scores", "prm.enable=true"),
        ("prl", "old_log_probs", "reference policy"),
        ("prl", "ref_log_prob", "reference policy"),
        ("spro", "old_log_probs", "reference policy"),
        ("spro", "ref_log_prob", "reference policy"),
    ],
)
def test_missing_extra_input_gives_trainer_mode_hint(name, field, hint):
    b = make_batch([2, 2], ["a", "a"], [1.0, 0.0])
    kwargs = {"prm_scores": b["p"], "old_log_probs": b["old"], "ref_log_prob": b["ref"]}
    kwargs[field] = None
    with pytest.raises(ValueError, match=rf"`{field}`.*trainer\.v1\.trainer_mode=prpo_sync.*{hint}"):
        FNS[name](b["rewards"], b["mask"], b["uids"], None, **kwargs)
    # verl's stock path passes only the first four arguments
    with pytest.raises(ValueError, match=r"trainer\.v1\.trainer_mode=prpo_sync"):
        FNS[name](token_level_rewards=b["rewards"], response_mask=b["mask"], index=b["uids"], config=None)


@pytest.mark.parametrize("name", sorted(FNS))
def test_missing_or_bad_uid(name):
    b = make_batch([2, 2], ["a", "a"], [1.0, 0.0])
    kwargs = {"prm_scores": b["p"], "old_log_probs": b["old"], "ref_log_prob": b["ref"]}
    with pytest.raises(ValueError, match="uid"):
        FNS[name](b["rewards"], b["mask"], None, None, **kwargs)
    with pytest.raises(ValueError, match="uid"):
        FNS[name](b["rewards"], b["mask"], np.array(["a", None], dtype=object), None, **kwargs)
    with pytest.raises(ValueError, match="uid"):
        FNS[name](b["rewards"], b["mask"], np.array(["a"], dtype=object), None, **kwargs)


@pytest.mark.parametrize("name, field", [(n, f) for n in sorted(FNS) for f in ("rewards", "p", "old", "ref")])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_inputs_rejected_with_the_tensor_name(name, field, bad):
    used = {"prpo": ("rewards", "p"), "prm_avg": ("rewards", "p"), "prl": ("rewards", "old", "ref"),
            "spro": ("rewards", "old", "ref")}[name]
    b = make_batch([3, 2], ["a", "a"], [1.0, 0.0])
    b[field] = b[field].clone()
    b[field][1, 1] = bad  # a valid position
    tensor_name = {"rewards": "token_level_rewards", "p": "prm_scores", "old": "old_log_probs",
                   "ref": "ref_log_prob"}[field]
    if field in used:
        with pytest.raises(ValueError, match=tensor_name):
            run(name, b)
    else:
        run(name, b)  # an input the estimator does not use is not checked
    if field != "rewards":  # outside the mask: accepted, and kept out of the result
        b = make_batch([3, 2], ["a", "a"], [1.0, 0.0])
        b[field] = b[field].clone()
        b[field][1, 2] = bad
        assert torch.isfinite(run(name, b)).all()


def test_prm_scores_out_of_range_rejected():
    b = make_batch([3, 2], ["a", "a"], [1.0, 0.0])
    b["p"] = b["p"].clone()
    b["p"][1, 2] = 7.0  # outside the mask: fine
    run("prpo", b)
    b["p"][0, 1] = 1.5
    for name in ("prpo", "prm_avg"):
        with pytest.raises(ValueError, match=r"prm_scores must be probabilities in \[0, 1\]"):
            run(name, b)


def test_prl_newline_needs_segment_ids_and_bad_ids_rejected():
    b = make_batch([3, 2], ["a", "a"], [1.0, 0.0])
    with pytest.raises(ValueError, match=r"algorithm\.prl\.segmentation=newline needs `segment_ids`"):
        run("prl", b, {"prl": {"segmentation": "newline"}})
    seg = torch.tensor([[0, 0, 1], [0, 0, -1]])
    run("prl", b, {"prl": {"segmentation": "newline"}}, segment_ids=seg)
    with pytest.raises(ValueError, match="segment_ids must be >= 0"):
        run("prl", b, segment_ids=torch.tensor([[0, -1, 1], [0, -1, -1]]))


def test_bad_config_is_reported():
    b = make_batch([2], ["a"], [1.0])
    with pytest.raises(ValueError, match=r"algorithm\.prpo\.k must be >= 1"):
        run("prpo", b, {"prpo": {"k": 0}})
    with pytest.raises(ValueError, match=r"algorithm\.spro\.oops"):
        run("spro", b, {"spro": {"oops": 1}})


# ----------------------------------------------------------------------------------------------------------------------
# metrics and registration
# ----------------------------------------------------------------------------------------------------------------------


def test_metrics_keys_and_values():
    b = make_batch([5, 3, 0], ["a", "a", "b"], [1.0, 0.0, 1.0])
    seg = torch.tensor([[0, 0, 1, 1, 2], [0, 1, 1, -1, -1], [-1] * 5])
    expected = {
        "prpo": ["prpo/segments_per_response/mean", "prpo/segments_per_response/min",
                 "prpo/segments_per_response/max", "prpo/segment_length/mean", "prpo/prm_score/mean",
                 "prpo/prm_score/std", "prpo/abs_beta/mean", "prpo/z/mean"],
        "prm_avg": ["prm_avg/prm_mean/mean"],
        "prl": ["prl/process_term/mean", "prl/process_term/std", "prl/steps_per_response/mean"],
        "spro": ["spro/msa/mean", "spro/msa/std", "spro/cpr/mean"],
    }
    for name, keys in expected.items():
        metrics: dict = {}
        adv = run(name, b, {"prl": {"step_len": 2}}, segment_ids=seg if name == "prpo" else None, metrics=metrics)
        for k in keys + ["adv/mean", "adv/std"]:
            assert isinstance(metrics[k], float) and math.isfinite(metrics[k]), (name, k)
        vals = adv[b["mask"].bool()].double()
        assert metrics["adv/mean"] == pytest.approx(float(vals.mean()), abs=1e-6)
        assert metrics["adv/std"] == pytest.approx(float(vals.std()), abs=1e-6)
    metrics = {}
    run("prpo", b, segment_ids=seg, metrics=metrics)
    assert (metrics["prpo/segments_per_response/mean"], metrics["prpo/segments_per_response/min"],
            metrics["prpo/segments_per_response/max"]) == (2.5, 2.0, 3.0)
    assert metrics["prpo/segment_length/mean"] == pytest.approx(8 / 5)
    metrics = {}
    run("prl", b, {"prl": {"step_len": 2}}, metrics=metrics)
    assert metrics["prl/steps_per_response/mean"] == 2.5  # ceil(5/2), ceil(3/2); the empty response is skipped


def test_module_tuple_and_registry():
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

    from verl_prpo import registration

    # registration.ESTIMATOR_NAMES (checked at trainer start) lists names of this module; "pure" is added there by
    # its owner (verl_prpo/registration.py), after which this can be an equality again
    assert set(registration.ESTIMATOR_NAMES) <= set(E.ESTIMATOR_NAMES)
    assert set(E.ESTIMATOR_NAMES) - set(registration.ESTIMATOR_NAMES) <= {"pure"}
    for name in E.ESTIMATOR_NAMES:
        assert name in ADV_ESTIMATOR_REGISTRY, name
    assert "verl_prpo.estimators" in registration.REGISTERING_MODULES
    for name, fn in FNS.items():
        assert ADV_ESTIMATOR_REGISTRY[name] is fn


def test_import_verl_registers_all_four_names():
    code = (
        "import verl; from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY as R; "
        "assert all(n in R for n in ['prpo','prl','spro','prm_avg']), sorted(R)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("name", sorted(FNS))
def test_rewards_checked_through_their_row_sums(name):
    # the estimators check R = sum_t rewards: a +inf and a -inf in one row sum to NaN, finite entries may overflow
    b = make_batch([3, 2], ["a", "a"], [1.0, 0.0])
    b["rewards"] = b["rewards"].clone()
    b["rewards"][0, 0], b["rewards"][0, 1] = float("inf"), float("-inf")
    with pytest.raises(ValueError, match=r"token_level_rewards has 2 NaN/inf value\(s\)"):
        run(name, b)
    b["rewards"][0, :2] = 3e38  # finite, but their sum is not in float32
    with pytest.raises(ValueError, match="the per-response sum R overflows"):
        run(name, b)
