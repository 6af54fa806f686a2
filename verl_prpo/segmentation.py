"""Segmentation of responses into steps: one function per strategy, vectorised over the batch.

Positions are response-token positions; ``L_i`` is the index of response i's last valid token + 1. A *cut* at c
means token c starts a new segment, so cuts c_1 < ... < c_k give segments ``[0,c_1), [c_1,c_2), ..., [c_k, L_i)``.
Strategies (docs/ALGORITHMS.md, PRPO step 1 and PRL steps), the table ``STRATEGIES`` (name -> function):

* ``entropy``: entropy spikes, selected by ``cut_rule``:
  ``greedy`` (the method): repeat k times: accept the eligible position with the highest entropy (ties: the earlier
  token), where c is eligible when ``m <= c < L_i``, the mask is valid at c and ``|c - c'| >= m`` for every cut c'
  already accepted; a row stops when nothing is eligible. ``L_i <= m`` gives one segment.
  ``released`` (the authors' code): the k highest-entropy valid positions c_1 < ... < c_k, a first pass that keeps
  c_i or the first later c_j more than m away, a second pass with a minimum gap m from 0; ``L_i < k + 1`` gives one
  segment (ALGORITHMS.md, PRPO step 1, with worked cases).
* ``uniform``: cuts ``floor(j * L_i / (k + 1))``, j = 1..k, deduplicated, kept in ``[1, L_i)``.
* ``random``: the greedy ``entropy`` rule with seeded uniform random priorities instead of the entropy.
* ``newline``: a cut at t + 1 after every valid token t whose text contains ``"\\n\\n"`` (t + 1 < L_i).
* ``fixed``: cuts at ``step_len, 2 * step_len, ... < L_i``.

Each strategy returns the (B, L) bool map of segment starts; ``segment`` turns it into ids (the running count of
starts). Segments are spans of positions: a position inside ``[0, L_i)`` whose mask is 0 (a hole, e.g. a tool output
in a multi-turn response) belongs to no segment (id -1) but does not split one. Needs only torch, not verl.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from verl_prpo.ops import check_finite, valid_mask

__all__ = ["Segmentation", "STRATEGIES", "CUT_RULES", "segment", "build_newline_token_mask",
           "broadcast_segment_scores", "response_lengths", "segmentation_from_ids"]

CUT_RULES: tuple[str, ...] = ("greedy", "released")


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
    pos1 = torch.arange(1, mask.shape[-1] + 1, device=mask.device)
    return torch.where(mask, pos1, 0).amax(dim=-1) if mask.shape[-1] else pos1.new_zeros(mask.shape[0])


# --------------------------------------------------------------------------------------------------------------------
# cut selection shared by the strategies
# --------------------------------------------------------------------------------------------------------------------


def _starts_from_cuts(cuts: torch.Tensor, ok: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L) bool start map from (B, k) cut positions (each >= 1 and < L_i where ``ok``), plus position 0."""
    starts = torch.zeros(mask.shape, dtype=torch.bool, device=mask.device)
    starts.scatter_(1, torch.where(ok, cuts, 0), ok)  # a missing cut writes False at 0, which is set below
    starts[:, 0] = mask.any(dim=-1)
    return starts


def _greedy_spikes(priority: torch.Tensor, mask: torch.Tensor, k: int, m: int):
    """Greedy top-k selection with a minimum gap m, vectorised over rows (a loop over the k picks only).

        eligible(c) = mask[c] and c >= m and |c - c'| >= m for every accepted c'
        pick        = the eligible position of highest priority (ties: the earlier position)

    Args:
        priority: ``(B, L)`` float, finite where ``mask``. mask: ``(B, L)`` bool. k: number of picks. m: minimum gap.

    Returns:
        cuts ``(B, k)`` long and ok ``(B, k)`` bool (False once a row ran out of eligible positions).
    """
    L = priority.shape[1]
    pos = torch.arange(L, device=priority.device)
    work = torch.where(mask & (pos >= m), priority.float(), float("-inf"))  # -inf: not eligible
    window = torch.arange(-(m - 1), m, device=priority.device)  # a pick at c makes (c - m, c + m) ineligible
    cuts, oks = [], []
    for _ in range(k):
        value, c = work.max(dim=-1)  # torch.max returns the first maximal position
        cuts.append(c)
        oks.append(value > float("-inf"))
        work.scatter_(1, (c[:, None] + window).clamp(0, L - 1), float("-inf"))
    return torch.stack(cuts, dim=-1), torch.stack(oks, dim=-1)


