"""Tensor pieces the estimators share: group numbering by uid, GRPO group statistics, masked sums and checks.

Plain vectorised torch (``index_add_``, ``cumsum``, ``where``): no Python loop over groups, responses or tokens. Groups
are keyed by ``uid``, never by batch position, and numbered 0..G-1 by ``group_ids``. Needs only torch and numpy;
not verl.

Shapes: B = responses in the batch, L = response length (padded), G = number of groups (distinct uids).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "group_ids",
    "group_sum",
    "group_mean_std",
    "group_normalized",
    "outcome_advantage",
    "group_token_mean_std",
    "masked_suffix_sum",
    "masked_cumsum",
    "group_position_stats",
    "check_finite",
    "valid_mask",
    "masked_mean",
    "masked_mean_std",
]


def valid_mask(response_mask: torch.Tensor) -> torch.Tensor:
    """The response mask (int, bool or float 0/1) as a bool tensor of the same shape."""
    return response_mask if response_mask.dtype == torch.bool else response_mask.bool()  # nonzero -> True


def check_finite(name: str, tensor: torch.Tensor, mask: torch.Tensor | None = None) -> bool:
    """Raise ``ValueError`` naming ``name`` if ``tensor`` holds NaN/inf where ``mask`` is true (everywhere if None).

    Args:
        name: the tensor's name in the error message.
        tensor: any shape.
        mask: same shape as ``tensor`` (or broadcastable), 0/1 or bool; None checks every element.

    Returns:
        True if every element is finite; False if some NaN/inf sit outside the mask only (the caller must then keep
        them out of its arithmetic: ``NaN * 0`` is NaN).
    """
    if not tensor.is_floating_point():
        return True  # integer tensors cannot hold NaN/inf
    finite = torch.isfinite(tensor)
    bad = ~finite if mask is None else ~finite & valid_mask(mask)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        where = " on valid positions" if mask is not None else ""
        raise ValueError(f"{name} has {int(bad.sum())} NaN/inf value(s){where} (first at index {first})")
    return bool(finite.all())


def _is_missing(u: Any) -> bool:
    return u is None or (isinstance(u, (float, np.floating)) and np.isnan(u))


def group_ids(index: Any, expected_len: int | None = None) -> tuple[torch.LongTensor, int]:
    """Number the groups of a batch by uid.

    Args:
        index: ``(B,)`` uids (verl's ``non_tensor_batch["uid"]``: object array of strings; any hashable values, a list
            or an integer tensor also work), in any batch order.
        expected_len: if given, ``B`` must equal it.

    Returns:
        gid: ``(B,)`` long, group number of each response, numbered in order of first appearance.
        num_groups: G.

    Raises:
        ValueError: ``index`` is None, holds a None/NaN uid, or has the wrong length.
    """
    if index is None:
        raise ValueError(
            "the advantage estimator needs the group ids (`uid`, passed as `index`), got None: "
            "the batch has no `uid` field"
        )
    if isinstance(index, torch.Tensor):
        index = index.detach().cpu().numpy()
    arr = np.asarray(index, dtype=object).reshape(-1)
    if expected_len is not None and arr.shape[0] != expected_len:
        raise ValueError(f"index (uid) has length {arr.shape[0]}, but the batch has {expected_len} responses")
    missing = np.array([_is_missing(u) for u in arr], dtype=bool)
    if missing.any():
        raise ValueError(f"index (uid) holds {int(missing.sum())} None/NaN value(s), e.g. at position "
                         f"{int(np.flatnonzero(missing)[0])}")
    seen: dict[Any, int] = {}
    codes = [seen.setdefault(u, len(seen)) for u in arr.tolist()]
    return torch.tensor(codes, dtype=torch.long), len(seen)


def group_sum(values: torch.Tensor, gid: torch.Tensor, num_groups: int) -> torch.Tensor:
    """sum_{i in g} values_i for every group g: ``(B, ...)`` in, ``(G, ...)`` out."""
    return values.new_zeros((num_groups, *values.shape[1:])).index_add_(0, gid.to(values.device), values)


def group_mean_std(
    values: torch.Tensor, gid: torch.Tensor, num_groups: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group mean and unbiased std exactly as verl's GRPO estimator defines them.

        mean_g = (1/n_g) sum_{i in g} v_i,   std_g = sqrt( sum_{i in g} (v_i - mean_g)^2 / (n_g - 1) ),
        a group of one: mean 0 and std 1 (so a normalised advantage keeps the raw value, as in verl).

    Args:
        values: ``(N,)`` float. gid: ``(N,)`` long group numbers in [0, G). num_groups: G.

    Returns:
        mean ``(G,)``, std ``(G,)``, count ``(G,)`` (float). A group with no member gets mean 0, std 1.
    """
    gid = gid.to(values.device)
    count = group_sum(torch.ones_like(values), gid, num_groups)
    mean = group_sum(values, gid, num_groups) / count.clamp(min=1.0)
    var = group_sum((values - mean[gid]) ** 2, gid, num_groups) / (count - 1.0).clamp(min=1.0)  # two-pass variance
    single = count <= 1.0
    return torch.where(single, 0.0, mean), torch.where(single, 1.0, var.sqrt()), count


