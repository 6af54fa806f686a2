"""PRL, Process Reward Learning (arXiv 2601.10201): docs/ALGORITHMS.md, "PRL"."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from verl_prpo.config import PRLConfig
from verl_prpo.estimators.inputs import (
    TRAINER_HINT, adv_metrics, log_ratio, norm_adv_by_std, read_batch, step_ids, steps_per_response)
from verl_prpo.estimators.registry import register_estimator
from verl_prpo.ops import group_normalized, masked_mean_std, masked_suffix_sum


def kl_to_go(d: torch.Tensor, ids: torch.Tensor, kl_scope: str) -> torch.Tensor:
    """The KL still to come from the step of each token, ``(B, L)`` (0 off the mask).

        D_l = sum_{t in step l} d_t,   after_l = sum_{l' > l} D_l',   e_l = the step's last valid token
        whole_step: D_l + after_l      after_step: after_l      step_end: d_{e_l} + after_l

    Args:
        d: ``(B, L)`` float, 0 off the mask. ids: ``(B, L)`` long step ids, non-decreasing along the response, -1 off
            the mask. kl_scope: ``step_end``, ``after_step`` or ``whole_step``.
    """
    B, L = d.shape
    S = int(ids.max()) + 1 if ids.numel() else 0
    col = ids + 1  # per-step tables of S + 1 columns: column 0 collects the tokens off the mask
    D = d.new_zeros(B, S + 1).scatter_add(1, col, d)[:, 1:]
    pos = torch.arange(L, device=d.device).expand(B, L)
    last = torch.full((B, S + 1), -1, device=d.device).scatter_reduce(1, col, pos, reduce="amax")[:, 1:]
    d_last = d.gather(1, last.clamp(min=0)) * (last >= 0)
    after = D.flip(-1).cumsum(-1).flip(-1) - D
    per_step = {"whole_step": after + D, "after_step": after, "step_end": after + d_last}[kl_scope]
    return torch.cat([d.new_zeros(B, 1), per_step], dim=1).gather(1, col)


def fixed_step_ids(valid: torch.Tensor, step_len: int) -> torch.Tensor:
    """Step l = positions [l * step_len, (l + 1) * step_len): ``t // step_len`` on valid tokens, -1 elsewhere."""
    pos = torch.arange(valid.shape[1], device=valid.device)
    return torch.where(valid, pos // step_len, -1)


@register_estimator("prl", PRLConfig, needs_ref=True, needs_segments=True)
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
    """PRL: the outcome minus the KL to the reference policy still to come.

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
        segment_ids: ``(B, L)`` int32 or int64 step ids, non-decreasing along the response, -1 outside the mask
            (optional).
        metrics: dict receiving ``prl/process_term/{mean,std}`` (the -(1/eta) * S part over valid tokens),
            ``prl/steps_per_response/mean`` (outcome_first; steps with a valid token, over non-empty responses),
            ``adv/mean``, ``adv/std``.

    Returns:
        advantages ``(B, L)`` float32 (0 outside the mask) and returns (the same tensor).
    """
    cfg = PRLConfig.from_algorithm(config)
    b = read_batch("prl", token_level_rewards, response_mask, index)
    d = log_ratio(b, old_log_probs, ref_log_prob)

    if cfg.variant == "process_first":
        base = b.R
        steps = None
        S = masked_suffix_sum(d, b.valid)
    else:
        base, _ = group_normalized(b.R, b.gid, b.G, norm_by_std=norm_adv_by_std(config), eps=cfg.eps)
        if segment_ids is not None:
            steps = step_ids(b, segment_ids)
        elif cfg.segmentation == "newline":
            raise ValueError("algorithm.prl.segmentation=newline needs `segment_ids` from the trainer (it decodes the "
                             f"response tokens); {TRAINER_HINT}, or use algorithm.prl.segmentation=fixed")
        else:
            steps = fixed_step_ids(b.valid, cfg.step_len)
        S = kl_to_go(d, steps, cfg.kl_scope)
    process_term = -S / cfg.eta
    adv = (base[:, None] + process_term) * b.m

    if metrics is not None:
        metrics["prl/process_term/mean"], metrics["prl/process_term/std"] = masked_mean_std(process_term, b.m)
        if steps is not None:
            counts = steps_per_response(steps, b.valid)[b.valid.any(-1)].double()
            metrics["prl/steps_per_response/mean"] = float(counts.mean()) if counts.numel() else 0.0
        metrics.update(adv_metrics(adv, b))
    return adv, adv