def _released_spikes(entropy: torch.Tensor, mask: torch.Tensor, k: int, m: int):
    """The authors' released spike selection, vectorised over rows (ALGORITHMS.md, PRPO step 1, ``released``).

        candidates c_1 < ... < c_k: the k highest-entropy valid positions of [0, L_i) (ties: the earlier position)
        first pass, i = 1 .. k-1: keep c_i if c_{i+1} - c_i > m, else keep c_j for the first j > i with c_j - c_i > m
        second pass over the kept positions, last = 0: accept a if a - last >= m, then last = a
        L_i < k + 1: no cut

    Args:
        entropy: ``(B, L)`` float, finite where ``mask``. mask: ``(B, L)`` bool. k, m: as in ``segment``.

    Returns:
        cuts ``(B, k - 1)`` long and ok ``(B, k - 1)`` bool (False: no cut in that slot).
    """
    B, L = entropy.shape
    kk = min(k, L)
    lengths = response_lengths(mask)
    # a stable descending sort puts the earlier of two equal entropies first
    order = torch.where(mask, entropy.float(), float("-inf")).sort(dim=-1, descending=True, stable=True)
    top_ok = order.values[:, :kk] > float("-inf")
    c, by_pos = torch.where(top_ok, order.indices[:, :kk], L + m + 1).sort(dim=-1)  # missing candidates go last
    c_ok = top_ok.gather(1, by_pos) & (lengths >= k + 1)[:, None]
    # far[b, i, j]: j > i is a candidate more than m after c_i
    later = torch.ones(kk, kk, dtype=torch.bool, device=c.device).triu(1)
    far = later & c_ok[:, None, :] & (c[:, None, :] - c[:, :, None] > m)
    keep_self = far.diagonal(offset=1, dim1=1, dim2=2)  # c_{i+1} - c_i > m, (B, kk - 1)
    first_far = c.gather(1, far.int().argmax(-1))[:, : kk - 1]  # c_j of the first such j
    kept = torch.where(keep_self, c[:, : kk - 1], first_far)
    kept_ok = c_ok[:, : kk - 1] & far.any(-1)[:, : kk - 1]
    cuts, oks = [], []
    last = torch.zeros(B, dtype=torch.long, device=c.device)
    for a, a_ok in zip(kept.unbind(1), kept_ok.unbind(1)):  # the second pass is sequential in the kept order
        accept = a_ok & (a - last >= m)
        last = torch.where(accept, a, last)
        cuts.append(a)
        oks.append(accept)
    if not cuts:
        empty = torch.zeros(B, 0, dtype=torch.long, device=c.device)
        return empty, empty.bool()
    return torch.stack(cuts, dim=-1), torch.stack(oks, dim=-1)


def _check_k_m(k: int, m: int) -> None:
    if k < 1 or m < 1:
        raise ValueError(f"segmentation needs k >= 1 and m >= 1, got k={k}, m={m}")


# --------------------------------------------------------------------------------------------------------------------
# the strategies: (B, L) bool mask in, (B, L) bool map of segment starts out
# --------------------------------------------------------------------------------------------------------------------


def entropy_starts(mask: torch.Tensor, *, entropy: torch.Tensor | None, k: int, m: int, cut_rule: str = "greedy",
                   **_) -> torch.Tensor:
    """PRPO's entropy spikes (``cut_rule`` greedy or released); ``entropy`` (B, L), finite on valid positions."""
    _check_k_m(k, m)
    if entropy is None:
        raise ValueError("entropy segmentation needs the rollout-policy `entropy` (B, L); the prpo_sync trainer mode "
                         "(trainer.v1.trainer_mode=prpo_sync) fetches it")
    if entropy.shape != mask.shape:
        raise ValueError(f"entropy has shape {tuple(entropy.shape)}, response_mask {tuple(mask.shape)}")
    check_finite("entropy", entropy, mask)
    spikes = _released_spikes if cut_rule == "released" else _greedy_spikes
    cuts, ok = spikes(entropy.detach().to(mask.device), mask, k, m)
    return _starts_from_cuts(cuts, ok, mask)


