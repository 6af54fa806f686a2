"""Segmentation of responses into steps, vectorised over the batch.

Positions are response-token positions; ``L_i`` is the index of response i's last valid token + 1. A *cut* at c
means token c starts a new segment, so cuts c_1 < ... < c_k give segments ``[0,c_1), [c_1,c_2), ..., [c_k, L_i)``.
Strategies (``shared/docs/ALGORITHMS.md``, PRPO step 1 and PRL steps):

* ``entropy``: greedy entropy spikes. Repeat k times: accept the eligible position with the highest entropy (ties:
  the earlier token), where c is eligible when ``m <= c < L_i``, the mask is valid at c and ``|c - c'| >= m`` for
  every cut c' already accepted; a row stops when nothing is eligible. ``L_i <= m`` gives one segment.
* ``uniform``: cuts ``floor(j * L_i / (k + 1))``, j = 1..k, deduplicated, kept in ``[1, L_i)``.
* ``random``: the ``entropy`` procedure with seeded uniform random priorities instead of the entropy.
* ``newline``: a cut at t + 1 after every valid token t whose text contains ``"\\n\\n"`` (t + 1 < L_i).
* ``fixed``: cuts at ``step_len, 2 * step_len, ... < L_i``.

Segments are spans of positions; a position inside ``[0, L_i)`` whose mask is 0 (a hole, e.g. a tool output in a
multi-turn response) belongs to no segment (id -1) but does not split one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from verl_prpo.ops import check_finite, valid_mask

__all__ = ["Segmentation", "STRATEGIES", "segment", "build_newline_token_mask", "broadcast_segment_scores",
           "response_lengths", "segmentation_from_ids"]

STRATEGIES: tuple[str, ...] = ("entropy", "uniform", "random", "newline", "fixed")


@dataclass
class Segmentation:
    """The segments of a batch of responses.

    Attributes:
        segment_ids: ``(B, L)`` long: 0..S_i-1 on valid positions, -1 elsewhere.
        starts: ``(B, L)`` bool: True where a segment starts (position 0 of a non-empty response too).
        num_segments: ``(B,)`` long; 0 for an empty response.
    """

    segment_ids: torch.Tensor
    starts: torch.Tensor
    num_segments: torch.Tensor

    def spans(self, i: int) -> list[tuple[int, int]]:
        """``[start, end)`` position span of each segment of response i (ends at ``L_i``)."""
        valid = (self.segment_ids[i] >= 0).nonzero()
        if valid.numel() == 0:
            return []
        length = int(valid[-1]) + 1
        starts = [int(s) for s in self.starts[i, :length].nonzero().flatten()]
        return list(zip(starts, starts[1:] + [length]))


def response_lengths(response_mask: torch.Tensor) -> torch.Tensor:
    """``(B,)`` long: L_i = index of the last valid token + 1 (0 for an empty response)."""
    mask = valid_mask(response_mask)
    pos = torch.arange(1, mask.shape[-1] + 1, device=mask.device)
    return (pos * mask).amax(dim=-1) if mask.shape[-1] > 0 else mask.new_zeros(mask.shape[0], dtype=torch.long)


def _from_starts(starts: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor) -> Segmentation:
    """Build the Segmentation from a (B, L) bool cut map (position 0 is set here for non-empty rows)."""
    starts = starts.clone()
    starts[:, 0] = lengths > 0
    pos = torch.arange(starts.shape[1], device=starts.device)
    starts &= pos < lengths[:, None]
    seg = starts.cumsum(dim=-1) - 1
    seg = torch.where(mask, seg, torch.full_like(seg, -1))
    return Segmentation(segment_ids=seg, starts=starts, num_segments=starts.sum(dim=-1))


def _scatter_cuts(cuts: torch.Tensor, ok: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(B, k) cut positions with a (B, k) validity flag -> (B, L) bool map (duplicates collapse)."""
    B, L = shape
    out = torch.zeros(B, L + 1, dtype=torch.bool, device=cuts.device)
    # invalid cuts go to a dummy column L, dropped below
    target = torch.where(ok, cuts, torch.full_like(cuts, L)).clamp(0, L)
    out.scatter_(1, target, True)
    return out[:, :L]


