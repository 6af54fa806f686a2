"""Segmentation of responses into steps, vectorised over the batch.

Positions are response-token positions; ``L_i`` is the index of response i's last valid token + 1. A *cut* at c
means token c starts a new segment, so cuts c_1 < ... < c_k give segments ``[0,c_1), [c_1,c_2), ..., [c_k, L_i)``.
Strategies (``shared/docs/ALGORITHMS.md``, PRPO step 1 and PRL steps):

* ``entropy``: entropy spikes, selected by ``cut_rule``:
  ``greedy`` (the method): repeat k times: accept the eligible position with the highest entropy (ties: the earlier
  token), where c is eligible when ``m <= c < L_i``, the mask is valid at c and ``|c - c'| >= m`` for every cut c'
  already accepted; a row stops when nothing is eligible. ``L_i <= m`` gives one segment.
  ``released`` (the authors' code): the k highest-entropy valid positions c_1 < ... < c_k, a first pass that keeps
  c_i or the first later c_j more than m away, a second pass with a minimum gap m from 0; ``L_i < k + 1`` gives one
  segment (ALGORITHMS.md, PRPO step 1, with worked cases).
* ``uniform``: cuts ``floor(j * L_i / (k + 1))``, j = 1..k, deduplicated, kept in ``[1, L_i)``.
* ``random``: the ``entropy`` procedure with seeded uniform random priorities instead of the entropy.
* ``newline``: a cut at t + 1 after every valid token t whose text contains ``"\\n\\n"`` (t + 1 < L_i).
* ``fixed``: cuts at ``step_len, 2 * step_len, ... < L_i``.

Segments are spans of positions; a position inside ``[0, L_i)`` whose mask is 0 (a hole, e.g. a tool output in a
multi-turn response) belongs to no segment (id -1) but does not split one. Every strategy produces a (B, L) bool map
of segment starts; ids are its running count. Plain vectorised torch; needs only torch, not verl.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from verl_prpo.ops import check_finite, valid_mask

__all__ = ["Segmentation", "STRATEGIES", "segment", "build_newline_token_mask", "broadcast_segment_scores",
           "response_lengths", "segmentation_from_ids", "segment_table_index"]

STRATEGIES: tuple[str, ...] = ("entropy", "uniform", "random", "newline", "fixed")
CUT_RULES: tuple[str, ...] = ("greedy", "released")


@dataclass
class Segmentation:
    """The segments of a batch of responses.

    Attributes:
        segment_ids: ``(B, L)`` int32: 0..S_i-1 on valid positions, -1 elsewhere (int32, not int64: a fresh (B, L)
            int64 tensor costs about 15 ms of page faults on CPU at 1024 x 4096; torch's gather and scatter take
            int32 indices).
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
    if mask.shape[-1] == 0:
        return torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device)
    pos1 = torch.arange(1, mask.shape[-1] + 1, device=mask.device, dtype=torch.float32)  # exact below 2**24
    return (mask * pos1).amax(dim=-1).long()


def _from_starts(starts: torch.Tensor, mask: torch.Tensor) -> Segmentation:
    """Segmentation from the (B, L) bool map of segment starts (position 0 of a non-empty response included, no
    start at or past L_i): the id of a valid token is the number of starts at or before it, minus 1."""
    count = starts.cumsum(dim=-1, dtype=torch.int32)  # starts at or before t (a bool cumsum into int64 is slower)
    num_segments = count[:, -1].long()
    ids = count.mul_(mask).sub_(1)  # count - 1 on valid tokens, -1 elsewhere, in count's buffer
    return Segmentation(segment_ids=ids, starts=starts, num_segments=num_segments)


def _starts_from_cuts(cuts: torch.Tensor, ok: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L) bool start map from (B, k) cut positions (each >= 1 and < L_i where ``ok``), plus position 0."""
    starts = torch.zeros(mask.shape, dtype=torch.bool, device=mask.device)
    starts.scatter_(1, torch.where(ok, cuts, 0), ok)  # a missing cut writes False at 0, which is set below
    starts[:, 0] = mask.amax(dim=-1)  # any valid token (a bool any(dim) is ~4x slower on CPU)
    return starts


_BLOCK = 64  # block width of ``_first_argmax``


def _first_argmax(work: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``work`` (B, n * _BLOCK): the position of the first maximum and the maximum, ``(B,)`` each.

    Two-level: the maximum of each block of 64, then the first block holding the row maximum, then the first maximum
    inside it -- the same answer as ``work.argmax(dim=-1)`` and ``work.amax(dim=-1)``; argmax over the last dim is not
    vectorised on CPU (7 ms vs 0.9 ms at 1024 x 4096, five times per call).
    """
    B = work.shape[0]
    blocks = work.view(B, -1, _BLOCK)
    block_max = blocks.amax(dim=-1)  # (B, n)
    value, block = block_max.max(dim=-1)  # max returns the first maximal block
    rows = torch.arange(B, device=work.device)
    inner = blocks[rows, block].argmax(dim=-1)  # (B, 64) -> first maximum in that block
    return block * _BLOCK + inner, value


