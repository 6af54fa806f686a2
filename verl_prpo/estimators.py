"""Process-reward advantage estimators registered in verl: ``prpo``, ``prm_avg``, ``prl``, ``spro``, ``pure``.

One function per estimator, each the formula of ``shared/docs/ALGORITHMS.md`` written in plain vectorised torch, with
the signature of ``docs/DESIGN.md`` ("Estimator contract"). Common rules:

* R_i = sum_t token_level_rewards_{i,t} (as verl's GRPO); groups keyed by ``index`` (uid), never batch position;
  GRPO statistics with verl's conventions (unbiased std, a group of one has mean 0 and std 1), see ``ops``.
* advantages are float32, zero outside the response mask, and ``returns`` is the same tensor (as verl's GRPO).
* NaN/inf on valid positions of an input is a ``ValueError`` naming the tensor; inputs that verl's stock
  ``compute_advantage`` does not pass raise a ``ValueError`` that says to use ``trainer.v1.trainer_mode=prpo_sync``.
* metrics (if a dict is given) are Python floats: ``<method>/...`` plus ``adv/mean`` and ``adv/std`` over valid tokens.

Imports without verl (then the functions are plain functions, registered nowhere).
Shapes: B responses, L response length, G groups, S segments (steps) per response at most.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from verl_prpo.config import from_algorithm_config
from verl_prpo.ops import (
    check_finite,
    count_valid,
    group_ids,
    group_mean_std,
    group_position_stats,
    group_sum,
    masked_mean,
    masked_mean_std,
    masked_suffix_sum,
    outcome_advantage,
    valid_mask,
)
from verl_prpo.segmentation import segment_table_index

try:  # registered in verl's ADV_ESTIMATOR_REGISTRY when verl is there
    from verl.trainer.ppo.core_algos import register_adv_est
except ImportError:  # verl not installed: plain functions (tests/test_no_verl.py)
    def register_adv_est(name):
        return lambda fn: fn

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
_PRM_HINT = " and enable the PRM (prm.enable=true)"
_REF_HINT = " and enable the reference policy (actor_rollout_ref.actor.use_kl_loss=true with kl_loss_coef=0)"


# --------------------------------------------------------------------------------------------------------------------
# input checks, once per estimator call
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Batch:
    """The common inputs of one call, checked: R (B,), valid (B, L) bool, groups; the mask m (B, L) float32 0/1."""

    name: str
    R: torch.Tensor
    valid: torch.Tensor
    gid: torch.Tensor
    num_groups: int

    @cached_property
    def m(self) -> torch.Tensor:
        return self.valid.float()  # built on first use: a (B, L) float buffer that not every estimator needs


def _batch(name: str, token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Any) -> _Batch:
    if token_level_rewards.dim() != 2:
        raise ValueError(f"{name}: token_level_rewards must be (B, L), got shape {tuple(token_level_rewards.shape)}")
    if response_mask.shape != token_level_rewards.shape:
        raise ValueError(f"{name}: response_mask has shape {tuple(response_mask.shape)}, token_level_rewards "
                         f"{tuple(token_level_rewards.shape)}")
    rewards = token_level_rewards.detach().float()
    R = rewards.sum(-1)  # the unmasked row sum (as verl): every entry counts
    if not bool(torch.isfinite(R).all()):  # a NaN/inf entry makes its row's sum NaN/inf
        check_finite("token_level_rewards", rewards)  # raises, naming the first bad entry
        raise ValueError("token_level_rewards: the per-response sum R overflows to inf")
    valid = valid_mask(response_mask.to(rewards.device))
    gid, num_groups = group_ids(index, expected_len=rewards.shape[0])
    return _Batch(name, R, valid, gid.to(rewards.device), num_groups)


def _missing(b: _Batch, field: str, hint: str) -> ValueError:
    return ValueError(f"advantage estimator '{b.name}' needs `{field}` (B, L), but got None; {_TRAINER_HINT}{hint}")


def _checked(b: _Batch, field: str, x: torch.Tensor | None, hint: str, within: tuple[float, float] | None = None):
    """``x`` as float32 (B, L): required, finite and inside ``within`` on valid tokens.

    Off the mask the values are finite but arbitrary (NaN or out-of-range values there are replaced by 0): callers
    multiply by the mask.
    """
    if x is None:
        raise _missing(b, field, hint)
    if x.shape != b.valid.shape:
        raise ValueError(f"{field} has shape {tuple(x.shape)}, expected {tuple(b.valid.shape)} like response_mask")
    x = x.detach().to(device=b.valid.device, dtype=torch.float32)
    lo, hi = within if within is not None else (float("-inf"), float("inf"))
    x_min, x_max = torch.aminmax(x) if x.numel() else (torch.tensor(lo), torch.tensor(hi))
    if not (lo <= float(x_min) and float(x_max) <= hi and bool(torch.isfinite(x_min) & torch.isfinite(x_max))):
        # something is off somewhere (NaN compares False): check the valid tokens, clean the others
        check_finite(field, x, b.valid)
        bad = b.valid & ((x < lo) | (x > hi))
        if bool(bad.any()):
            raise ValueError(f"{field} must be probabilities in [{lo:g}, {hi:g}] on valid tokens; "
                             f"{int(bad.sum())} value(s) outside, e.g. {float(x[bad][0])}")
        x = torch.where(b.valid, x, 0.0)  # where, not * m: NaN * 0 is NaN
    return x


def _step_ids(b: _Batch, segment_ids: torch.Tensor | None, hint: str = "") -> torch.Tensor:
    """The (B, L) int32/int64 step ids, checked: present, shaped like the mask, >= 0 on valid tokens and -1 elsewhere."""
    if segment_ids is None:
        raise _missing(b, "segment_ids", hint)
    if segment_ids.shape != b.valid.shape:
        raise ValueError(f"segment_ids has shape {tuple(segment_ids.shape)}, expected {tuple(b.valid.shape)}")
    seg = segment_ids.to(b.valid.device)
    if seg.dtype not in (torch.int32, torch.int64):  # segment() gives int32; gather and scatter take either
        seg = seg.long()
    # count_nonzero, not any(): a bool any() over (B, L) is about 3x slower on CPU
    if seg.numel() and (int(seg.min()) < -1 or int(torch.count_nonzero((seg >= 0) != b.valid))):
        if bool((b.valid & (seg < 0)).any()):
            raise ValueError("segment_ids must be >= 0 on every valid token (-1 only outside the mask)")
        raise ValueError("segment_ids must be -1 outside the response mask")
    return seg


def _cfg_get(config: Any, key: str, default: Any) -> Any:
    """``config.<key>`` for a DictConfig / AlgoConfig / dict / None, with a default."""
    if config is None:
        return default
    getter = getattr(config, "get", None)
    value = getter(key, default) if callable(getter) else getattr(config, key, default)
    return default if value is None else value


def _adv_metrics(metrics: dict, adv: torch.Tensor, m: torch.Tensor) -> None:
    metrics["adv/mean"], metrics["adv/std"] = masked_mean_std(adv, m, zero_off_mask=True)  # adv is 0 off the mask


def _steps_per_response(seg: torch.Tensor) -> torch.Tensor:
    """(B,) number of steps: largest step id + 1 (0 for an empty response)."""
    return seg.amax(-1).clamp(min=-1) + 1 if seg.shape[-1] else seg.new_zeros(seg.shape[0])


# --------------------------------------------------------------------------------------------------------------------
# PRPO and PRM-Avg
# --------------------------------------------------------------------------------------------------------------------


@register_adv_est("prpo")
def compute_prpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    config: Any = None,
    *,
    prm_scores: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    metrics: dict | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PRPO (arXiv 2601.07182), ALGORITHMS.md "PRPO": fixed-prior normalised PRM score plus the outcome shift.

        z_{i,t} = (p_{i,t} - mu) / sigma                              (normalization = fixed)
        z_{i,t} = (p_{i,t} - mean_g p) / (std_g p + eps)              (relative: token-weighted mean and unbiased
                                                                       std over the group's valid tokens; std 1 for a
                                                                       single valid token)
        beta_i  = R_i - mean_G R        (beta_norm = none)   or   (R_i - mean_G R) / (std_G R + eps)   (std)
        A_{i,t} = (z_{i,t} + beta_i) m_{i,t}     (outcome_shift)   or   z_{i,t} m_{i,t}   (process-only ablation)

    Options: ``algorithm.prpo`` (``PRPOConfig``). The PRM scores are already per token (every token carries its
    segment's probability); the segmentation options are used by the trainer.

    Args:
        token_level_rewards: ``(B, L)``; R_i is the row sum. response_mask: ``(B, L)`` 0/1. index: ``(B,)`` uids.
        config: verl's ``algorithm`` node.
        prm_scores: ``(B, L)`` p_{i,t} in [0, 1] on valid tokens (required).
        segment_ids: ``(B, L)`` int32 or int64, -1 outside the mask (optional, for the segment metrics).
        metrics: dict receiving ``prpo/segments_per_response/{mean,min,max}``, ``prpo/segment_length/mean`` (with
            ``segment_ids``), ``prpo/prm_score/{mean,std}``, ``prpo/abs_beta/mean``, ``prpo/z/mean``, ``adv/*``.

    Returns:
        advantages ``(B, L)`` float32 (0 outside the mask) and returns (the same tensor).
    """
    cfg = from_algorithm_config(config, "prpo")
    b = _batch("prpo", token_level_rewards, response_mask, index)
    p = _checked(b, "prm_scores", prm_scores, _PRM_HINT, within=(0.0, 1.0))
    gid = b.gid

    a_out, beta = outcome_advantage(b.R[:, None], b.valid, None, eps=cfg.eps, groups=(gid, b.num_groups))
    if cfg.beta_norm == "std":
        beta = a_out
    if cfg.normalization == "fixed":
        z = (p - cfg.mu).div_(cfg.sigma)
    else:
        m = b.m
        n_tok = group_sum(m.sum(-1), gid, b.num_groups)
        mean_p = group_sum((p * m).sum(-1), gid, b.num_groups) / n_tok.clamp(min=1.0)
        dev = (p - mean_p[gid, None]) * m
        var_p = group_sum((dev**2).sum(-1), gid, b.num_groups) / (n_tok - 1.0).clamp(min=1.0)
        std_p = torch.where(n_tok >= 2, var_p.sqrt(), 1.0)
        z = dev.div_(std_p[gid, None] + cfg.eps)
    if metrics is not None:
        p_mean, p_std = masked_mean_std(p, b.m)
        # fixed: z is p shifted and scaled, so is its mean; relative: z is (p - mean) m, 0 off the mask
        z_mean = ((p_mean - cfg.mu) / cfg.sigma if cfg.normalization == "fixed"
                  else masked_mean(z, b.m, zero_off_mask=True))
    adv = (z.add_(beta[:, None]) if cfg.outcome_shift else z).mul_(b.valid)  # A = (z + beta) m, in z's buffer

    if metrics is not None:
        if segment_ids is not None:
            counts = _steps_per_response(_step_ids(b, segment_ids)).double()
            nonempty = counts[counts > 0]
            for stat in ("mean", "min", "max"):
                metrics[f"prpo/segments_per_response/{stat}"] = float(getattr(nonempty, stat)()) if len(nonempty) else 0.0
            n_valid = float(count_valid(b.m))
            metrics["prpo/segment_length/mean"] = n_valid / float(counts.sum()) if counts.sum() else 0.0
        metrics["prpo/prm_score/mean"], metrics["prpo/prm_score/std"] = p_mean, p_std
        metrics["prpo/abs_beta/mean"] = float(beta.abs().double().mean()) if beta.numel() else 0.0
        metrics["prpo/z/mean"] = z_mean
        _adv_metrics(metrics, adv, b.m)
    return adv, adv


