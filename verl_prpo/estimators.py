"""Process-reward advantage estimators registered in verl: ``prpo``, ``prm_avg``, ``prl``, ``spro``.

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
from verl.trainer.ppo.core_algos import register_adv_est

from verl_prpo.config import from_algorithm_config
from verl_prpo.ops import (
    check_finite,
    group_ids,
    group_mean_std,
    group_position_stats,
    masked_cumsum,
    masked_mean_std,
    outcome_advantage,
    valid_mask,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ESTIMATOR_NAMES",
    "compute_prpo_advantage",
    "compute_prm_avg_advantage",
    "compute_prl_advantage",
    "compute_spro_advantage",
]

#: names registered in verl's ADV_ESTIMATOR_REGISTRY by this module
ESTIMATOR_NAMES: tuple[str, ...] = ("prpo", "prl", "spro", "prm_avg")

_TRAINER_HINT = "verl's stock compute_advantage does not pass it: set trainer.v1.trainer_mode=prpo_sync"


# --------------------------------------------------------------------------------------------------------------------
# shared input handling
# --------------------------------------------------------------------------------------------------------------------


def _missing_input(estimator: str, field: str, extra: str = "") -> ValueError:
    return ValueError(f"advantage estimator '{estimator}' needs `{field}` (B, L), but got None; {_TRAINER_HINT}{extra}")


def _prepare(name: str, token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Any):
    """Validate the common inputs; return (rewards float32, bool mask, float mask, (gid, G))."""
    if token_level_rewards.dim() != 2:
        raise ValueError(f"{name}: token_level_rewards must be (B, L), got shape {tuple(token_level_rewards.shape)}")
    if response_mask.shape != token_level_rewards.shape:
        raise ValueError(
            f"{name}: response_mask has shape {tuple(response_mask.shape)}, token_level_rewards "
            f"{tuple(token_level_rewards.shape)}"
        )
    # R is the unmasked sum (as verl), so a NaN anywhere in the rewards would reach it
    check_finite("token_level_rewards", token_level_rewards)
    mask = valid_mask(response_mask).to(token_level_rewards.device)
    groups = group_ids(index, expected_len=token_level_rewards.shape[0])
    groups = (groups[0].to(token_level_rewards.device), groups[1])
    return token_level_rewards.detach().float(), mask, mask.float(), groups


def _clean(name: str, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Shape/finite check of an extra (B, L) input; return it as float32, detached, with 0 outside the mask."""
    if x.shape != mask.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(mask.shape)} like response_mask")
    check_finite(name, x, mask)
    x = x.detach().to(device=mask.device, dtype=torch.float32)
    # where, not multiply: NaN/inf outside the mask are allowed and must not leak (NaN * 0 = NaN)
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


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


def _log_prob_diff(name: str, old_log_probs, ref_log_prob, mask) -> torch.Tensor:
    """d = log pi_old - log pi_ref, (B, L) float32, 0 outside the mask."""
    ref_hint = " and enable the reference policy (actor_rollout_ref.actor.use_kl_loss=true with kl_loss_coef=0)"
    if old_log_probs is None:
        raise _missing_input(name, "old_log_probs", ref_hint)
    if ref_log_prob is None:
        raise _missing_input(name, "ref_log_prob", ref_hint)
    return _clean("old_log_probs", old_log_probs, mask) - _clean("ref_log_prob", ref_log_prob, mask)


def _put_adv_metrics(metrics: dict | None, adv: torch.Tensor, mask: torch.Tensor) -> None:
    if metrics is None:
        return
    mean, std = masked_mean_std(adv, mask)
    metrics["adv/mean"] = mean
    metrics["adv/std"] = std


def _segment_bounds_metrics(metrics: dict, prefix: str, segment_ids: torch.Tensor, mask: torch.Tensor) -> None:
    """segments per non-empty response (mean/min/max) and mean segment length in tokens."""
    seg = torch.where(mask, segment_ids.to(mask.device).long(), torch.full_like(mask, -1, dtype=torch.long))
    nonempty = mask.any(-1)
    counts = (seg.amax(-1) + 1).clamp(min=0)[nonempty].double()
    if counts.numel() == 0:
        metrics.update({f"{prefix}/mean": 0.0, f"{prefix}/min": 0.0, f"{prefix}/max": 0.0})
        return
    metrics[f"{prefix}/mean"] = float(counts.mean())
    metrics[f"{prefix}/min"] = float(counts.min())
    metrics[f"{prefix}/max"] = float(counts.max())


