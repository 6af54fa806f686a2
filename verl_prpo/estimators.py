"""Process-reward advantage estimators registered in verl: ``prpo``, ``prm_avg``, ``prl``, ``spro``, ``pure``.

Each is a pure tensor function with the signature of ``docs/DESIGN.md`` ("Estimator contract") and the formulas of
``shared/docs/ALGORITHMS.md``. Common rules:

* R_i = sum_t token_level_rewards_{i,t} (as verl's GRPO); groups keyed by ``index`` (uid), never batch position;
  GRPO statistics with verl's conventions (unbiased std, a group of one has mean 0 and std 1), see ``ops``.
* advantages are float32, zero outside the response mask, and ``returns`` is the same tensor (as verl's GRPO).
* NaN/inf on valid positions of an input is a ``ValueError`` naming the tensor; inputs that verl's stock
  ``compute_advantage`` does not pass raise a ``ValueError`` that says to use ``trainer.v1.trainer_mode=prpo_sync``.
* metrics (if a dict is given) are Python floats: ``<method>/...`` plus ``adv/mean`` and ``adv/std`` over valid tokens.

Shapes: B responses, L response length, G groups, S segments (steps) per response at most.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

try:  # registered in verl's ADV_ESTIMATOR_REGISTRY when verl is there; plain functions without it
    from verl.trainer.ppo.core_algos import register_adv_est
except ImportError:  # pragma: no cover - exercised by tests/test_no_verl.py in a subprocess
    def register_adv_est(name):
        return lambda fn: fn

from verl_prpo.config import from_algorithm_config
from verl_prpo.ops import (
    all_finite,
    check_finite,
    empty_buffer,
    group_ids,
    group_mean_std,
    group_position_stats,
    masked_mean_std,
    outcome_advantage,
    sub_group_rows_,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ESTIMATOR_NAMES",
    "compute_prpo_advantage",
    "compute_prm_avg_advantage",
    "compute_prl_advantage",
    "compute_spro_advantage",
    "compute_pure_advantage",
]

#: names registered in verl's ADV_ESTIMATOR_REGISTRY by this module
ESTIMATOR_NAMES: tuple[str, ...] = ("prpo", "prl", "spro", "prm_avg", "pure")

_TRAINER_HINT = "verl's stock compute_advantage does not pass it: set trainer.v1.trainer_mode=prpo_sync"


# --------------------------------------------------------------------------------------------------------------------
# shared input handling
# --------------------------------------------------------------------------------------------------------------------


def _missing_input(estimator: str, field: str, extra: str = "") -> ValueError:
    return ValueError(f"advantage estimator '{estimator}' needs `{field}` (B, L), but got None; {_TRAINER_HINT}{extra}")


class _Inputs:
    """Validated common inputs of one estimator call."""

    def __init__(self, name: str, token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Any):
        if token_level_rewards.dim() != 2:
            raise ValueError(
                f"{name}: token_level_rewards must be (B, L), got shape {tuple(token_level_rewards.shape)}"
            )
        if response_mask.shape != token_level_rewards.shape:
            raise ValueError(
                f"{name}: response_mask has shape {tuple(response_mask.shape)}, token_level_rewards "
                f"{tuple(token_level_rewards.shape)}"
            )
        self.name = name
        self.rewards = token_level_rewards.detach().float()
        # R_i is the unmasked row sum (as verl); a finite sum means a finite row, so check (B,) values, not (B, L)
        self.R = self.rewards.sum(-1)
        if not bool(torch.isfinite(self.R).all()):
            check_finite("token_level_rewards", token_level_rewards)
            raise ValueError("token_level_rewards: the per-response sum R overflows to inf")
        device = self.rewards.device
        # float32 0/1 mask (the contract's values); never written to: it may be the caller's tensor
        self.maskf = response_mask.to(device)
        if self.maskf.dtype != torch.float32:
            self.maskf = empty_buffer(self.maskf.shape, torch.float32, device).copy_(self.maskf)
        self._mask = None
        gid, num_groups = group_ids(index, expected_len=token_level_rewards.shape[0])
        self.gid, self.num_groups = gid.to(device), num_groups
        self.index = index

    @property
    def mask(self) -> torch.Tensor:
        """(B, L) bool, built on first use."""
        if self._mask is None:
            self._mask = self.maskf != 0
        return self._mask

    def extra(self, field: str, x: torch.Tensor, check: bool = True) -> torch.Tensor:
        """Shape/finite check of an extra (B, L) input; float32, detached. Values outside the mask are finite but
        arbitrary: callers multiply by the mask before summing. ``check=False`` skips the finite check (the caller
        checks a result derived from ``x`` and calls again with the check if that fails)."""
        if x.shape != self.maskf.shape:
            raise ValueError(f"{field} has shape {tuple(x.shape)}, expected {tuple(self.maskf.shape)} like response_mask")
        finite = not check or all_finite(x) or check_finite(field, x, self.mask)  # masked check only if needed
        x = x.detach().to(device=self.maskf.device, dtype=torch.float32)
        if not finite:
            # NaN/inf only outside the mask: replace them (NaN * 0 would still be NaN)
            x = torch.where(self.mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
        return x

    def outcome(self, norm_by_std: bool, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_out (B,), beta (B,)) of ``ops.outcome_advantage`` with this call's groups."""
        return outcome_advantage(
            self.R[:, None], self.maskf, self.index, norm_by_std=norm_by_std, eps=eps, groups=(self.gid, self.num_groups)
        )