def random_starts(mask: torch.Tensor, *, k: int, m: int, seed: int, **_) -> torch.Tensor:
    """The greedy spike rule on seeded uniform random priorities (the paper's random-segmentation ablation)."""
    _check_k_m(k, m)
    priority = torch.rand(mask.shape, generator=torch.Generator().manual_seed(seed)).to(mask.device)
    return _starts_from_cuts(*_greedy_spikes(priority, mask, k, m), mask)


def uniform_starts(mask: torch.Tensor, *, k: int, **_) -> torch.Tensor:
    """Cuts at floor(j * L_i / (k + 1)), j = 1..k, kept in [1, L_i)."""
    if k < 1:
        raise ValueError(f"uniform segmentation needs k >= 1, got k={k}")
    lengths = response_lengths(mask)[:, None]
    cuts = torch.arange(1, k + 1, device=mask.device) * lengths // (k + 1)
    return _starts_from_cuts(cuts, (cuts >= 1) & (cuts < lengths), mask)


def fixed_starts(mask: torch.Tensor, *, step_len: int, **_) -> torch.Tensor:
    """A segment every ``step_len`` positions: starts at 0, step_len, 2 * step_len, ... < L_i."""
    if step_len < 1:
        raise ValueError(f"fixed segmentation needs step_len >= 1, got {step_len}")
    pos = torch.arange(mask.shape[1], device=mask.device)
    return (pos % step_len == 0) & (pos < response_lengths(mask)[:, None])


def newline_starts(mask: torch.Tensor, *, newline_token_mask: torch.Tensor | None, responses: torch.Tensor | None,
                   **_) -> torch.Tensor:
    """A start after every valid token whose text contains a blank line; ``responses`` (B, L) token ids and
    ``newline_token_mask`` (V,) bool (``build_newline_token_mask``)."""
    if newline_token_mask is None or responses is None:
        raise ValueError(
            "newline segmentation needs `responses` (B, L) token ids and `newline_token_mask` (V,) "
            "(build it with build_newline_token_mask(tokenizer))"
        )
    if responses.shape != mask.shape:
        raise ValueError(f"responses has shape {tuple(responses.shape)}, response_mask {tuple(mask.shape)}")
    table = newline_token_mask.to(device=mask.device, dtype=torch.bool).reshape(-1)
    ids = responses.to(mask.device).long()
    in_vocab = (ids >= 0) & (ids < table.numel())
    is_nl = table[ids.clamp(0, max(table.numel() - 1, 0))] & in_vocab & mask if table.numel() else mask & False
    lengths = response_lengths(mask)
    starts = torch.zeros_like(mask)
    starts[:, 1:] = is_nl[:, :-1]  # the token after a blank line starts the next step
    starts[:, 0] = lengths > 0
    return starts & (torch.arange(mask.shape[1], device=mask.device) < lengths[:, None])


#: strategy name -> function returning the (B, L) bool map of segment starts (the config's choices)
STRATEGIES: dict[str, Callable[..., torch.Tensor]] = {
    "entropy": entropy_starts,
    "uniform": uniform_starts,
    "random": random_starts,
    "newline": newline_starts,
    "fixed": fixed_starts,
}


def _from_starts(starts: torch.Tensor, mask: torch.Tensor) -> Segmentation:
    """Segment ids from the (B, L) start map: on a valid token, the number of starts at or before it, minus 1."""
    count = starts.long().cumsum(dim=-1)
    return Segmentation(segment_ids=torch.where(mask, count - 1, -1), starts=starts, num_segments=count[:, -1])