# --------------------------------------------------------------------------------------------------------------------
# PRPO and PRM-Avg
# --------------------------------------------------------------------------------------------------------------------


def _check_prm_scores(name: str, prm_scores: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    if prm_scores is None:
        raise _missing_input(name, "prm_scores", " and enable the PRM (prm.enable=true)")
    p = _clean("prm_scores", prm_scores, mask)
    out_of_range = mask & ((p < 0) | (p > 1))
    if bool(out_of_range.any()):
        bad = p[out_of_range]
        raise ValueError(
            f"prm_scores must be probabilities in [0, 1] on valid tokens; {bad.numel()} value(s) outside, "
            f"e.g. {float(bad[0])}"
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
        z_{i,t} = (p_{i,t} - mean_{g,tok} p) / (std_{g,tok} p + eps)       (normalization = relative; token-weighted
                                                                            over all valid tokens of the group)
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
        metrics: dict receiving ``prpo/segments_per_response/{mean,min,max}``, ``prpo/segment_length/mean``,
            ``prpo/prm_score/{mean,std}``, ``prpo/abs_beta/mean``, ``prpo/z/mean``, ``adv/mean``, ``adv/std``.

    Returns:
        advantages ``(B, L)`` float32 (0 outside the mask) and returns (the same tensor).
    """
    cfg = from_algorithm_config(config, "prpo")
    _, mask, maskf, (gid, num_groups) = _prepare("prpo", token_level_rewards, response_mask, index)
    p = _check_prm_scores("prpo", prm_scores, mask)

    with torch.no_grad():
        a_out, beta = outcome_advantage(
            token_level_rewards, response_mask, index, norm_by_std=True, eps=cfg.eps, groups=(gid, num_groups)
        )
        if cfg.beta_norm == "std":
            beta = a_out

        if cfg.normalization == "fixed":
            z = (p - cfg.mu) / cfg.sigma
        else:
            # token-weighted statistics of p over every valid token of the group (the paper's relative ablation)
            g_cnt = torch.zeros(num_groups, device=p.device).index_add_(0, gid, maskf.sum(-1))
            g_sum = torch.zeros(num_groups, device=p.device).index_add_(0, gid, p.sum(-1))
            g_mean = g_sum / g_cnt.clamp(min=1.0)
            dev = (p - g_mean[gid][:, None]) * maskf
            g_sq = torch.zeros(num_groups, device=p.device).index_add_(0, gid, (dev * dev).sum(-1))
            # one valid token: std undefined; 1 keeps z = 0 there (p equals the mean)
            g_std = torch.where(g_cnt >= 2, (g_sq / (g_cnt - 1.0).clamp(min=1.0)).sqrt(), torch.ones_like(g_sq))
            z = (p - g_mean[gid][:, None]) / (g_std[gid][:, None] + cfg.eps)

        adv = z + beta[:, None] if cfg.outcome_shift else z
        adv = adv * maskf

    if metrics is not None:
        if segment_ids is not None:
            _segment_bounds_metrics(metrics, "prpo/segments_per_response", segment_ids, mask)
            seg = torch.where(mask, segment_ids.to(mask.device).long(), torch.full_like(mask, -1, dtype=torch.long))
            n_seg = float((seg.amax(-1) + 1).clamp(min=0).sum())
            metrics["prpo/segment_length/mean"] = float(maskf.sum()) / n_seg if n_seg > 0 else 0.0
        metrics["prpo/prm_score/mean"], metrics["prpo/prm_score/std"] = masked_mean_std(p, mask)
        metrics["prpo/abs_beta/mean"] = float(beta.abs().double().mean()) if beta.numel() else 0.0
        metrics["prpo/z/mean"] = masked_mean_std(z, mask)[0]
        _put_adv_metrics(metrics, adv, mask)
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

        pbar_i = sum_t p_{i,t} m_{i,t} / sum_t m_{i,t}      (token-weighted; an empty response uses mu, logged)
        R'_i   = R_i + pbar_i
        A_{i,t} = (R'_i - mean_G R') / (std_G R' + eps)  (or R'_i - mean_G R' if norm_adv_by_std_in_grpo is False)

    ``mu`` and ``eps`` come from ``algorithm.prpo``; ``norm_adv_by_std_in_grpo`` from ``algorithm`` (default True).

    Args:
        token_level_rewards: ``(B, L)``. response_mask: ``(B, L)``. index: ``(B,)`` uids. config: ``algorithm`` node.
        prm_scores: ``(B, L)`` in [0, 1] on valid tokens (required).
        metrics: dict receiving ``prm_avg/prm_mean/mean``, ``prm_avg/empty_responses``, ``adv/mean``, ``adv/std``.

    Returns:
        advantages ``(B, L)`` float32 (0 outside the mask) and returns (the same tensor).
    """
    cfg = from_algorithm_config(config, "prpo")
    norm_by_std = bool(_cfg_get(config, "norm_adv_by_std_in_grpo", True))
    rewards, mask, maskf, (gid, num_groups) = _prepare("prm_avg", token_level_rewards, response_mask, index)
    p = _check_prm_scores("prm_avg", prm_scores, mask)

    with torch.no_grad():
        n_tok = maskf.sum(-1)
        empty = n_tok == 0
        n_empty = int(empty.sum())
        if n_empty:
            logger.warning("prm_avg: %d empty response(s) have no PRM score; using mu=%.4g as their mean", n_empty,
                           cfg.mu)
        pbar = torch.where(empty, torch.full_like(n_tok, cfg.mu), p.sum(-1) / n_tok.clamp(min=1.0))
        r_prime = rewards.sum(-1) + pbar
        mean, std, _ = group_mean_std(r_prime, gid, num_groups)
        scores = r_prime - mean[gid]
        if norm_by_std:
            scores = scores / (std[gid] + cfg.eps)
        adv = scores[:, None] * maskf

    if metrics is not None:
        metrics["prm_avg/prm_mean/mean"] = float(pbar[~empty].double().mean()) if n_empty < pbar.numel() else 0.0
        metrics["prm_avg/empty_responses"] = float(n_empty)
        _put_adv_metrics(metrics, adv, mask)
    return adv, adv


# --------------------------------------------------------------------------------------------------------------------
# PRL
# --------------------------------------------------------------------------------------------------------------------


def _step_kl_to_go(d: torch.Tensor, seg: torch.Tensor, mask: torch.Tensor, kl_scope: str) -> torch.Tensor:
    """KL still to come for every token's step, per token.

    With D_{i,l} = sum_{j in step l} d_{i,j} (valid tokens) and e_l the step's last valid token:
        whole_step: S_{i,t} = sum_{l' >= l} D_{i,l'}          = sum_{j >= first token of l} d_{i,j}
        after_step: S_{i,t} = sum_{l' >  l} D_{i,l'}          = sum_{j > e_l} d_{i,j}
        step_end:   S_{i,t} = d_{i,e_l} + sum_{l' > l} D_{i,l'} = sum_{j >= e_l} d_{i,j}
    for t in step l. Works on (B, S) step sums, not (B, L) suffix sums: one scatter and one gather over (B, L).

    Args:
        d: ``(B, L)`` float, 0 outside the mask. seg: ``(B, L)`` long step ids, non-decreasing along valid positions,
        -1 outside the mask. mask: ``(B, L)`` bool.

    Returns:
        ``(B, L)`` float, 0 outside the mask.
    """
    B, L = d.shape
    num_steps = int(seg.max()) + 1 if seg.numel() else 0
    if num_steps <= 0:
        return torch.zeros_like(d)
    col = torch.where(mask, seg, torch.full_like(seg, num_steps))  # invalid tokens -> dummy column
    step_sum = d.new_zeros(B, num_steps + 1).scatter_add_(1, col, d)[:, :num_steps]
    whole = step_sum.flip(-1).cumsum(-1).flip(-1)  # (B, S): sum over steps l' >= l
    after = whole - step_sum
    if kl_scope == "whole_step":
        per_step = whole
    elif kl_scope == "after_step":
        per_step = after
    else:
        pos = torch.arange(L, device=d.device).expand(B, L)
        last = torch.full((B, num_steps + 1), -1, dtype=torch.long, device=d.device)
        last = last.scatter_reduce_(1, col, pos, reduce="amax", include_self=True)[:, :num_steps]
        d_last = d.gather(1, last.clamp(min=0)) * (last >= 0)  # a step id with no token contributes nothing
        per_step = after + d_last
    out = per_step.gather(1, seg.clamp(min=0))
    return torch.where(mask, out, torch.zeros_like(out))


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
            S = sum_{j >= e_l} d_{i,j}  (kl_scope = step_end; e_l the step's last token),
                sum_{j >  e_l} d_{i,j}  (after_step),   sum_{j >= first token of l} d_{i,j}  (whole_step)
        process_first: rho_{i,t} = R_i - (1/eta) * sum_{j >= t} d_{i,j}   (per token, no group normalisation)
        A_out_i = (R_i - mean_G R) / (std_G R + eps)  (not divided if norm_adv_by_std_in_grpo is False)

    Steps: ``segment_ids`` if given (e.g. the trainer's ``newline`` segmentation), else ``fixed`` steps of
    ``algorithm.prl.step_len`` tokens.

    Args:
        token_level_rewards: ``(B, L)``. response_mask: ``(B, L)``. index: ``(B,)`` uids. config: ``algorithm`` node.
        old_log_probs: ``(B, L)`` (required). ref_log_prob: ``(B, L)`` (required).
        segment_ids: ``(B, L)`` long step ids, non-decreasing along the response, -1 outside the mask (optional).
        metrics: dict receiving ``prl/process_term/{mean,std}`` (the -(1/eta) * S part),
            ``prl/steps_per_response/mean`` (outcome_first), ``adv/mean``, ``adv/std``.

    Returns:
        advantages ``(B, L)`` float32 (0 outside the mask) and returns (the same tensor).
    """
    cfg = from_algorithm_config(config, "prl")
    norm_by_std = bool(_cfg_get(config, "norm_adv_by_std_in_grpo", True))
    rewards, mask, maskf, groups = _prepare("prl", token_level_rewards, response_mask, index)
    d = _log_prob_diff("prl", old_log_probs, ref_log_prob, mask)

    with torch.no_grad():
        seg = None
        if cfg.variant == "process_first":
            # per-token suffix sum: S_{i,t} = sum_{j >= t} d_{i,j}
            kl_to_go = d.flip(-1).cumsum(-1).flip(-1)
            process = -kl_to_go / cfg.eta
            adv = (rewards.sum(-1)[:, None] + process) * maskf
        else:
            if segment_ids is not None:
                if segment_ids.shape != mask.shape:
                    raise ValueError(f"segment_ids has shape {tuple(segment_ids.shape)}, expected {tuple(mask.shape)}")
                seg = segment_ids.to(mask.device).long()
                if bool((seg[mask] < 0).any()):
                    raise ValueError("segment_ids must be >= 0 on every valid token (-1 only outside the mask)")
                seg = torch.where(mask, seg, torch.full_like(seg, -1))
            elif cfg.segmentation == "newline":
                raise ValueError(
                    "algorithm.prl.segmentation=newline needs `segment_ids` from the trainer (it decodes the "
                    f"response tokens); {_TRAINER_HINT}, or use algorithm.prl.segmentation=fixed"
                )
            else:
                # fixed steps: token t is in step t // step_len
                pos = torch.arange(mask.shape[1], device=mask.device)
                seg = torch.where(mask, (pos // cfg.step_len).expand_as(mask), torch.full_like(mask, -1, dtype=torch.long))
            a_out, _ = outcome_advantage(
                token_level_rewards, response_mask, index, norm_by_std=norm_by_std, eps=cfg.eps, groups=groups
            )
            process = -_step_kl_to_go(d, seg, mask, cfg.kl_scope) / cfg.eta
            adv = (a_out[:, None] + process) * maskf

    if metrics is not None:
        metrics["prl/process_term/mean"], metrics["prl/process_term/std"] = masked_mean_std(process, mask)
        if seg is not None:
            nonempty = mask.any(-1)
            steps = (seg.amax(-1) + 1)[nonempty].double()
            metrics["prl/steps_per_response/mean"] = float(steps.mean()) if steps.numel() else 0.0
        _put_adv_metrics(metrics, adv, mask)
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
        CPR_{i,t} = sum_{j <= t} r_{i,j}
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
    _, mask, maskf, (gid, num_groups) = _prepare("spro", token_level_rewards, response_mask, index)
    d = _log_prob_diff("spro", old_log_probs, ref_log_prob, mask)

    with torch.no_grad():
        cpr = masked_cumsum(cfg.beta_s * d, mask)
        _, count, mean, std = group_position_stats(cpr, mask, gid, num_groups)
        # a lone response at t: mean == its own CPR exactly, so MSA is exactly 0 there
        msa = (cpr - mean[gid]) * maskf
        if cfg.msa_norm == "std":
            msa = msa / (std[gid] + cfg.eps)
        a_out, _ = outcome_advantage(
            token_level_rewards, response_mask, index, norm_by_std=norm_by_std, eps=cfg.eps, groups=(gid, num_groups)
        )
        adv = (a_out[:, None] + msa) * maskf

    if metrics is not None:
        metrics["spro/msa/mean"], metrics["spro/msa/std"] = masked_mean_std(msa, mask)
        metrics["spro/cpr/mean"] = masked_mean_std(cpr, mask)[0]
        _put_adv_metrics(metrics, adv, mask)
    return adv, adv