def _cfg_get(config: Any, key: str, default: Any) -> Any:
    """``config.<key>`` for a DictConfig / AlgoConfig / dict / None, with a default."""
    if config is None:
        return default
    getter = getattr(config, "get", None)
    if callable(getter):
        value = getter(key, default)
    else:
        value = getattr(config, key, default)
    return default if value is None else value


def _log_prob_diff(inp: _Inputs, old_log_probs, ref_log_prob) -> torch.Tensor:
    """d = log pi_old - log pi_ref, (B, L) float32, 0 outside the mask."""
    ref_hint = " and enable the reference policy (actor_rollout_ref.actor.use_kl_loss=true with kl_loss_coef=0)"
    if old_log_probs is None:
        raise _missing_input(inp.name, "old_log_probs", ref_hint)
    if ref_log_prob is None:
        raise _missing_input(inp.name, "ref_log_prob", ref_hint)
    old, ref = inp.extra("old_log_probs", old_log_probs, check=False), inp.extra("ref_log_prob", ref_log_prob, check=False)
    d = torch.sub(old, ref, out=empty_buffer(old.shape, torch.float32, old.device)).mul_(inp.maskf)
    if not all_finite(d):  # one check on d instead of one per input; NaN/inf in either input shows up here
        old, ref = inp.extra("old_log_probs", old_log_probs), inp.extra("ref_log_prob", ref_log_prob)
        torch.sub(old, ref, out=d).mul_(inp.maskf)
    return d


def _step_ids(inp: _Inputs, segment_ids: torch.Tensor | None, hint: str = "") -> torch.Tensor:
    """The (B, L) long step ids, checked: present, shaped like the mask, >= 0 on every valid token."""
    if segment_ids is None:
        raise _missing_input(inp.name, "segment_ids", hint)
    if segment_ids.shape != inp.maskf.shape:
        raise ValueError(f"segment_ids has shape {tuple(segment_ids.shape)}, expected {tuple(inp.maskf.shape)}")
    seg = segment_ids.to(inp.maskf.device).long()
    if bool((seg[inp.mask] < 0).any()):
        raise ValueError("segment_ids must be >= 0 on every valid token (-1 only outside the mask)")
    return seg


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_t a_{i,t} b_{i,t}, (B,), as a batched matmul: no (B, L) temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _put_adv_metrics(metrics: dict | None, adv: torch.Tensor, mask: torch.Tensor) -> None:
    if metrics is None:
        return
    mean, std = masked_mean_std(adv, mask)
    metrics["adv/mean"] = mean
    metrics["adv/std"] = std


def _segment_metrics(metrics: dict, prefix: str, segment_ids: torch.Tensor, inp: _Inputs) -> torch.Tensor:
    """``<prefix>/{mean,min,max}`` of segments per non-empty response; returns the (B,) segment counts."""
    seg = segment_ids.to(inp.maskf.device).long()
    counts = torch.where(inp.mask, seg, torch.full_like(seg, -1)).amax(-1).add_(1).clamp_(min=0)
    nonempty = inp.maskf.amax(-1) > 0 if inp.maskf.shape[-1] else torch.zeros_like(counts, dtype=torch.bool)
    c = counts[nonempty].double()
    if c.numel() == 0:
        metrics.update({f"{prefix}/mean": 0.0, f"{prefix}/min": 0.0, f"{prefix}/max": 0.0})
    else:
        metrics.update({f"{prefix}/mean": float(c.mean()), f"{prefix}/min": float(c.min()), f"{prefix}/max": float(c.max())})
    return counts


# --------------------------------------------------------------------------------------------------------------------
# PRPO and PRM-Avg
# --------------------------------------------------------------------------------------------------------------------


def _prm_scores(inp: _Inputs, prm_scores: torch.Tensor | None) -> torch.Tensor:
    """The (B, L) PRM probabilities, checked: present, finite and in [0, 1] on valid tokens."""
    if prm_scores is None:
        raise _missing_input(inp.name, "prm_scores", " and enable the PRM (prm.enable=true)")
    p = inp.extra("prm_scores", prm_scores, check=False)
    if p.numel():
        lo, hi = torch.aminmax(p)  # one pass for both checks: NaN fails both comparisons, inf the second
        if not (float(lo) >= 0.0 and float(hi) <= 1.0):
            p = inp.extra("prm_scores", prm_scores)  # the masked finite check (and NaN outside the mask zeroed)
            bad = inp.mask & ((p < 0) | (p > 1))
            if bool(bad.any()):
                vals = p[bad]
                raise ValueError(
                    f"prm_scores must be probabilities in [0, 1] on valid tokens; {vals.numel()} value(s) outside, "
                    f"e.g. {float(vals[0])}"
                )
    return p


