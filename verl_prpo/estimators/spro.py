"""SPRO, Self-Guided Process Reward Optimization (arXiv 2507.01551): docs/ALGORITHMS.md, "SPRO"."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from verl_prpo.config import SPROConfig
from verl_prpo.estimators.inputs import adv_metrics, log_ratio, norm_adv_by_std, read_batch
from verl_prpo.estimators.registry import register_estimator
from verl_prpo.ops import group_normalized, group_position_stats, masked_cumsum, masked_mean, masked_mean_std


@register_estimator("spro", SPROConfig, needs_ref=True)
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
    """SPRO: the outcome advantage plus the Masked Step Advantage.

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
    cfg = SPROConfig.from_algorithm(config)
    b = read_batch("spro", token_level_rewards, response_mask, index)
    r = cfg.beta_s * log_ratio(b, old_log_probs, ref_log_prob)

    cpr = masked_cumsum(r, b.valid)
    _, _, cpr_mean, cpr_std = group_position_stats(cpr, b.valid, b.gid, b.G, with_std=cfg.msa_norm == "std")
    msa = (cpr - cpr_mean[b.gid]) * b.m  # a lone response at t: the mean is its own CPR, so MSA is exactly 0
    if cfg.msa_norm == "std":
        msa = msa / (cpr_std[b.gid] + cfg.eps)
    a_out, _ = group_normalized(b.R, b.gid, b.G, norm_by_std=norm_adv_by_std(config), eps=cfg.eps)
    adv = (a_out[:, None] + msa) * b.m

    if metrics is not None:
        metrics["spro/msa/mean"], metrics["spro/msa/std"] = masked_mean_std(msa, b.m)
        metrics["spro/cpr/mean"] = masked_mean(cpr, b.m)
        metrics.update(adv_metrics(adv, b))
    return adv, adv