def _greedy_spikes(priority: torch.Tensor, eligible: torch.Tensor, k: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy top-k selection with a minimum gap m, vectorised over rows (loop over the k picks only).

    Args:
        priority: ``(B, L)`` float, finite on eligible positions.
        eligible: ``(B, L)`` bool, initial eligibility.
        k: number of picks. m: minimum gap.

    Returns:
        cuts ``(B, k)`` long and ok ``(B, k)`` bool (False once a row ran out of eligible positions).
    """
    B, L = priority.shape
    work = priority.masked_fill(~eligible, float("-inf"))
    # a pick at c blocks the window (c - m, c + m); scatter -inf into it instead of rebuilding a (B, L) mask
    offsets = torch.arange(-(m - 1), m, device=priority.device)
    cuts, oks = [], []
    for _ in range(k):
        best, idx = work.max(dim=-1)  # first maximum on ties: the earlier token
        ok = best > float("-inf")
        cuts.append(idx)
        oks.append(ok)
        window = (idx[:, None] + offsets[None, :]).clamp(0, L - 1)
        # rows with nothing left stay all -inf, so blocking their (arbitrary) window is harmless
        work.scatter_(1, window, float("-inf"))
    return torch.stack(cuts, dim=-1), torch.stack(oks, dim=-1)


def segment(
    strategy: str,
    response_mask: torch.Tensor,
    *,
    entropy: torch.Tensor | None = None,
    k: int = 5,
    m: int = 10,
    step_len: int = 256,
    seed: int = 0,
    newline_token_mask: torch.Tensor | None = None,
    responses: torch.Tensor | None = None,
) -> Segmentation:
    """Segment every response of a batch.

    Args:
        strategy: ``entropy``, ``uniform``, ``random``, ``newline`` or ``fixed``.
        response_mask: ``(B, L)`` 0/1 (int, bool or float).
        entropy: ``(B, L)`` rollout-policy entropy; required by ``entropy`` (finite on valid positions).
        k: maximum number of cuts (``entropy``, ``uniform``, ``random``). m: minimum gap (``entropy``, ``random``).
        step_len: segment length of ``fixed``. seed: seed of ``random``.
        newline_token_mask: ``(V,)`` bool, True for ids whose text contains ``"\\n\\n"``; ``newline`` only.
        responses: ``(B, L)`` token ids; ``newline`` only.

    Returns:
        ``Segmentation`` with ``segment_ids (B, L)``, ``starts (B, L)``, ``num_segments (B,)``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown segmentation strategy {strategy!r}; expected one of {list(STRATEGIES)}")
    if response_mask.dim() != 2:
        raise ValueError(f"response_mask must be (B, L), got shape {tuple(response_mask.shape)}")
    mask = valid_mask(response_mask)
    B, L = mask.shape
    device = mask.device
    lengths = response_lengths(mask)
    pos = torch.arange(L, device=device)

    if strategy in ("entropy", "random"):
        if int(k) < 1 or int(m) < 1:
            raise ValueError(f"segmentation needs k >= 1 and m >= 1, got k={k}, m={m}")
        if strategy == "entropy":
            if entropy is None:
                raise ValueError(
                    "entropy segmentation needs the rollout-policy `entropy` (B, L); the prpo_sync trainer mode "
                    "(trainer.v1.trainer_mode=prpo_sync) fetches it"
                )
            if entropy.shape != mask.shape:
                raise ValueError(f"entropy has shape {tuple(entropy.shape)}, response_mask {tuple(mask.shape)}")
            check_finite("entropy", entropy, mask)
            priority = entropy.detach().float().to(device)
        else:
            gen = torch.Generator(device="cpu").manual_seed(int(seed))
            priority = torch.rand(B, L, generator=gen).to(device)
        eligible = mask & (pos >= m)  # pos < L_i is implied by the mask
        cuts, ok = _greedy_spikes(priority, eligible, int(k), int(m))
        starts = _scatter_cuts(cuts, ok, (B, L))
    elif strategy == "uniform":
        if int(k) < 1:
            raise ValueError(f"uniform segmentation needs k >= 1, got k={k}")
        j = torch.arange(1, int(k) + 1, device=device)
        cuts = torch.div(j[None, :] * lengths[:, None], int(k) + 1, rounding_mode="floor")
        ok = (cuts >= 1) & (cuts < lengths[:, None])
        starts = _scatter_cuts(cuts, ok, (B, L))
    elif strategy == "fixed":
        if int(step_len) < 1:
            raise ValueError(f"fixed segmentation needs step_len >= 1, got {step_len}")
        starts = (pos % int(step_len) == 0).expand(B, L).clone()
    else:  # newline
        if newline_token_mask is None or responses is None:
            raise ValueError(
                "newline segmentation needs `responses` (B, L) token ids and `newline_token_mask` (V,) "
                "(build it with build_newline_token_mask(tokenizer))"
            )
        if responses.shape != mask.shape:
            raise ValueError(f"responses has shape {tuple(responses.shape)}, response_mask {tuple(mask.shape)}")
        table = newline_token_mask.to(device=device, dtype=torch.bool).reshape(-1)
        ids = responses.to(device).long()
        in_vocab = (ids >= 0) & (ids < table.numel())
        is_nl = table[ids.clamp(0, max(table.numel() - 1, 0))] & in_vocab & mask
        starts = torch.zeros(B, L, dtype=torch.bool, device=device)
        starts[:, 1:] = is_nl[:, :-1]  # the token after a blank line starts the next step

    return _from_starts(starts, mask, lengths)


def segmentation_from_ids(segment_ids: torch.Tensor, response_mask: torch.Tensor) -> Segmentation:
    """Rebuild a ``Segmentation`` from externally given ``segment_ids`` (B, L) (-1 outside the mask).

    A segment starts at the first valid position of each id; the ids must be >= 0 on valid positions.
    """
    mask = valid_mask(response_mask)
    seg = segment_ids.to(mask.device).long()
    if seg.shape != mask.shape:
        raise ValueError(f"segment_ids has shape {tuple(seg.shape)}, response_mask {tuple(mask.shape)}")
    if bool((seg[mask] < 0).any()):
        raise ValueError("segment_ids must be >= 0 on every valid position (-1 only outside the response mask)")
    seg = torch.where(mask, seg, torch.full_like(seg, -1))
    prev = torch.cat([torch.full_like(seg[:, :1], -1), seg[:, :-1]], dim=-1)
    # carry the last seen id across holes so a hole does not split a segment
    starts = mask & (seg != _forward_fill(prev))
    num = torch.where(mask.any(-1), seg.amax(-1) + 1, torch.zeros_like(seg[:, 0]))
    return Segmentation(segment_ids=seg, starts=starts, num_segments=num)


def _forward_fill(x: torch.Tensor) -> torch.Tensor:
    """Replace each -1 by the last value >= 0 to its left (ids are non-decreasing, so a running max does it)."""
    return x.cummax(dim=-1).values


def broadcast_segment_scores(scores: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """Give every token the score of its segment.

    Args:
        scores: ``(B, S_max)`` float, score of segment s of response i (entries past S_i are ignored).
        segment_ids: ``(B, L)`` long, -1 outside the mask.

    Returns:
        ``(B, L)`` float: ``scores[i, segment_ids[i, t]]``, 0 where ``segment_ids`` is -1.
    """
    if scores.dim() != 2 or segment_ids.dim() != 2 or scores.shape[0] != segment_ids.shape[0]:
        raise ValueError(
            f"scores must be (B, S_max) and segment_ids (B, L) with the same B, got {tuple(scores.shape)} and "
            f"{tuple(segment_ids.shape)}"
        )
    seg = segment_ids.to(scores.device).long()
    if seg.numel() and int(seg.max()) >= scores.shape[1]:
        raise ValueError(f"segment id {int(seg.max())} has no score (scores has {scores.shape[1]} columns)")
    valid = seg >= 0
    if scores.shape[1] == 0:
        return torch.zeros(seg.shape, dtype=scores.dtype, device=scores.device)
    out = scores.gather(1, seg.clamp(min=0))
    return torch.where(valid, out, torch.zeros_like(out))


def build_newline_token_mask(tokenizer: Any, vocab_size: int | None = None) -> torch.Tensor:
    """``(V,)`` bool: True for every token id whose decoded text contains ``"\\n\\n"``.

    Args:
        tokenizer: a Hugging Face tokenizer (``decode`` / ``batch_decode`` and ``len``).
        vocab_size: V; defaults to ``len(tokenizer)``. A larger V (a model's padded embedding) pads with False.
    """
    n = len(tokenizer)
    V = max(n, int(vocab_size)) if vocab_size is not None else n
    ids = [[i] for i in range(n)]
    if hasattr(tokenizer, "batch_decode"):
        texts = tokenizer.batch_decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    else:
        texts = [tokenizer.decode(i) for i in ids]
    out = torch.zeros(V, dtype=torch.bool)
    out[:n] = torch.tensor(["\n\n" in t for t in texts], dtype=torch.bool)
    return out
