"""The estimators' inputs, checked once per call, with errors that name the tensor (and say how to provide it).

Common rules of every estimator (docs/DESIGN.md, "Estimator contract"):

* R_i = sum_t token_level_rewards_{i,t} (as verl's GRPO); groups keyed by ``index`` (uid), never batch position.
* NaN/inf on valid positions of an input is a ``ValueError`` naming the tensor; an input that verl's stock
  ``compute_advantage`` does not pass raises a ``ValueError`` that says to use ``trainer.v1.trainer_mode=prpo_sync``.
* advantages are float32, zero outside the response mask, and ``returns`` is the same tensor (as verl's GRPO).
* metrics (if a dict is given) are Python floats: ``<method>/...`` plus ``adv/mean`` and ``adv/std`` over valid tokens.

Shapes: B responses, L response length, G groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from verl_prpo.ops import check_finite, group_ids, masked_mean_std, valid_mask

TRAINER_HINT = "verl's stock compute_advantage does not pass it: set trainer.v1.trainer_mode=prpo_sync"
PRM_HINT = " and enable the PRM (prm.enable=true)"
REF_HINT = " and enable the reference policy (actor_rollout_ref.actor.use_kl_loss=true with kl_loss_coef=0)"


@dataclass(frozen=True)
class Batch:
    """The inputs every estimator reads, checked.

    Attributes:
        name: the estimator (for error messages). R: ``(B,)`` float32 outcome per response.
        valid: ``(B, L)`` bool response mask. m: the same as float32 0/1. gid: ``(B,)`` long group numbers. G: groups.
    """

    name: str
    R: torch.Tensor
    valid: torch.Tensor
    m: torch.Tensor
    gid: torch.Tensor
    G: int


def read_batch(name: str, token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Any) -> Batch:
    """Check the inputs verl passes to every estimator and compute R_i = sum_t token_level_rewards_{i,t}."""
    if token_level_rewards.dim() != 2:
        raise ValueError(f"{name}: token_level_rewards must be (B, L), got shape {tuple(token_level_rewards.shape)}")
    if response_mask.shape != token_level_rewards.shape:
        raise ValueError(f"{name}: response_mask has shape {tuple(response_mask.shape)}, token_level_rewards "
                         f"{tuple(token_level_rewards.shape)}")
    rewards = token_level_rewards.detach().float()
    check_finite("token_level_rewards", rewards)  # every entry counts in R, the unmasked row sum (as verl)
    R = rewards.sum(-1)
    if not bool(torch.isfinite(R).all()):
        raise ValueError("token_level_rewards: the per-response sum R overflows to inf")
    valid = valid_mask(response_mask.to(rewards.device))
    gid, G = group_ids(index, expected_len=rewards.shape[0])
    return Batch(name, R, valid, valid.float(), gid.to(rewards.device), G)


def _missing(b: Batch, field: str, hint: str) -> ValueError:
    return ValueError(f"advantage estimator '{b.name}' needs `{field}` (B, L), but got None; {TRAINER_HINT}{hint}")


def required(b: Batch, field: str, x: torch.Tensor | None, hint: str,
             within: tuple[float, float] | None = None) -> torch.Tensor:
    """``x`` as float32 (B, L), 0 outside the mask: present, shaped like the mask, finite and inside ``within`` on
    valid tokens (values off the mask, NaN included, are ignored)."""
    if x is None:
        raise _missing(b, field, hint)
    if x.shape != b.valid.shape:
        raise ValueError(f"{field} has shape {tuple(x.shape)}, expected {tuple(b.valid.shape)} like response_mask")
    x = x.detach().to(device=b.valid.device, dtype=torch.float32)
    check_finite(field, x, b.valid)
    if within is not None:
        lo, hi = within
        outside = b.valid & ((x < lo) | (x > hi))
        if bool(outside.any()):
            raise ValueError(f"{field} must be probabilities in [{lo:g}, {hi:g}] on valid tokens; "
                             f"{int(outside.sum())} value(s) outside, e.g. {float(x[outside][0])}")
    return torch.where(b.valid, x, 0.0)  # where, not * m: NaN * 0 is NaN


def step_ids(b: Batch, segment_ids: torch.Tensor | None, hint: str = "") -> torch.Tensor:
    """The (B, L) long step ids, checked: present, shaped like the mask, >= 0 on valid tokens and -1 elsewhere."""
    if segment_ids is None:
        raise _missing(b, "segment_ids", hint)
    if segment_ids.shape != b.valid.shape:
        raise ValueError(f"segment_ids has shape {tuple(segment_ids.shape)}, expected {tuple(b.valid.shape)}")
    ids = segment_ids.to(b.valid.device).long()
    if bool((b.valid & (ids < 0)).any()):
        raise ValueError("segment_ids must be >= 0 on every valid token (-1 only outside the mask)")
    if bool((~b.valid & (ids != -1)).any()):
        raise ValueError("segment_ids must be -1 outside the response mask")
    return ids


def log_ratio(b: Batch, old_log_probs: torch.Tensor | None, ref_log_prob: torch.Tensor | None) -> torch.Tensor:
    """d_{i,t} = log pi_old - log pi_ref, (B, L) float32, 0 outside the mask."""
    old = required(b, "old_log_probs", old_log_probs, REF_HINT)
    ref = required(b, "ref_log_prob", ref_log_prob, REF_HINT)
    return old - ref


def norm_adv_by_std(config: Any) -> bool:
    """``algorithm.norm_adv_by_std_in_grpo`` (default True) of a DictConfig / AlgoConfig / dict / None."""
    getter = getattr(config, "get", None)
    value = getter("norm_adv_by_std_in_grpo", True) if callable(getter) else getattr(
        config, "norm_adv_by_std_in_grpo", True)
    return True if value is None else bool(value)


def steps_per_response(ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B,) number of distinct step ids on the valid tokens of each response (0 for an empty response)."""
    B = ids.shape[0]
    S = int(ids.max()) + 1 if ids.numel() else 0
    present = torch.zeros(B, S + 1, dtype=torch.bool, device=ids.device).scatter_(1, ids + 1, valid)
    return present[:, 1:].sum(-1)


def adv_metrics(adv: torch.Tensor, b: Batch) -> dict[str, float]:
    """``adv/mean`` and ``adv/std`` over the valid tokens."""
    mean, std = masked_mean_std(adv, b.m)
    return {"adv/mean": mean, "adv/std": std}