def _greedy_spikes(priority: torch.Tensor, mask: torch.Tensor, k: int, m: int):
    """Greedy top-k selection with a minimum gap m, vectorised over rows (a loop over the k picks only).

        eligible(c) = mask[c] and c >= m and |c - c'| >= m for every accepted c'
        pick        = the eligible position of highest priority (ties: the earlier position)

    Args:
        priority: ``(B, L)`` float, finite where ``mask``. mask: ``(B, L)`` bool. k: number of picks. m: minimum gap.

    Returns:
        cuts ``(B, k)`` long and ok ``(B, k)`` bool (False once a row ran out of eligible positions).
    """
    B, L = priority.shape
    pos = torch.arange(L, device=priority.device)
    work = torch.where(mask & (pos >= m), priority, float("-inf"))  # -inf: not eligible
    width = -(-L // _BLOCK) * _BLOCK
    if width > L:  # pad to whole blocks with ineligible positions
        work = torch.nn.functional.pad(work, (0, width - L), value=float("-inf"))
    window = torch.arange(-(m - 1), m, device=priority.device)  # a pick at c makes (c - m, c + m) ineligible
    cuts, oks = [], []
    for _ in range(k):
        c, value = _first_argmax(work)
        cuts.append(c)
        oks.append(value > float("-inf"))
        work.scatter_(1, (c[:, None] + window).clamp(0, width - 1), float("-inf"))
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
    pos = torch.arange(L, device=entropy.device)
    lengths = (mask * (pos + 1)).amax(-1)
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
    """Segment every response of a batch.

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
    B, L = mask.shape
    device = mask.device
    if L == 0:  # nothing to cut
        return Segmentation(segment_ids=torch.empty(B, 0, dtype=torch.int32, device=device),
                            starts=torch.empty(B, 0, dtype=torch.bool, device=device),
                            num_segments=torch.zeros(B, dtype=torch.long, device=device))
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
            priority = entropy.detach().to(device=device, dtype=torch.float32)
        else:
            gen = torch.Generator(device="cpu").manual_seed(int(seed))
            priority = torch.rand(B, L, generator=gen).to(device)
        spikes = _released_spikes if cut_rule == "released" else _greedy_spikes
        cuts, ok = spikes(priority, mask, int(k), int(m))
        return _from_starts(_starts_from_cuts(cuts, ok, mask), mask)
    lengths = response_lengths(mask)  # the other strategies cut relative to L_i
    pos = torch.arange(L, device=device)
    if strategy == "uniform":
        if int(k) < 1:
            raise ValueError(f"uniform segmentation needs k >= 1, got k={k}")
        j = torch.arange(1, int(k) + 1, device=device)
        cuts = j[None, :] * lengths[:, None] // (int(k) + 1)  # floor(j * L_i / (k + 1))
        ok = (cuts >= 1) & (cuts < lengths[:, None])
        return _from_starts(_starts_from_cuts(cuts, ok, mask), mask)
    if strategy == "fixed":
        s = int(step_len)
        if s < 1:
            raise ValueError(f"fixed segmentation needs step_len >= 1, got {step_len}")
        starts = (pos % s == 0)[None, :] & (pos[None, :] < lengths[:, None])
        seg = torch.where(mask, (pos // s).to(torch.int32), -1)  # the id of position t is t // step_len
        return Segmentation(segment_ids=seg, starts=starts, num_segments=starts.sum(dim=-1))
    # newline
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
    is_nl = table[ids.clamp(0, max(table.numel() - 1, 0))] & in_vocab & mask if table.numel() else torch.zeros_like(mask)
    starts = torch.zeros_like(mask)
    starts[:, 1:] = is_nl[:, :-1]  # the token after a blank line starts the next step
    starts[:, 0] = lengths > 0
    return _from_starts(starts & (pos[None, :] < lengths[:, None]), mask)


def segmentation_from_ids(segment_ids: torch.Tensor, response_mask: torch.Tensor) -> Segmentation:
    """Rebuild a ``Segmentation`` from externally given ``segment_ids`` (B, L) (-1 outside the mask).

    A segment starts at the first valid position of each id; the ids must be >= 0 on valid positions. The ids are
    returned as int32, like ``segment``'s.
    """
    mask = valid_mask(response_mask)
    seg = segment_ids.to(device=mask.device, dtype=torch.int32)
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


def segment_table_index(segment_ids: torch.Tensor, num_columns: int) -> torch.Tensor:
    """Flat index of every token's entry in a row-major (B, num_columns) per-segment table whose column 0 stands for
    id -1: ``flat_{i,t} = i * num_columns + segment_ids_{i,t} + 1``, ``(B, L)`` int32 (int64 past 2**31 entries).

    ``table.view(-1).index_select(0, flat.view(-1))`` reads the table at every token, ``bincount(flat)`` counts the
    tokens of each segment: with a flat int32 index both are several times cheaper on CPU than ``gather`` /
    ``scatter_add`` along dim 1, which need a (B, L) int64 index (about 15 ms of page faults alone at 1024 x 4096).
    """
    B = segment_ids.shape[0]
    index_dtype = torch.int32 if B * num_columns < 2**31 else torch.long
    row_start = torch.arange(B, device=segment_ids.device, dtype=index_dtype)[:, None] * num_columns
    return (segment_ids.to(index_dtype) + 1).add_(row_start)


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
    seg = segment_ids.to(scores.device)
    B, S = scores.shape
    if seg.numel():
        lo, hi = (int(v) for v in torch.aminmax(seg))
        if hi >= S or lo < -1:
            raise ValueError(f"segment ids must lie in [-1, {S}) for {S} scores per response, got [{lo}, {hi}]")
    padded = torch.cat([scores.new_zeros(B, 1), scores], dim=1)  # column 0: the 0 of id -1
    flat = segment_table_index(seg, S + 1)
    return padded.view(-1).index_select(0, flat.view(-1)).view(seg.shape)


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
