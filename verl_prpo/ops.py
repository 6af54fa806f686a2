"""Shared tensor pieces of the estimators, each written once.

Everything is vectorised with ``index_add_`` / ``cumsum`` / ``gather``: no Python loop over groups, responses or
tokens. Groups are keyed by ``uid`` (never by batch position) and numbered 0..G-1 by ``group_ids``.

Shapes: B = responses in the batch, L = response length (padded), G = number of groups (distinct uids).
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

import numpy as np
import torch

__all__ = [
    "all_finite",
    "empty_buffer",
    "group_ids",
    "group_mean_std",
    "outcome_advantage",
    "masked_suffix_sum",
    "masked_cumsum",
    "group_position_stats",
    "check_finite",
    "valid_mask",
    "masked_mean_std",
    "sub_group_rows_",
]


_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14


def _load_madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = ctypes.c_int
        return fn
    except (OSError, AttributeError):
        return None


_madvise = _load_madvise()


def empty_buffer(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, device: Any = None) -> torch.Tensor:
    """``torch.empty`` that asks Linux for transparent huge pages when the buffer is a large CPU one.

    Why: these kernels are memory-bound, and on CPU a fresh (B, L) buffer (glibc maps anything of 32 MB and more
    straight from the kernel) costs one page fault per 4 KiB on first touch -- more than the arithmetic. With the
    ``MADV_HUGEPAGE`` hint (what PyTorch's opt-in ``THP_MEM_ALLOC_ENABLE=1`` does for every allocation) it is one per
    2 MiB. Only a hint: contents and semantics are those of ``torch.empty``; a no-op elsewhere.
    """
    out = torch.empty(shape, dtype=dtype, device=device)
    if _madvise is not None and out.device.type == "cpu":
        nbytes = out.numel() * out.element_size()
        if nbytes >= 4 * _HUGE_PAGE:
            start = -(-out.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE  # whole huge pages inside the buffer
            end = (out.data_ptr() + nbytes) // _HUGE_PAGE * _HUGE_PAGE
            if end > start:
                _madvise(start, end - start, _MADV_HUGEPAGE)  # failure is harmless: plain pages
    return out


def valid_mask(response_mask: torch.Tensor) -> torch.Tensor:
    """The response mask (int, bool or float 0/1) as a bool tensor of the same shape."""
    # .bool() is "!= 0" without the comparison kernel (about twice as fast on int64)
    return response_mask if response_mask.dtype == torch.bool else response_mask.bool()


def all_finite(tensor: torch.Tensor) -> bool:
    """True if ``tensor`` has no NaN/inf anywhere, in one reduction pass and without a (B, L) temporary:
    ``aminmax`` propagates NaN, and an inf shows up as the min or the max."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return True  # integer tensors cannot hold NaN/inf
    if tensor.numel() == 0:
        return True
    if tensor.is_complex():
        return bool(torch.isfinite(tensor).all())
    lo, hi = torch.aminmax(tensor)
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


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
    if all_finite(tensor):
        return True
    bad = ~torch.isfinite(tensor)
    if mask is not None:
        bad = bad & valid_mask(mask)
    n_bad = int(bad.sum())
    if n_bad:
        first = tuple(int(i) for i in bad.nonzero()[0])
        where = " on valid positions" if mask is not None else ""
        raise ValueError(f"{name} has {n_bad} NaN/inf value(s){where} (first at index {first})")
    return bool(torch.isfinite(tensor).all())


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
    arr = np.asarray(index, dtype=object).reshape(-1) if not isinstance(index, np.ndarray) else index.reshape(-1)
    if expected_len is not None and arr.shape[0] != expected_len:
        raise ValueError(f"index (uid) has length {arr.shape[0]}, but the batch has {expected_len} responses")
    try:
        import pandas as pd

        codes, uniques = pd.factorize(arr.astype(object), use_na_sentinel=True)
        missing = codes < 0  # pandas maps None and NaN to the sentinel
    except ImportError:  # pragma: no cover - pandas ships with verl
        seen: dict[Any, int] = {}
        missing = np.array([_is_missing(u) for u in arr], dtype=bool)
        codes = np.array([-1 if _is_missing(u) else seen.setdefault(u, len(seen)) for u in arr], dtype=np.int64)
        uniques = list(seen)
    if missing.any():
        raise ValueError(f"index (uid) holds {int(missing.sum())} None/NaN value(s), e.g. at position "
                         f"{int(np.flatnonzero(missing)[0])}")
    return torch.as_tensor(np.asarray(codes, dtype=np.int64)), int(len(uniques))


def _scatter_sum(values: torch.Tensor, gid: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Sum ``values`` (B, ...) into (G, ...) rows by ``gid`` (B,)."""
    out = values.new_zeros((num_groups,) + tuple(values.shape[1:]))
    return out.index_add_(0, gid, values)


def group_mean_std(
    values: torch.Tensor, gid: torch.Tensor, num_groups: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group mean and unbiased std exactly as verl's GRPO estimator defines them.

    mean_g = (1/n_g) sum_{i in g} v_i,  std_g = sqrt( sum_{i in g} (v_i - mean_g)^2 / (n_g - 1) ),
    and a group of one gets mean 0 and std 1 (so a normalised advantage keeps the raw value, as in verl).

    Args:
        values: ``(N,)`` float.
        gid: ``(N,)`` long group numbers in [0, G).
        num_groups: G.

    Returns:
        mean ``(G,)``, std ``(G,)``, count ``(G,)`` (float). A group with no member gets mean 0, std 1.
    """
    gid = gid.to(values.device)
    count = _scatter_sum(torch.ones_like(values), gid, num_groups)
    safe = count.clamp(min=1.0)
    mean = _scatter_sum(values, gid, num_groups) / safe
    # two-pass variance: numerically safe for large values with a small spread
    sq = _scatter_sum((values - mean[gid]) ** 2, gid, num_groups)
    std = (sq / (count - 1.0).clamp(min=1.0)).sqrt()
    single = count <= 1.0
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    return mean, std, count


def outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    norm_by_std: bool = True,
    eps: float = 1e-6,
    groups: tuple[torch.Tensor, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO outcome advantage per response.

    R_i = sum_t token_level_rewards_{i,t}   (unmasked, as verl's GRPO),
    beta_i = R_i - mean_G R,   A_out_i = beta_i / (std_G R + eps)  (or beta_i if not ``norm_by_std``),
    with verl's convention for a group of one (mean 0, std 1, hence beta = A_out = R).

    Args:
        token_level_rewards: ``(B, L)``.
        response_mask: ``(B, L)``; only its batch size is used (R is not masked, as in verl).
        index: ``(B,)`` uids.
        norm_by_std: divide by the group std (verl ``norm_adv_by_std_in_grpo``).
        eps: added to the std.
        groups: ``(gid, G)`` from ``group_ids`` to avoid recomputing it.

    Returns:
        A_out ``(B,)`` float32 and beta ``(B,)`` float32.
    """
    if groups is None:
        groups = group_ids(index, expected_len=token_level_rewards.shape[0])
    gid, num_groups = groups
    scores = token_level_rewards.float().sum(dim=-1)
    gid = gid.to(scores.device)
    mean, std, _ = group_mean_std(scores, gid, num_groups)
    beta = scores - mean[gid]
    a_out = beta / (std[gid] + eps) if norm_by_std else beta
    return a_out, beta


def masked_suffix_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """S_{i,t} = sum_{j >= t} x_{i,j} * mask_{i,j}.

    Args:
        x: ``(B, L)`` float.
        mask: ``(B, L)`` 0/1 or bool.

    Returns:
        ``(B, L)``, same dtype as ``x`` (0 past the last valid token). Computed as a flipped cumsum, not
        ``total - prefix``, so the sum at the last tokens carries no cancellation error.
    """
    # where, not multiply: a NaN outside the mask must not leak (NaN * 0 = NaN)
    y = torch.where(valid_mask(mask), x, torch.zeros((), dtype=x.dtype, device=x.device)).flip(-1)
    return y.cumsum_(-1).flip(-1)


def masked_cumsum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """C_{i,t} = sum_{j <= t} x_{i,j} * mask_{i,j}; ``(B, L)`` in, ``(B, L)`` out."""
    return torch.where(valid_mask(mask), x, torch.zeros((), dtype=x.dtype, device=x.device)).cumsum_(-1)


def group_position_stats(
    x: torch.Tensor,
    mask: torch.Tensor,
    gid: torch.Tensor,
    num_groups: int,
    *,
    with_std: bool = True,
    x_is_masked: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-group, per-position statistics over the responses alive at t (``mask[k, t]`` true).

    sum_{g,t} = sum_{k in g, alive at t} x_{k,t},  n_{g,t} = #{k in g alive at t},  mean = sum / n,
    std_{g,t} = sqrt( sum_{k in g, alive} (x_{k,t} - mean_{g,t})^2 / (n_{g,t} - 1) )   (unbiased).

    Args:
        x: ``(B, L)`` float.
        mask: ``(B, L)`` 0/1 or bool (a float mask of x's dtype is used as is).
        gid: ``(B,)`` long group numbers.
        num_groups: G.
        with_std: compute the std (one more pass and a (B, L) temporary); None is returned otherwise.
        x_is_masked: ``x`` is already 0 outside the mask (skips a masked copy).

    Returns:
        sum, count, mean, std, each ``(G, L)`` float. Where n = 0 the mean is 0; where n < 2 the std is 0 (undefined;
        callers divide ``0 / (0 + eps)`` there).
    """
    gid = gid.to(x.device)
    m = mask if mask.dtype == x.dtype else valid_mask(mask).to(x.dtype)
    xm = x if x_is_masked else torch.where(valid_mask(mask), x, torch.zeros((), dtype=x.dtype, device=x.device))
    total = _scatter_sum(xm, gid, num_groups)
    count = _scatter_sum(m, gid, num_groups)
    mean = total / count.clamp(min=1.0)
    std = None
    if with_std:
        dev = xm.clone() if xm is x else xm  # never write into the caller's tensor
        sub_group_rows_(dev, mean, gid).mul_(m)
        var = _scatter_sum(dev.mul_(dev), gid, num_groups) / (count - 1.0).clamp(min=1.0)
        std = torch.where(count >= 2.0, var.sqrt(), torch.zeros_like(var))
    return total, count, mean, std


def sub_group_rows_(x: torch.Tensor, table: torch.Tensor, gid: torch.Tensor, block_bytes: int = 4 << 20) -> torch.Tensor:
    """In place: ``x[i] -= table[gid[i]]`` for every row i.

    Args:
        x: ``(B, L)`` float, modified in place and returned.
        table: ``(G, L)`` per-group rows (e.g. the per-position group means).
        gid: ``(B,)`` long group numbers.
        block_bytes: size of the gathered operand per step.

    ``x - table[gid]`` would materialise a second (B, L) tensor; on CPU its first touch (page faults) costs more than
    the arithmetic. The gathered rows go through one small reused buffer instead, a few thousand rows at a time (a
    loop over row blocks, not over responses).
    """
    B, L = x.shape
    if B == 0 or L == 0:
        return x
    rows = max(1, min(B, block_bytes // (L * x.element_size())))
    buf = table.new_empty(rows, L)
    gid = gid.to(table.device)
    for start in range(0, B, rows):
        stop = min(B, start + rows)
        part = buf[: stop - start]
        torch.index_select(table, 0, gid[start:stop], out=part)
        x[start:stop].sub_(part)
    return x


def masked_mean_std(x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[float, float]:
    """Mean and unbiased std of ``x`` over ``mask`` as Python floats (0.0 when empty / fewer than two values).

    Sums are accumulated in float64 (one pass for the sum, one for the squares), without gathering the valid values.
    """
    if mask is None:
        m = torch.ones_like(x, dtype=torch.float32)
    else:
        m = mask.to(torch.float32) if mask.dtype != torch.float32 else mask
    n = float(m.sum(dtype=torch.float64))
    if n == 0:
        return 0.0, 0.0
    xm = x.float() * m
    mean = float(xm.sum(dtype=torch.float64)) / n
    if n < 2:
        return mean, 0.0
    xm.sub_(mean).mul_(m)  # centred, still zero outside the mask
    var = float(xm.mul_(xm).sum(dtype=torch.float64)) / (n - 1.0)
    return mean, max(var, 0.0) ** 0.5