def segment(
    strategy: str,
    response_mask: torch.Tensor,
    *,
    entropy: torch.Tensor | None = None,
    k: int = 5,
    m: int = 10,
    cut_rule: str = "greedy",
    step_len: int = 256,
    seed: int = 0,
    newline_token_mask: torch.Tensor | None = None,
    responses: torch.Tensor | None = None,
) -> Segmentation:
    """Segment every response of a batch with ``STRATEGIES[strategy]``.

    Args:
        strategy: ``entropy``, ``uniform``, ``random``, ``newline`` or ``fixed``.
        response_mask: ``(B, L)`` 0/1 (int, bool or float).
        entropy: ``(B, L)`` rollout-policy entropy; required by ``entropy`` (finite on valid positions).
        k: maximum number of cuts (``entropy``, ``uniform``, ``random``). m: minimum gap (``entropy``, ``random``).
        cut_rule: ``greedy`` (default, the method) or ``released`` (the authors' code); ``entropy`` only.
        step_len: segment length of ``fixed``. seed: seed of ``random``.
        newline_token_mask: ``(V,)`` bool, True for ids whose text contains ``"\\n\\n"``; ``newline`` only.
        responses: ``(B, L)`` token ids; ``newline`` only.

    Returns:
        ``Segmentation`` with ``segment_ids (B, L)``, ``starts (B, L)``, ``num_segments (B,)``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown segmentation strategy {strategy!r}; expected one of {list(STRATEGIES)}")
    if cut_rule not in CUT_RULES:
        raise ValueError(f"unknown cut_rule {cut_rule!r}; expected one of {list(CUT_RULES)}")
    if cut_rule != "greedy" and strategy != "entropy":
        raise ValueError(f"cut_rule={cut_rule!r} applies to the entropy strategy only, got strategy {strategy!r}")
    if response_mask.dim() != 2:
        raise ValueError(f"response_mask must be (B, L), got shape {tuple(response_mask.shape)}")
    mask = valid_mask(response_mask)
    if mask.shape[1] == 0:  # nothing to cut
        return _from_starts(torch.zeros_like(mask), mask)
    starts = STRATEGIES[strategy](mask, entropy=entropy, k=int(k), m=int(m), cut_rule=cut_rule,
                                  step_len=int(step_len), seed=int(seed), newline_token_mask=newline_token_mask,
                                  responses=responses)
    return _from_starts(starts, mask)


def segmentation_from_ids(segment_ids: torch.Tensor, response_mask: torch.Tensor) -> Segmentation:
    """Rebuild a ``Segmentation`` from externally given ``segment_ids`` (B, L) (-1 outside the mask).

    A segment starts at the first valid position of each id; the ids must be >= 0 on valid positions.
    """
    mask = valid_mask(response_mask)
    seg = segment_ids.to(device=mask.device, dtype=torch.long)
    if seg.shape != mask.shape:
        raise ValueError(f"segment_ids has shape {tuple(seg.shape)}, response_mask {tuple(mask.shape)}")
    if bool((seg[mask] < 0).any()):
        raise ValueError("segment_ids must be >= 0 on every valid position (-1 only outside the response mask)")
    seg = torch.where(mask, seg, -1)
    previous = torch.cat([torch.full_like(seg[:, :1], -1), seg[:, :-1]], dim=-1)
    # the last id seen before t (ids are non-decreasing, so a running max carries it across holes): a hole does not
    # split a segment
    starts = mask & (seg != previous.cummax(dim=-1).values)
    num = torch.where(mask.any(-1), seg.amax(-1) + 1, 0) if seg.shape[1] else seg.new_zeros(seg.shape[0])
    return Segmentation(segment_ids=seg, starts=starts, num_segments=num)


def broadcast_segment_scores(scores: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """Give every token the score of its segment: ``out_{i,t} = scores_{i, segment_ids_{i,t}}``, 0 where the id is -1.

    Args:
        scores: ``(B, S_max)`` float, score of segment s of response i (entries past S_i are ignored).
        segment_ids: ``(B, L)`` int32 or int64, -1 outside the mask.

    Returns:
        ``(B, L)`` float, the dtype of ``scores``.
    """
    if scores.dim() != 2 or segment_ids.dim() != 2 or scores.shape[0] != segment_ids.shape[0]:
        raise ValueError(
            f"scores must be (B, S_max) and segment_ids (B, L) with the same B, got {tuple(scores.shape)} and "
            f"{tuple(segment_ids.shape)}"
        )
    seg = segment_ids.to(scores.device).long()
    S = scores.shape[1]
    if seg.numel() and (int(seg.max()) >= S or int(seg.min()) < -1):
        raise ValueError(f"segment ids must lie in [-1, {S}) for {S} scores per response, got "
                         f"[{int(seg.min())}, {int(seg.max())}]")
    with_zero = torch.cat([scores.new_zeros(scores.shape[0], 1), scores], dim=1)  # column 0: the 0 of id -1
    return with_zero.gather(1, seg + 1)


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
