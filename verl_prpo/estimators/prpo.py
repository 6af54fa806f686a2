"""PRPO, Process Relative Policy Optimization (arXiv 2601.07182): docs/ALGORITHMS.md, "PRPO"."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from verl_prpo.config import PRPOConfig
from verl_prpo.estimators.inputs import PRM_HINT, adv_metrics, read_batch, required, step_ids, steps_per_response
from verl_prpo.estimators.registry import register_estimator
from verl_prpo.ops import group_normalized, group_token_mean_std, masked_mean, masked_mean_std


@register_estimator("prpo", PRPOConfig, needs_prm=True, needs_segments=True)
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
    """PRPO: fixed-prior normalised PRM score plus the outcome shift.

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
    cfg = PRPOConfig.from_algorithm(config)
    b = read_batch("prpo", token_level_rewards, response_mask, index)
    p = required(b, "prm_scores", prm_scores, PRM_HINT, within=(0.0, 1.0))

    if cfg.normalization == "fixed":
        z = (p - cfg.mu) / cfg.sigma
    else:
        mean_p, std_p = group_token_mean_std(p, b.m, b.gid, b.G)
        z = (p - mean_p[b.gid, None]) / (std_p[b.gid, None] + cfg.eps)
    beta_std, beta = group_normalized(b.R, b.gid, b.G, eps=cfg.eps)
    if cfg.beta_norm == "std":
        beta = beta_std
    adv = (z + beta[:, None]) * b.m if cfg.outcome_shift else z * b.m

    if metrics is not None:
        if segment_ids is not None:
            counts = steps_per_response(step_ids(b, segment_ids), b.valid).double()
            nonempty = counts[counts > 0]
            for stat in ("mean", "min", "max"):
                value = float(getattr(nonempty, stat)()) if len(nonempty) else 0.0
                metrics[f"prpo/segments_per_response/{stat}"] = value
            metrics["prpo/segment_length/mean"] = float(b.m.sum()) / float(counts.sum()) if counts.sum() else 0.0
        metrics["prpo/prm_score/mean"], metrics["prpo/prm_score/std"] = masked_mean_std(p, b.m)
        metrics["prpo/abs_beta/mean"] = float(beta.abs().double().mean()) if beta.numel() else 0.0
        metrics["prpo/z/mean"] = masked_mean(z, b.m)
        metrics.update(adv_metrics(adv, b))
    return adv, adv