@register_adv_est("prm_avg")
def compute_prm_avg_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    config: Any = None,
    *,
    prm_scores: torch.Tensor | None = None,
    metrics: dict | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PRM-Avg baseline (PRPO paper, ALGORITHMS.md "Baselines"): the mean PRM score is added to the outcome, then GRPO.

        pbar_i  = sum_t p_{i,t} m_{i,t} / sum_t m_{i,t}    (token-weighted; an empty response uses mu, logged)
        R'_i    = R_i + pbar_i
        A_{i,t} = (R'_i - mean_G R') / (std_G R' + eps) m_{i,t}   (R'_i - mean_G R' if norm_adv_by_std_in_grpo=False)

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
    b = _batch("prm_avg", token_level_rewards, response_mask, index)
    p = _checked(b, "prm_scores", prm_scores, _PRM_HINT, within=(0.0, 1.0))
    m = b.m

    n_tok = m.sum(-1)
    empty = n_tok == 0
    n_empty = int(empty.sum())
    if n_empty:
        logger.warning("prm_avg: %d empty response(s) have no PRM score; using mu=%.4g as their mean", n_empty, cfg.mu)
    pbar = torch.where(empty, cfg.mu, (p * m).sum(-1) / n_tok.clamp(min=1.0))
    R_prime = b.R + pbar
    mean, std, _ = group_mean_std(R_prime, b.gid, b.num_groups)
    score = R_prime - mean[b.gid]
    if norm_by_std:
        score = score / (std[b.gid] + cfg.eps)
    adv = score[:, None] * m

    if metrics is not None:
        metrics["prm_avg/prm_mean/mean"] = float(pbar[~empty].double().mean()) if n_empty < len(pbar) else 0.0
        metrics["prm_avg/empty_responses"] = float(n_empty)
        _adv_metrics(metrics, adv, b.m)
    return adv, adv


# --------------------------------------------------------------------------------------------------------------------
# PRL
# --------------------------------------------------------------------------------------------------------------------


def _log_ratio(b: _Batch, old_log_probs, ref_log_prob) -> torch.Tensor:
    """d_{i,t} = log pi_old - log pi_ref, (B, L) float32, 0 outside the mask."""
    old = _checked(b, "old_log_probs", old_log_probs, _REF_HINT)
    ref = _checked(b, "ref_log_prob", ref_log_prob, _REF_HINT)
    return (old - ref).mul_(b.m)


def _kl_to_go_of_step(D: torch.Tensor, d_last: torch.Tensor, kl_scope: str) -> torch.Tensor:
    """(B, S) KL still to come from step l, from the step sums D_l and the d of each step's last valid token.

        whole_step: sum_{l' >= l} D_l'    after_step: sum_{l' > l} D_l'    step_end: d_{e_l} + sum_{l' > l} D_l'
    """
    whole = D.flip(-1).cumsum(-1).flip(-1)
    return {"whole_step": whole, "after_step": whole - D, "step_end": whole - D + d_last}[kl_scope]


def _blocks(x: torch.Tensor, step_len: int) -> torch.Tensor:
    """(B, L) -> (B, S, step_len), right-padded with 0 to whole blocks: a view, a copy only when L % step_len != 0."""
    pad = -x.shape[1] % step_len
    return (torch.nn.functional.pad(x, (0, pad)) if pad else x).view(x.shape[0], -1, step_len)


def _kl_to_go_fixed(d: torch.Tensor, m: torch.Tensor, step_len: int, kl_scope: str) -> torch.Tensor:
    """Per-token KL to go for ``fixed`` steps: step l is the block [l * s, (l + 1) * s) of a (B, S, s) view.
    Values off the mask are arbitrary (callers multiply by it)."""
    L = d.shape[1]
    d_blocks, m_blocks = _blocks(d, step_len), _blocks(m, step_len)
    pos1 = torch.arange(1, step_len + 1, device=d.device, dtype=d.dtype)
    last = (m_blocks * pos1).amax(-1).long() - 1  # the step's last valid token in its block, -1 for none
    d_last = d_blocks.gather(2, last.clamp(min=0)[..., None]).squeeze(-1) * (last >= 0)
    per_step = _kl_to_go_of_step(d_blocks.sum(-1), d_last, kl_scope)
    return per_step.repeat_interleave(step_len, dim=1)[:, :L]


def _kl_to_go_from_ids(d: torch.Tensor, seg: torch.Tensor, kl_scope: str) -> torch.Tensor:
    """Per-token KL to go for arbitrary steps (non-decreasing ids, -1 off the mask): one scatter into (B, S) step
    tables and one gather back, with the ids shifted by one so that column 0 collects the tokens off the mask."""
    B, L = d.shape
    S = int(seg.max()) + 1 if seg.numel() else 0
    col = (seg + 1).long()  # one int64 index for the three index ops (each would widen an int32 index itself)
    D = d.new_zeros(B, S + 1).scatter_add(1, col, d)[:, 1:]
    pos = torch.arange(L, device=d.device).expand(B, L)
    last = torch.full((B, S + 1), -1, device=d.device).scatter_reduce(1, col, pos, reduce="amax")[:, 1:]
    d_last = d.gather(1, last.clamp(min=0)) * (last >= 0)
    per_step = _kl_to_go_of_step(D, d_last, kl_scope)
    return torch.cat([d.new_zeros(B, 1), per_step], dim=1).gather(1, col)


@register_adv_est("prl")
def compute_prl_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    config: Any = None,
    *,
    old_log_probs: torch.Tensor | None = None,
    ref_log_prob: torch.Tensor | None = None,
    segment_ids: torch.Tensor | None = None,
    metrics: dict | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PRL (arXiv 2601.10201), ALGORITHMS.md "PRL": outcome minus the KL to the reference policy still to come.

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
        segment_ids: ``(B, L)`` int32 or int64 step ids, non-decreasing along the response, -1 outside the mask (optional).
        metrics: dict receiving ``prl/process_term/{mean,std}`` (the -(1/eta) * S part over valid tokens),
            ``prl/steps_per_response/mean`` (outcome_first; steps with a valid token, over non-empty responses),
            ``adv/mean``, ``adv/std``.

    Returns:
        advantages ``(B, L)`` float32 (0 outside the mask) and returns (the same tensor).
    """
    cfg = from_algorithm_config(config, "prl")
    norm_by_std = bool(_cfg_get(config, "norm_adv_by_std_in_grpo", True))
    b = _batch("prl", token_level_rewards, response_mask, index)
    d = _log_ratio(b, old_log_probs, ref_log_prob)
    m = b.m
    n_steps = None

    if cfg.variant == "process_first":
        base = b.R
        kl_to_go = masked_suffix_sum(d, b.valid)
    else:
        base, _ = outcome_advantage(b.R[:, None], m, None, norm_by_std=norm_by_std, eps=cfg.eps,
                                    groups=(b.gid, b.num_groups))
        if segment_ids is not None:
            seg = _step_ids(b, segment_ids)
            kl_to_go = _kl_to_go_from_ids(d, seg, cfg.kl_scope)
            n_steps = _steps_per_response(seg)
        elif cfg.segmentation == "newline":
            raise ValueError("algorithm.prl.segmentation=newline needs `segment_ids` from the trainer (it decodes the "
                             f"response tokens); {_TRAINER_HINT}, or use algorithm.prl.segmentation=fixed")
        else:
            kl_to_go = _kl_to_go_fixed(d, m, cfg.step_len, cfg.kl_scope)
            if metrics is not None:  # steps holding a valid token
                n_steps = (_blocks(m, cfg.step_len).amax(-1) > 0).sum(-1)
    adv = torch.sub(base[:, None], kl_to_go, alpha=1.0 / cfg.eta).mul_(m)  # (base - kl_to_go / eta) * m

    if metrics is not None:
        kl_mean, kl_std = masked_mean_std(kl_to_go, m)  # the process term is -(1/eta) * kl_to_go
        metrics["prl/process_term/mean"], metrics["prl/process_term/std"] = -kl_mean / cfg.eta, kl_std / cfg.eta
        if n_steps is not None:
            steps = n_steps[b.valid.amax(-1)].double()  # amax: a bool any(dim) is ~4x slower on CPU
            metrics["prl/steps_per_response/mean"] = float(steps.mean()) if steps.numel() else 0.0
        _adv_metrics(metrics, adv, b.m)
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
    old_log_probs: torch.Tensor | None = None,
    ref_log_prob: torch.Tensor | None = None,
    metrics: dict | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SPRO (arXiv 2507.01551), ALGORITHMS.md "SPRO": outcome advantage plus the Masked Step Advantage.

        r_{i,t}   = beta_s * (log pi_old_{i,t} - log pi_ref_{i,t})         (detached)
        CPR_{i,t} = sum_{j <= t, valid} r_{i,j}
        MSA_{i,t} = CPR_{i,t} - mean_{k in G(i), m_{k,t} = 1} CPR_{k,t}     (0 where only one response is alive at t)
                    [ / (std_{k in G(i), m_{k,t} = 1} CPR_{k,t} + eps)      if msa_norm = std; unbiased std ]
        A_{i,t}   = (A_out_i + MSA_{i,t}) m_{i,t}
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
    b = _batch("spro", token_level_rewards, response_mask, index)
    d = _log_ratio(b, old_log_probs, ref_log_prob)
    m, gid = b.m, b.gid

    # in place on tensors of this call: each fresh (B, L) buffer costs more than its arithmetic on CPU
    cpr = d.mul_(cfg.beta_s).cumsum_(-1).mul_(m)  # d is 0 off the mask
    cpr_mean = masked_mean(cpr, m, zero_off_mask=True) if metrics is not None else 0.0
    _, _, mean, std = group_position_stats(cpr, m, gid, b.num_groups, with_std=cfg.msa_norm == "std")
    msa = cpr.sub_(mean[gid]).mul_(m)  # a lone response at t: the mean is its own CPR, so MSA is exactly 0
    if std is not None:
        msa.div_(std[gid] + cfg.eps)
    msa_stats = masked_mean_std(msa, m, zero_off_mask=True) if metrics is not None else (0.0, 0.0)
    a_out, _ = outcome_advantage(b.R[:, None], m, None, norm_by_std=norm_by_std, eps=cfg.eps,
                                 groups=(gid, b.num_groups))
    adv = msa.add_(a_out[:, None]).mul_(m)  # A = (MSA + A_out) m

    if metrics is not None:
        metrics["spro/msa/mean"], metrics["spro/msa/std"] = msa_stats
        metrics["spro/cpr/mean"] = cpr_mean
        _adv_metrics(metrics, adv, b.m)
    return adv, adv


# --------------------------------------------------------------------------------------------------------------------
# PURE
# --------------------------------------------------------------------------------------------------------------------


def _leave_one_out_sum(x: torch.Tensor, gid: torch.Tensor, num_groups: int) -> torch.Tensor:
    """sum_{k in G(i), k != i} x_k for every i, (B,)."""
    return group_sum(x, gid, num_groups)[gid] - x


@register_adv_est("pure")
def compute_pure_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    config: Any = None,
    *,
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
        prm_scores: ``(B, L)`` p in [0, 1] per token, each step's probability on its tokens as the trainer broadcasts
            it (required); p_{i,s} is read at the step's last valid token e_{i,s}.
        segment_ids: ``(B, L)`` int32 or int64 step ids, -1 outside the mask (required); non-decreasing along the
            response (a ``ValueError`` where a step's last valid token does not carry the step's id).
        metrics: dict receiving ``pure/soft_min_reward/mean`` (PR over non-empty responses), ``pure/baseline/mean``,
            ``pure/steps_per_response/{mean,min,max}``, ``pure/singleton_groups``, ``adv/mean``, ``adv/std``.

    Returns:
        advantages ``(B, L)`` float32 (0 outside the mask) and returns (the same tensor).
    """
    cfg = from_algorithm_config(config, "pure")
    b = _batch("pure", token_level_rewards, response_mask, index)
    p = _checked(b, "prm_scores", prm_scores, _PRM_HINT, within=(0.0, 1.0))
    seg = _step_ids(b, segment_ids, _PRM_HINT)
    valid, gid, G = b.valid, b.gid, b.num_groups
    B, L = valid.shape
    if L == 0:
        return b.m.clone(), b.m.clone()

    # steps as (B, S) tables: token count n_{i,s}, last valid token e_{i,s}, probability p_{i,s} (read at e_{i,s},
    # where the PRM reads it); column 0 of the flat (B, S + 1) table collects the tokens off the mask
    S = max(int(seg.max()) + 1, 1)
    flat = segment_table_index(seg, S + 1)
    n = torch.bincount(flat.view(-1), minlength=B * (S + 1)).view(B, S + 1)[:, 1:]
    # ids are non-decreasing along the response, so e_{i,s} is the (n_{i,0} + ... + n_{i,s})-th valid token: the
    # first position whose running count of valid tokens reaches that sum
    valid_count = valid.cumsum(-1, dtype=torch.int32)
    e = torch.searchsorted(valid_count, n.cumsum(-1).to(torch.int32))
    is_step = n > 0
    steps = torch.arange(S, device=valid.device)
    if bool(((seg.gather(1, e) != steps) & is_step).any()):
        raise ValueError("pure: segment_ids must be non-decreasing along each response (0, .., 0, 1, .., 1, ...)")
    last = torch.where(is_step, e, -1).amax(-1)  # the response's last valid token, -1 for an empty response
    e = torch.where(is_step, e, last.clamp(min=0)[:, None])  # a missing step points at the last token: harmless
    p_step = p.gather(1, e)
    num_steps = is_step.sum(-1)
    tokens = n.sum(-1).float()  # L_i, the response's valid tokens

    r = 2 * p_step - 1
    if cfg.weighting == "min_form":
        w = torch.softmax(torch.where(is_step, -r / cfg.temperature, float("-inf")), dim=-1).nan_to_num(0.0)
    else:
        w = is_step / num_steps.clamp(min=1)[:, None]
    q = w * r * is_step
    PR = q.sum(-1)

    others = group_sum(torch.ones_like(PR), gid, G)[gid] - 1
    if cfg.baseline == "token":
        others_tokens = _leave_one_out_sum(tokens, gid, G)
        b_i = torch.where(others_tokens > 0, _leave_one_out_sum(PR, gid, G) / others_tokens.clamp(min=1), 0.0)
        q_adj = q - b_i[:, None] * n
    else:
        pr_per_step = PR / num_steps.clamp(min=1)
        b_i = torch.where(others > 0, _leave_one_out_sum(pr_per_step, gid, G) / others.clamp(min=1), 0.0)
        q_adj = q - b_i[:, None] * is_step
    v = torch.where(others > 0, b.R - _leave_one_out_sum(b.R, gid, G) / others.clamp(min=1), 0.0)
    n_single = int((others == 0).sum())
    if n_single:
        logger.warning("pure: %d response(s) alone in their group: baseline b = 0 and verifiable reward v = 0",
                       n_single)

    # rewards at the step ends: q'_{i,s} at e_{i,s}, vr_coef * v_i at the last valid token (the end of the last step)
    last_step = torch.where(is_step, steps, -1).amax(-1)
    reward = (q_adj * is_step).scatter_add_(1, last_step.clamp(min=0)[:, None],
                                            (cfg.vr_coef * v * (last_step >= 0))[:, None])
    # return to go: a token of step s sees the rewards at e_{i,s'} for s' >= s (ids are non-decreasing along the
    # response), so A is constant within a step; per-step sums, then read at every token (0 off the mask)
    rtg = reward.flip(-1).cumsum(-1).flip(-1)
    adv = torch.cat([rtg.new_zeros(B, 1), rtg], dim=1).view(-1).index_select(0, flat.view(-1)).view(B, L)
    if cfg.mask_separator:
        adv.scatter_(1, e, 0.0)  # every step end e_{i,s}, the last valid token included
    if cfg.whiten:
        n_valid = tokens.sum().clamp(min=1)
        dev = adv.sub_(adv.sum() / n_valid).mul_(b.m)  # A - mean on valid tokens (adv is 0 off the mask)
        adv = dev.div_((torch.linalg.vector_norm(dev) ** 2 / n_valid).clamp(min=1e-8).sqrt())

    if metrics is not None:
        nonempty = num_steps > 0
        metrics["pure/soft_min_reward/mean"] = float(PR[nonempty].double().mean()) if bool(nonempty.any()) else 0.0
        metrics["pure/baseline/mean"] = float(b_i.double().mean()) if b_i.numel() else 0.0
        counts = num_steps[nonempty].double()
        for stat in ("mean", "min", "max"):
            metrics[f"pure/steps_per_response/{stat}"] = float(getattr(counts, stat)()) if counts.numel() else 0.0
        metrics["pure/singleton_groups"] = float(n_single)
        _adv_metrics(metrics, adv, b.m)
    return adv, adv
