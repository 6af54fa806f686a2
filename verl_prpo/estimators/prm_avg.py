"""PRM-Avg, the PRPO paper's baseline: the mean PRM score added to the outcome, then GRPO (docs/ALGORITHMS.md)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from verl_prpo.config import PRPOConfig
from verl_prpo.estimators.inputs import PRM_HINT, adv_metrics, norm_adv_by_std, read_batch, required
from verl_prpo.estimators.registry import register_estimator
from verl_prpo.ops import group_normalized

logger = logging.getLogger(__name__)


@register_estimator("prm_avg", PRPOConfig, needs_prm=True, needs_segments=True)
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
    """PRM-Avg: GRPO on the outcome plus the response's mean PRM score.

        pbar_i  = sum_t p_{i,t} m_{i,t} / sum_t m_{i,t}    (token-weighted; an empty response uses mu, logged)
        R'_i    = R_i + pbar_i
        A_{i,t} = (R'_i - mean_G R') / (std_G R' + eps) m_{i,t}   (R'_i - mean_G R' if norm_adv_by_std_in_grpo=False)

    ``mu`` and ``eps`` come from ``algorithm.prpo`` (as does the segmentation the PRM scores);
    ``norm_adv_by_std_in_grpo`` from ``algorithm`` (default True).

    Args:
        token_level_rewards: ``(B, L)``. response_mask: ``(B, L)``. index: ``(B,)`` uids. config: ``algorithm`` node.
        prm_scores: ``(B, L)`` in [0, 1] on valid tokens (required).
        metrics: dict receiving ``prm_avg/prm_mean/mean`` (over non-empty responses), ``prm_avg/empty_responses``,
            ``adv/mean``, ``adv/std``.

    Returns:
        advantages ``(B, L)`` float32 (0 outside the mask) and returns (the same tensor).
    """
    cfg = PRPOConfig.from_algorithm(config)
    b = read_batch("prm_avg", token_level_rewards, response_mask, index)
    p = required(b, "prm_scores", prm_scores, PRM_HINT, within=(0.0, 1.0))

    n_tokens = b.m.sum(-1)
    empty = n_tokens == 0
    if bool(empty.any()):
        logger.warning("prm_avg: %d empty response(s) have no PRM score; using mu=%.4g as their mean",
                       int(empty.sum()), cfg.mu)
    pbar = torch.where(empty, cfg.mu, (p * b.m).sum(-1) / n_tokens.clamp(min=1.0))
    A, _ = group_normalized(b.R + pbar, b.gid, b.G, norm_by_std=norm_adv_by_std(config), eps=cfg.eps)
    adv = A[:, None] * b.m

    if metrics is not None:
        metrics["prm_avg/prm_mean/mean"] = float(pbar[~empty].double().mean()) if not bool(empty.all()) else 0.0
        metrics["prm_avg/empty_responses"] = float(empty.sum())
        metrics.update(adv_metrics(adv, b))
    return adv, adv