@register_adv_est("prpo")
def compute_prpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    config: Any = None,
    *,
    entropy: torch.Tensor | None = None,
    old_log_probs: torch.Tensor | None = None,
    ref_log_prob: torch.Tensor | None = None,
    prm_scores: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    metrics: dict | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PRPO advantage (arXiv 2601.07182): fixed-prior normalised PRM score plus the outcome location shift.

        z_{i,t} = (p_{i,t} - mu) / sigma                                   (normalization = fixed)
        z_{i,t} = (p_{i,t} - mean_g p) / (std_g p + eps)                   (normalization = relative: mean and
                  unbiased std over all valid tokens of the group, token-weighted; a group with a single valid
                  token uses std 1)
        beta_i  = R_i - mean_G R          (beta_norm = none)   or   (R_i - mean_G R) / (std_G R + eps)   (std)
        A_{i,t} = z_{i,t} + beta_i        (outcome_shift = True)   or   z_{i,t}   (process-only ablation)

    Options come from ``algorithm.prpo`` (``PRPOConfig``). The PRM scores are already per token (every token carries
    its segment's probability), so the segmentation options are used by the trainer, not here.

    Args:
        token_level_rewards: ``(B, L)`` outcome reward at the last valid token; R_i is the row sum.
        response_mask: ``(B, L)`` 0/1.
        index: ``(B,)`` uids.
        config: verl's ``algorithm`` node.
        prm_scores: ``(B, L)`` p_{i,t} in [0, 1] on valid tokens (required).
        segment_ids: ``(B, L)`` long, -1 outside the mask (optional, for the segment metrics).
        metrics: dict receiving ``prpo/segments_per_response/{mean,min,max}``, ``prpo/segment_length/mean``
            (with ``segment_ids``), ``prpo/prm_score/{mean,std}`` (token-weighted), ``prpo/abs_beta/mean``,
            ``prpo/z/mean``, ``adv/mean``, ``adv/std``.

    Returns:
        advantages ``(B, L)`` float32 (0 outside the mask) and returns (the same tensor).
    """
    cfg = from_algorithm_config(config, "prpo")
    inp = _Inputs("prpo", token_level_rewards, response_mask, index)
    p = _prm_scores(inp, prm_scores)
    maskf, gid, num_groups = inp.maskf, inp.gid, inp.num_groups

    with torch.no_grad():
        a_out, beta = inp.outcome(norm_by_std=True, eps=cfg.eps)
        if cfg.beta_norm == "std":
            beta = a_out
        z_mean = None
        if cfg.normalization == "fixed":
            # A = (p - mu) / sigma + shift, masked, in two kernels: shift' + p * m / sigma, then * m (m * m = m)
            shift = (beta if cfg.outcome_shift else torch.zeros_like(beta)) - cfg.mu / cfg.sigma
            adv = empty_buffer(p.shape, torch.float32, p.device)
            torch.addcmul(shift[:, None], p, maskf, value=1.0 / cfg.sigma, out=adv).mul_(maskf)
            if metrics is not None:
                z_mean = (masked_mean_std(p, maskf)[0] - cfg.mu) / cfg.sigma if float(maskf.sum()) else 0.0
        else:
            # token-weighted statistics of p over every valid token of the group (the paper's relative ablation)
            n_tok = maskf.sum(-1)
            g_cnt = n_tok.new_zeros(num_groups).index_add_(0, gid, n_tok)
            g_mean = n_tok.new_zeros(num_groups).index_add_(0, gid, _rowdot(p, maskf)) / g_cnt.clamp(min=1.0)
            z = torch.sub(p, g_mean.index_select(0, gid)[:, None]).mul_(maskf)
            g_sq = n_tok.new_zeros(num_groups).index_add_(0, gid, _rowdot(z, z))
            # a single valid token: the unbiased std is undefined; 1 keeps z = 0 there (p equals the mean)
            g_std = torch.where(g_cnt >= 2, (g_sq / (g_cnt - 1.0).clamp(min=1.0)).sqrt(), torch.ones_like(g_sq))
            z.div_(g_std.index_select(0, gid).add_(cfg.eps)[:, None])
            if metrics is not None:
                z_mean = masked_mean_std(z, maskf)[0]
            adv = z.add_(beta[:, None]) if cfg.outcome_shift else z  # z is ours: finish in place
            adv.mul_(maskf)

    if metrics is not None:
        if segment_ids is not None:
            counts = _segment_metrics(metrics, "prpo/segments_per_response", segment_ids, inp)
            n_seg = float(counts.sum())
            metrics["prpo/segment_length/mean"] = float(maskf.sum(dtype=torch.float64)) / n_seg if n_seg else 0.0
        metrics["prpo/prm_score/mean"], metrics["prpo/prm_score/std"] = masked_mean_std(p, maskf)
        metrics["prpo/abs_beta/mean"] = float(beta.abs().double().mean()) if beta.numel() else 0.0
        metrics["prpo/z/mean"] = z_mean
        _put_adv_metrics(metrics, adv, maskf)
    return adv, adv


@register_adv_est("prm_avg")
def compute_prm_avg_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    config: Any = None,
    *,
    entropy: torch.Tensor | None = None,
    old_log_probs: torch.Tensor | None = None,
    ref_log_prob: torch.Tensor | None = None,
    prm_scores: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    metrics: dict | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PRM-Avg baseline (PRPO paper): the mean PRM score is added to the outcome, then GRPO.

        pbar_i  = sum_t p_{i,t} m_{i,t} / sum_t m_{i,t}    (token-weighted; an empty response uses mu, logged)
        R'_i    = R_i + pbar_i
        A_{i,t} = (R'_i - mean_G R') / (std_G R' + eps)  (R'_i - mean_G R' if norm_adv_by_std_in_grpo is False)

    ``mu`` and ``eps`` come from ``algorithm.prpo``; ``norm_adv_by_std_in_grpo`` from ``algorithm`` (default True).

    Args:
        token_level_rewards: ``(B, L)``. response_mask: ``(B, L)``. index: ``(B,)`` uids. config: ``algorithm`` node.
        prm_scores: ``(B, L)`` in [0, 1] on valid tokens (required).
        metrics: dict receiving ``prm_avg/prm_mean/mean`` (over non-empty responses), ``prm_avg/empty_responses``,
            ``adv/mean``, ``adv/std``.

    Returns:
        advantages ``(B, L)`` float32 (0 outside the mask) and returns (the same tensor).
    """
    cfg = from_algorithm_config(config, "prpo")
    norm_by_std = bool(_cfg_get(config, "norm_adv_by_std_in_grpo", True))
    inp = _Inputs("prm_avg", token_level_rewards, response_mask, index)
    p = _prm_scores(inp, prm_scores)
    maskf = inp.maskf

    with torch.no_grad():
        n_tok = maskf.sum(-1)
        empty = n_tok == 0
        n_empty = int(empty.sum())
        if n_empty:
            logger.warning("prm_avg: %d empty response(s) have no PRM score; using mu=%.4g as their mean", n_empty,
                           cfg.mu)
        pbar = torch.where(empty, torch.full_like(n_tok, cfg.mu), _rowdot(p, maskf) / n_tok.clamp(min=1.0))
        r_prime = inp.R + pbar
        mean, std, _ = group_mean_std(r_prime, inp.gid, inp.num_groups)
        scores = r_prime - mean[inp.gid]
        if norm_by_std:
            scores = scores / (std[inp.gid] + cfg.eps)
        adv = torch.mul(scores[:, None], maskf, out=empty_buffer(maskf.shape, torch.float32, maskf.device))

    if metrics is not None:
        metrics["prm_avg/prm_mean/mean"] = float(pbar[~empty].double().mean()) if n_empty < pbar.numel() else 0.0
        metrics["prm_avg/empty_responses"] = float(n_empty)
        _put_adv_metrics(metrics, adv, maskf)
    return adv, adv


# --------------------------------------------------------------------------------------------------------------------
# PRL
# --------------------------------------------------------------------------------------------------------------------


def _select_scope(step_sum: torch.Tensor, d_last: torch.Tensor | None, kl_scope: str) -> torch.Tensor:
    """(B, S) KL-to-go of each step from its (B, S) sums D_l and the d of its last valid token.

        whole_step: sum_{l' >= l} D_l'     after_step: sum_{l' > l} D_l'     step_end: d_{e_l} + sum_{l' > l} D_l'
    """
    whole = step_sum.flip(-1).cumsum(-1).flip(-1)
    if kl_scope == "whole_step":
        return whole
    after = whole - step_sum
    return after if kl_scope == "after_step" else after + d_last


def _prl_steps_from_ids(d: torch.Tensor, seg: torch.Tensor, inp: _Inputs, kl_scope: str) -> torch.Tensor:
    """Per-token KL-to-go (B, L) of each token's step for arbitrary step ids (non-decreasing along the response).

    One scatter of d into (B, S) step sums, one gather back; the last valid token of each step by a scatter-max.
    """
    B, L = d.shape
    num_steps = int(seg.max()) + 1 if seg.numel() else 0
    if num_steps <= 0:
        return torch.zeros_like(d)
    col = torch.where(inp.mask, seg, torch.full_like(seg, num_steps))  # invalid tokens -> dummy column
    step_sum = d.new_zeros(B, num_steps + 1).scatter_add_(1, col, d)[:, :num_steps]
    d_last = None
    if kl_scope == "step_end":
        pos = torch.arange(L, device=d.device).expand(B, L)
        last = torch.full((B, num_steps + 1), -1, dtype=torch.long, device=d.device)
        last = last.scatter_reduce_(1, col, pos, reduce="amax", include_self=True)[:, :num_steps]
        d_last = d.gather(1, last.clamp(min=0)) * (last >= 0)  # a step id with no token contributes nothing
    per_step = _select_scope(step_sum, d_last, kl_scope)
    return per_step.gather(1, seg.clamp(min=0)).mul_(inp.maskf)


def _block_last_valid(bm: torch.Tensor) -> torch.Tensor:
    """(B, S) index + 1 of the last valid position of each (B, S, s) mask block (0 for an empty block).

    Without a (B, L) temporary in the usual case: with c ones in a block, their positions sum to c (c - 1) / 2 exactly
    when they are the first c positions, and then the last one is c - 1. Count and position sum are a view-sum and a
    mat-vec product; only a block with holes sends the batch to the general (mask * position).amax.
    """
    pos = torch.arange(bm.shape[-1], device=bm.device, dtype=torch.float32)
    count = bm.sum(-1)
    moment = torch.matmul(bm, pos)  # exact: integers below 2**24
    if bool(torch.equal(moment, count * (count - 1) / 2)):
        return count
    return (bm * (pos + 1)).amax(-1)


def _prl_fixed(d: torch.Tensor, a_out: torch.Tensor, inp: _Inputs, step_len: int, eta: float, kl_scope: str):
    """rho for ``fixed`` steps without materialising step ids: step l is positions [l*s, (l+1)*s), so the (B, L)
    tensors are viewed as (B, S, s) blocks (plus a tail block when s does not divide L).

    Returns:
        rho ``(B, L)`` (0 outside the mask) and the (B,) number of steps with a valid token.
    """
    B, L = d.shape
    if L == 0:
        return torch.zeros_like(d), torch.zeros(B, dtype=torch.long, device=d.device)
    s = step_len
    n_full, tail = divmod(L, s)
    L0 = n_full * s
    maskf = inp.maskf
    blocks_d = [d[:, :L0].unflatten(1, (n_full, s))] if n_full else []
    blocks_m = [maskf[:, :L0].unflatten(1, (n_full, s))] if n_full else []
    if tail:
        blocks_d.append(d[:, L0:].unsqueeze(1))
        blocks_m.append(maskf[:, L0:].unsqueeze(1))
    step_sum = torch.cat([b.sum(-1) for b in blocks_d], dim=1)  # (B, S); d is already 0 outside the mask
    d_last = None
    if kl_scope == "step_end":
        lasts = []
        for bd, bm in zip(blocks_d, blocks_m):
            last1 = _block_last_valid(bm)  # last valid position in the block + 1; 0 if none
            idx = (last1 - 1).clamp_(min=0).long().unsqueeze(-1)
            lasts.append(bd.gather(2, idx).squeeze(-1) * (last1 > 0))
        d_last = torch.cat(lasts, dim=1)
    per_step = _select_scope(step_sum, d_last, kl_scope)
    val = torch.sub(a_out[:, None], per_step, alpha=1.0 / eta)  # (B, S): rho is constant within a step
    rho = empty_buffer(d.shape, d.dtype, d.device)
    if n_full:
        torch.mul(val[:, :n_full, None], blocks_m[0], out=rho[:, :L0].unflatten(1, (n_full, s)))
    if tail:
        torch.mul(val[:, n_full:], maskf[:, L0:], out=rho[:, L0:])
    n_steps = (torch.cat([bm.sum(-1) for bm in blocks_m], dim=1) > 0).sum(-1)
    return rho, n_steps


@register_adv_est("prl")
def compute_prl_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    config: Any = None,
    *,
    entropy: torch.Tensor | None = None,
    old_log_probs: torch.Tensor | None = None,
    ref_log_prob: torch.Tensor | None = None,
    prm_scores: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    metrics: dict | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PRL advantage (arXiv 2601.10201): outcome minus the KL to the reference policy still to come.

        d_{i,t} = log pi_old_{i,t} - log pi_ref_{i,t}
        outcome_first: rho_{i,t} = A_out_i - (1/eta) * S_{i,t},   t in step l, with
            S = sum_{j >= e_l} d_{i,j}  (kl_scope = step_end; e_l the step's last valid token),
                sum_{j >  e_l} d_{i,j}  (after_step; 0 for the last step),
                sum_{j >= first token of l} d_{i,j}  (whole_step)
        process_first: rho_{i,t} = R_i - (1/eta) * sum_{j >= t} d_{i,j}   (per token, no group normalisation)
        A_out_i = (R_i - mean_G R) / (std_G R + eps)  (not divided if norm_adv_by_std_in_grpo is False)
    Sums run over valid tokens only.

    Steps: ``segment_ids`` if given (e.g. the trainer's ``newline`` segmentation), else ``fixed`` steps of
    ``algorithm.prl.step_len`` tokens (step l = positions [l * step_len, (l + 1) * step_len)).

    Args:
        token_level_rewards: ``(B, L)``. response_mask: ``(B, L)``. index: ``(B,)`` uids. config: ``algorithm`` node.
        old_log_probs: ``(B, L)`` (required). ref_log_prob: ``(B, L)`` (required).
        segment_ids: ``(B, L)`` long step ids, non-decreasing along the response, -1 outside the mask (optional).
        metrics: dict receiving ``prl/process_term/{mean,std}`` (the -(1/eta) * S part over valid tokens),
            ``prl/steps_per_response/mean`` (outcome_first; over non-empty responses), ``adv/mean``, ``adv/std``.

    Returns:
        advantages ``(B, L)`` float32 (0 outside the mask) and returns (the same tensor).
    """
    cfg = from_algorithm_config(config, "prl")
    norm_by_std = bool(_cfg_get(config, "norm_adv_by_std_in_grpo", True))
    inp = _Inputs("prl", token_level_rewards, response_mask, index)
    d = _log_prob_diff(inp, old_log_probs, ref_log_prob)
    maskf = inp.maskf
    n_steps = None

    with torch.no_grad():
        if cfg.variant == "process_first":
            r = inp.R
            kl_to_go = d.flip(-1).cumsum_(-1).flip(-1)  # sum_{j >= t} d_j (d is 0 outside the mask)
            adv = torch.sub(r[:, None], kl_to_go, alpha=1.0 / cfg.eta).mul_(maskf)
        else:
            a_out, _ = inp.outcome(norm_by_std=norm_by_std, eps=cfg.eps)
            if segment_ids is not None:
                if segment_ids.shape != d.shape:
                    raise ValueError(f"segment_ids has shape {tuple(segment_ids.shape)}, expected {tuple(d.shape)}")
                seg = segment_ids.to(d.device).long()
                if bool((seg[inp.mask] < 0).any()):
                    raise ValueError("segment_ids must be >= 0 on every valid token (-1 only outside the mask)")
                kl_to_go = _prl_steps_from_ids(d, seg, inp, cfg.kl_scope)
                adv = torch.sub(a_out[:, None], kl_to_go, alpha=1.0 / cfg.eta).mul_(maskf)
                n_steps = torch.where(inp.mask, seg, torch.full_like(seg, -1)).amax(-1) + 1 if seg.shape[1] else None
            elif cfg.segmentation == "newline":
                raise ValueError(
                    "algorithm.prl.segmentation=newline needs `segment_ids` from the trainer (it decodes the "
                    f"response tokens); {_TRAINER_HINT}, or use algorithm.prl.segmentation=fixed"
                )
            else:
                adv, n_steps = _prl_fixed(d, a_out, inp, cfg.step_len, cfg.eta, cfg.kl_scope)

    if metrics is not None:
        base = (r if cfg.variant == "process_first" else a_out)[:, None]
        metrics["prl/process_term/mean"], metrics["prl/process_term/std"] = masked_mean_std(adv - base, maskf)
        if n_steps is not None:
            nonempty = maskf.sum(-1) > 0
            steps = n_steps[nonempty].double()
            metrics["prl/steps_per_response/mean"] = float(steps.mean()) if steps.numel() else 0.0
        _put_adv_metrics(metrics, adv, maskf)
    return adv, adv


# --------------------------------------------------------------------------------------------------------------------
# SPRO
# --------------------------------------------------------------------------------------------------------------------


@register_adv_est("spro")
def compute_spro_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    config: Any = None,
    *,
    entropy: torch.Tensor | None = None,
    old_log_probs: torch.Tensor | None = None,
    ref_log_prob: torch.Tensor | None = None,
    prm_scores: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    metrics: dict | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SPRO advantage (arXiv 2507.01551): outcome advantage plus the Masked Step Advantage of the implicit PRM.

        r_{i,t}   = beta_s * (log pi_old_{i,t} - log pi_ref_{i,t})         (detached)
        CPR_{i,t} = sum_{j <= t, valid} r_{i,j}
        MSA_{i,t} = CPR_{i,t} - mean_{k in G(i), m_{k,t} = 1} CPR_{k,t}     (0 where only one response is alive at t)
                    [ / (std_{k in G(i), m_{k,t} = 1} CPR_{k,t} + eps)      if msa_norm = std; unbiased std ]
        A_{i,t}   = A_out_i + MSA_{i,t}
        A_out_i   = (R_i - mean_G R) / (std_G R + eps)  (not divided if norm_adv_by_std_in_grpo is False)

    Args:
        token_level_rewards: ``(B, L)``. response_mask: ``(B, L)``. index: ``(B,)`` uids. config: ``algorithm`` node.
        old_log_probs: ``(B, L)`` (required). ref_log_prob: ``(B, L)`` (required).
        metrics: dict receiving ``spro/msa/{mean,std}``, ``spro/cpr/mean``, ``adv/mean``, ``adv/std``.

    Returns:
        advantages ``(B, L)`` float32 (0 outside the mask) and returns (the same tensor).
    """
    cfg = from_algorithm_config(config, "spro")
    norm_by_std = bool(_cfg_get(config, "norm_adv_by_std_in_grpo", True))
    inp = _Inputs("spro", token_level_rewards, response_mask, index)
    d = _log_prob_diff(inp, old_log_probs, ref_log_prob)
    maskf, gid, num_groups = inp.maskf, inp.gid, inp.num_groups

    with torch.no_grad():
        # d is ours: r, CPR and MSA are built in its memory
        cpr = d.mul_(cfg.beta_s).cumsum_(-1).mul_(maskf)  # 0 outside the mask
        if metrics is not None:
            cpr_mean = masked_mean_std(cpr, maskf)[0]
        _, _, mean, std = group_position_stats(
            cpr, maskf, gid, num_groups, with_std=cfg.msa_norm == "std", x_is_masked=True
        )
        # a lone response at t: the mean is its own CPR exactly, so its MSA is exactly 0 (and 0 / (0 + eps) = 0)
        msa = sub_group_rows_(cpr, mean, gid).mul_(maskf)
        if std is not None:
            msa.div_(std.add_(cfg.eps).index_select(0, gid))
        if metrics is not None:
            msa_stats = masked_mean_std(msa, maskf)
        a_out, _ = inp.outcome(norm_by_std=norm_by_std, eps=cfg.eps)
        adv = msa.add_(a_out[:, None]).mul_(maskf)

    if metrics is not None:
        metrics["spro/msa/mean"], metrics["spro/msa/std"] = msa_stats
        metrics["spro/cpr/mean"] = cpr_mean
        _put_adv_metrics(metrics, adv, maskf)
    return adv, adv


# --------------------------------------------------------------------------------------------------------------------
# PURE
# --------------------------------------------------------------------------------------------------------------------


def _leave_one_out_sum(x: torch.Tensor, gid: torch.Tensor, num_groups: int) -> torch.Tensor:
    """sum_{k in G(i), k != i} x_k for every i, (B,)."""
    return x.new_zeros(num_groups).index_add_(0, gid, x)[gid] - x


@register_adv_est("pure")
def compute_pure_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    config: Any = None,
    *,
    entropy: torch.Tensor | None = None,
    old_log_probs: torch.Tensor | None = None,
    ref_log_prob: torch.Tensor | None = None,
    prm_scores: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    metrics: dict | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PURE (arXiv 2504.15275), ALGORITHMS.md "PURE": min-form credit assignment of PRM step rewards.

        r_{i,s}  = 2 p_{i,s} - 1                                  step reward (p_good - p_bad)
        w_{i,s}  = softmax_s(-r_{i,s} / T)   (min_form)   or   1 / S_i   (none)
        q_{i,s}  = w_{i,s} r_{i,s},   PR_i = sum_s q_{i,s}        (a soft minimum of the step rewards)
        b_i      = sum_{k != i} PR_k / sum_{k != i} L_k,  q'_{i,s} = q_{i,s} - b_i n_{i,s}      (baseline = token)
        b_i      = mean_{k != i} PR_k / S_k,               q'_{i,s} = q_{i,s} - b_i            (baseline = step)
        v_i      = R_i - mean_{k != i} R_k                        verifiable reward (k in the group of i)
        reward   = q'_{i,s} at e_{i,s} (the step's last valid token) + vr_coef * v_i at the last valid token
        A_{i,t}  = sum_{j >= t} reward_{i,j}                      return to go, gamma = 1
        A_{i,e_{i,s}} = 0                                          (mask_separator)
        A        = (A - mean) / sqrt(max(var, 1e-8)) over all valid tokens of the batch, population var  (whiten)

    L_k is the number of valid tokens, n_{i,s} that of step s, S_i the number of steps. A group of one has b = 0
    and v = 0 (logged). Whitening includes the separator tokens (A = 0 there before it), then A = 0 outside the mask.

    Args:
        token_level_rewards: ``(B, L)``; R_i is the row sum. response_mask: ``(B, L)``. index: ``(B,)`` uids.
        config: verl's ``algorithm`` node (options under ``algorithm.pure``, ``PUREConfig``).
        prm_scores: ``(B, L)`` p in [0, 1], the same value on every valid token of a step (required).
        segment_ids: ``(B, L)`` long step ids, non-decreasing along the response, -1 outside the mask (required).
        metrics: dict receiving ``pure/soft_min_reward/mean`` (PR over non-empty responses), ``pure/baseline/mean``,
            ``pure/steps_per_response/{mean,min,max}``, ``pure/singleton_groups``, ``adv/mean``, ``adv/std``.

    Returns:
        advantages ``(B, L)`` float32 (0 outside the mask) and returns (the same tensor).
    """
    cfg = from_algorithm_config(config, "pure")
    inp = _Inputs("pure", token_level_rewards, response_mask, index)
    p = _prm_scores(inp, prm_scores)
    seg = _step_ids(inp, segment_ids, " and enable the PRM (prm.enable=true)")
    mask, maskf, gid, num_groups = inp.mask, inp.maskf, inp.gid, inp.num_groups
    B, L = maskf.shape
    if L == 0:
        return maskf.clone(), maskf.clone()

    with torch.no_grad():
        # steps as (B, S) tables: token count n, last valid token e; invalid tokens go to a spare column S
        S = max(int(seg.max()) + 1, 1) if seg.numel() else 1
        col = torch.where(mask, seg, torch.full_like(seg, S))
        pos = torch.arange(L, device=seg.device).expand(B, L)
        n = maskf.new_zeros(B, S + 1).scatter_add_(1, col, maskf)[:, :S]
        last = torch.full((B, S + 1), -1, dtype=torch.long, device=seg.device)
        e = last.scatter_reduce_(1, col, pos, reduce="amax")[:, :S].clamp(min=0)
        is_step = n > 0
        p_step = p.gather(1, e)
        if bool(((p - p_step.gather(1, seg.clamp(min=0))).abs() * maskf > 1e-6).any()):
            raise ValueError("pure: prm_scores must carry one value per step (the same on every valid token of a "
                             "segment_ids step); got different values within a step")
        num_steps = is_step.sum(-1)
        r = 2 * p_step - 1
        if cfg.weighting == "min_form":
            w = torch.softmax(torch.where(is_step, -r / cfg.temperature, float("-inf")), dim=-1).nan_to_num(0.0)
        else:
            w = is_step / num_steps.clamp(min=1)[:, None]
        q = w * r * is_step
        PR = q.sum(-1)

        group_size = maskf.new_zeros(num_groups).index_add_(0, gid, torch.ones_like(PR))[gid]
        others = group_size - 1
        if cfg.baseline == "token":
            others_tokens = _leave_one_out_sum(maskf.sum(-1), gid, num_groups)
            b = torch.where(others_tokens > 0, _leave_one_out_sum(PR, gid, num_groups) / others_tokens.clamp(min=1), 0.0)
            q_adj = q - b[:, None] * n
        else:
            per_step = PR / num_steps.clamp(min=1)
            b = torch.where(others > 0, _leave_one_out_sum(per_step, gid, num_groups) / others.clamp(min=1), 0.0)
            q_adj = q - b[:, None] * is_step
        v = torch.where(others > 0, inp.R - _leave_one_out_sum(inp.R, gid, num_groups) / others.clamp(min=1), 0.0)
        n_single = int((group_size == 1).sum())
        if n_single:
            logger.warning("pure: %d response(s) alone in their group: baseline b = 0 and verifiable reward v = 0",
                           n_single)

        reward = maskf.new_zeros(B, L).scatter_add_(1, e, q_adj * is_step)
        last_token = (maskf * (pos + 1)).amax(-1).long() - 1
        reward.scatter_add_(1, last_token.clamp(min=0)[:, None], (cfg.vr_coef * v * (last_token >= 0))[:, None])
        adv = reward.flip(-1).cumsum(-1).flip(-1) * maskf
        if cfg.mask_separator:
            step_end = maskf.new_zeros(B, L).scatter_add_(1, e, is_step.float()) > 0
            adv = adv.masked_fill(step_end, 0.0)
        if cfg.whiten:
            n_valid = maskf.sum()
            mean = (adv * maskf).sum() / n_valid.clamp(min=1)
            var = (((adv - mean) * maskf) ** 2).sum() / n_valid.clamp(min=1)
            adv = (adv - mean) / var.clamp(min=1e-8).sqrt() * maskf

    if metrics is not None:
        nonempty = num_steps > 0
        metrics["pure/soft_min_reward/mean"] = float(PR[nonempty].double().mean()) if bool(nonempty.any()) else 0.0
        metrics["pure/baseline/mean"] = float(b.double().mean()) if b.numel() else 0.0
        steps = num_steps[nonempty].double()
        for stat in ("mean", "min", "max"):
            metrics[f"pure/steps_per_response/{stat}"] = float(getattr(steps, stat)()) if steps.numel() else 0.0
        metrics["pure/singleton_groups"] = float(n_single)
        _put_adv_metrics(metrics, adv, maskf)
    return adv, adv