def group_normalized(values: torch.Tensor, gid: torch.Tensor, num_groups: int, *, norm_by_std: bool = True,
                     eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO's normalisation of one value per response within its group (ALGORITHMS.md, "GRPO outcome advantage").

        centred_i    = v_i - mean_G v
        normalised_i = centred_i / (std_G v + eps)          (centred_i if not ``norm_by_std``)
    with verl's conventions (unbiased std; a group of one has mean 0 and std 1).

    Args:
        values: ``(B,)`` float. gid: ``(B,)`` long group numbers. num_groups: G.

    Returns:
        normalised ``(B,)`` and centred ``(B,)``.
    """
    gid = gid.to(values.device)
    mean, std, _ = group_mean_std(values, gid, num_groups)
    centred = values - mean[gid]
    return (centred / (std[gid] + eps) if norm_by_std else centred), centred


def outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    norm_by_std: bool = True,
    eps: float = 1e-6,
    groups: tuple[torch.Tensor, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO outcome advantage per response (ALGORITHMS.md, "GRPO outcome advantage").

        R_i     = sum_t token_level_rewards_{i,t}            (unmasked, as verl's GRPO)
        beta_i  = R_i - mean_G R
        A_out_i = beta_i / (std_G R + eps)                    (beta_i if not ``norm_by_std``)
    with verl's convention for a group of one (mean 0, std 1, hence beta = A_out = R).

    Args:
        token_level_rewards: ``(B, L)``. response_mask: ``(B, L)``; only its batch size is used.
        index: ``(B,)`` uids. norm_by_std: divide by the group std (verl ``norm_adv_by_std_in_grpo``).
        eps: added to the std. groups: ``(gid, G)`` from ``group_ids`` to avoid recomputing it.

    Returns:
        A_out ``(B,)`` float32 and beta ``(B,)`` float32.
    """
    gid, num_groups = groups if groups is not None else group_ids(index, expected_len=token_level_rewards.shape[0])
    R = token_level_rewards.float().sum(dim=-1)
    return group_normalized(R, gid, num_groups, norm_by_std=norm_by_std, eps=eps)


def group_token_mean_std(x: torch.Tensor, mask: torch.Tensor, gid: torch.Tensor, num_groups: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-weighted mean and unbiased std of ``x`` over the valid tokens of each group.

        n_g    = sum_{i in g, t} m_{i,t},   mean_g = sum_{i in g, t} x_{i,t} m_{i,t} / n_g
        std_g  = sqrt( sum_{i in g, t} (x_{i,t} - mean_g)^2 m_{i,t} / (n_g - 1) ),   1 where n_g < 2

    Args:
        x: ``(B, L)`` float, finite. mask: ``(B, L)`` 0/1 or bool. gid: ``(B,)`` long. num_groups: G.

    Returns:
        mean ``(G,)`` (0 for a group without valid tokens) and std ``(G,)``.
    """
    m = valid_mask(mask).to(x.dtype)
    n = group_sum(m.sum(-1), gid, num_groups)
    mean = group_sum((x * m).sum(-1), gid, num_groups) / n.clamp(min=1.0)
    sq_dev = ((x - mean[gid, None]) ** 2 * m).sum(-1)
    std = torch.where(n >= 2, (group_sum(sq_dev, gid, num_groups) / (n - 1.0).clamp(min=1.0)).sqrt(), 1.0)
    return mean, std


def masked_suffix_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """S_{i,t} = sum_{j >= t} x_{i,j} m_{i,j}, ``(B, L)`` in and out (0 past the last valid token).

    A flipped cumsum, not ``total - prefix``: the sums at the last tokens carry no cancellation error.
    """
    # where, not multiply: a NaN outside the mask must not leak (NaN * 0 = NaN)
    return torch.where(valid_mask(mask), x, 0.0).flip(-1).cumsum(-1).flip(-1)


def masked_cumsum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """C_{i,t} = sum_{j <= t} x_{i,j} m_{i,j}; ``(B, L)`` in, ``(B, L)`` out."""
    return torch.where(valid_mask(mask), x, 0.0).cumsum(-1)


def group_position_stats(
    x: torch.Tensor, mask: torch.Tensor, gid: torch.Tensor, num_groups: int, *, with_std: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-group, per-position statistics over the responses alive at t (``mask[k, t]`` true).

        sum_{g,t} = sum_{k in g, alive at t} x_{k,t},   n_{g,t} = #{k in g alive at t},   mean = sum / n
        std_{g,t} = sqrt( sum_{k in g, alive} (x_{k,t} - mean_{g,t})^2 / (n_{g,t} - 1) )            (unbiased)

    Args:
        x: ``(B, L)`` float, finite. mask: ``(B, L)`` 0/1 or bool. gid: ``(B,)`` long group numbers. num_groups: G.
        with_std: compute the std (None is returned otherwise).

    Returns:
        sum, count, mean, std, each ``(G, L)`` float. Where n = 0 the mean is 0; where n < 2 the std is 0 (undefined;
        callers divide ``0 / (0 + eps)`` there).
    """
    m = valid_mask(mask).to(x.dtype)
    total, count = group_sum(x * m, gid, num_groups), group_sum(m, gid, num_groups)
    mean = total / count.clamp(min=1.0)
    std = None
    if with_std:
        var = group_sum((x - mean[gid]) ** 2 * m, gid, num_groups) / (count - 1.0).clamp(min=1.0)
        std = torch.where(count >= 2.0, var.sqrt(), 0.0)
    return total, count, mean, std


def _float_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``mask`` (0/1, bool or None = all) in ``x``'s dtype."""
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"masked statistics take float32 or float64 values, got {x.dtype}")
    if mask is None:
        return torch.ones_like(x)
    return mask if mask.dtype == x.dtype else valid_mask(mask).to(x.dtype)


def _total(x: torch.Tensor) -> float:
    """sum of ``x``: row sums in its dtype, their total in float64 (a float64 ``sum`` of a float32 (1024, 4096) tensor
    takes 17 ms on CPU, this 2 ms; bench_advantages.py, 5 calls per estimator)."""
    return float(x.sum(-1).double().sum())


def masked_mean(x: torch.Tensor, mask: torch.Tensor, *, zero_off_mask: bool = False) -> float:
    """Mean of ``x`` over ``mask`` as a Python float (0.0 when empty): the first pass of ``masked_mean_std``."""
    m = _float_mask(x, mask)
    n = _total(m)
    return _total(x if zero_off_mask else x * m) / n if n else 0.0


def masked_mean_std(x: torch.Tensor, mask: torch.Tensor | None = None, *, zero_off_mask: bool = False
                    ) -> tuple[float, float]:
    """Mean and unbiased std of ``x`` over ``mask`` as Python floats (0.0 when empty / fewer than two values).

        n = sum m,   mean = sum x m / n,   std = sqrt( sum m (x - mean)^2 / (n - 1) )      (two passes)

    Row sums in ``x``'s dtype, their total in float64. ``x``: float32 or float64, finite where the mask is set (a NaN
    off the mask would survive the product; the estimators pass checked tensors). ``mask``: 0/1 or bool, None for
    all. ``zero_off_mask``: the caller promises x = 0 wherever the mask is 0 (an estimator's advantages), so x itself
    is the masked sum's term.
    """
    m = _float_mask(x, mask)
    n = _total(m)
    if n == 0:
        return 0.0, 0.0
    mean = _total(x if zero_off_mask else x * m) / n
    if n < 2:
        return mean, 0.0
    dev = x - mean * m if zero_off_mask else (x - mean) * m  # equal where the promise holds
    return mean, (_total(dev * dev) / (n - 1.0)) ** 0.5
