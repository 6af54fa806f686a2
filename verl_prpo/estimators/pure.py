"""PURE, min-form credit assignment of PRM step rewards (arXiv 2504.15275): docs/ALGORITHMS.md, "PURE"."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from verl_prpo.config import PUREConfig
from verl_prpo.estimators.inputs import PRM_HINT, adv_metrics, read_batch, required, step_ids
from verl_prpo.estimators.registry import register_estimator
from verl_prpo.ops import group_sum

logger = logging.getLogger(__name__)


@register_estimator("pure", PUREConfig, needs_prm=True, needs_segments=True)
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
    """PURE: min-form credit assignment of PRM step rewards.

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
            response (a ``ValueError`` otherwise). An id that no valid token carries is no step.
        metrics: dict receiving ``pure/soft_min_reward/mean`` (PR over non-empty responses), ``pure/baseline/mean``,
            ``pure/steps_per_response/{mean,min,max}``, ``pure/singleton_groups``, ``adv/mean``, ``adv/std``.

    Returns:
        advantages ``(B, L)`` float32 (0 outside the mask) and returns (the same tensor).
    """
    cfg = PUREConfig.from_algorithm(config)
    b = read_batch("pure", token_level_rewards, response_mask, index)
    p = required(b, "prm_scores", prm_scores, PRM_HINT, within=(0.0, 1.0))
    ids = step_ids(b, segment_ids, PRM_HINT)
    if bool((b.valid & (ids != ids.cummax(-1).values)).any()):
        raise ValueError("pure: segment_ids must be non-decreasing along each response (0, .., 0, 1, .., 1, ...)")
    B, L = b.valid.shape
    if L == 0:
        return b.m.clone(), b.m.clone()

    # per-step tables (B, S): n_{i,s} valid tokens, e_{i,s} last valid token (-1: no such step), p_{i,s} read at e
    S = max(int(ids.max()) + 1, 1)
    col = ids + 1  # column 0 collects the tokens off the mask
    pos = torch.arange(L, device=ids.device).expand(B, L)
    n = b.m.new_zeros(B, S + 1).scatter_add(1, col, b.m)[:, 1:]
    e = torch.full((B, S + 1), -1, device=ids.device).scatter_reduce(1, col, pos, reduce="amax")[:, 1:]
    is_step = n > 0
    num_steps = is_step.sum(-1)
    L_i = n.sum(-1)

    r = 2 * p.gather(1, e.clamp(min=0)) - 1
    if cfg.weighting == "min_form":
        w = torch.softmax(torch.where(is_step, -r / cfg.temperature, float("-inf")), dim=-1).nan_to_num(0.0)
    else:
        w = is_step / num_steps.clamp(min=1)[:, None]
    q = w * r * is_step
    PR = q.sum(-1)

    others = group_sum(torch.ones_like(PR), b.gid, b.G)[b.gid] - 1  # |G(i)| - 1

    def leave_one_out_sum(x: torch.Tensor) -> torch.Tensor:  # sum_{k in G(i), k != i} x_k
        return group_sum(x, b.gid, b.G)[b.gid] - x

    if cfg.baseline == "token":
        b_i = torch.where(leave_one_out_sum(L_i) > 0, leave_one_out_sum(PR) / leave_one_out_sum(L_i).clamp(min=1), 0.0)
        q_adj = q - b_i[:, None] * n
    else:
        b_i = torch.where(others > 0, leave_one_out_sum(PR / num_steps.clamp(min=1)) / others.clamp(min=1), 0.0)
        q_adj = q - b_i[:, None] * is_step
    v = torch.where(others > 0, b.R - leave_one_out_sum(b.R) / others.clamp(min=1), 0.0)

    step_end = b.valid & (e.gather(1, ids.clamp(min=0)) == pos)  # t = e_{i, s(t)}
    last = pos == e.amax(-1, keepdim=True)  # the response's last valid token (none for an empty response)
    reward = torch.where(step_end, q_adj.gather(1, ids.clamp(min=0)), 0.0) + cfg.vr_coef * v[:, None] * last
    adv = reward.flip(-1).cumsum(-1).flip(-1) * b.m
    if cfg.mask_separator:
        adv = adv.masked_fill(step_end, 0.0)
    if cfg.whiten:
        n_valid = b.m.sum().clamp(min=1)
        mean = adv.sum() / n_valid  # adv is 0 off the mask
        var = (((adv - mean) * b.m) ** 2).sum() / n_valid
        adv = (adv - mean) * b.m / var.clamp(min=1e-8).sqrt()

    n_single = int((others == 0).sum())
    if n_single:
        logger.warning("pure: %d response(s) alone in their group: baseline b = 0 and verifiable reward v = 0",
                       n_single)
    if metrics is not None:
        nonempty = num_steps > 0
        counts = num_steps[nonempty].double()
        metrics["pure/soft_min_reward/mean"] = float(PR[nonempty].double().mean()) if counts.numel() else 0.0
        metrics["pure/baseline/mean"] = float(b_i.double().mean()) if b_i.numel() else 0.0
        for stat in ("mean", "min", "max"):
            metrics[f"pure/steps_per_response/{stat}"] = float(getattr(counts, stat)()) if counts.numel() else 0.0
        metrics["pure/singleton_groups"] = float(n_single)
        metrics.update(adv_metrics(adv, b))
    return adv, adv
