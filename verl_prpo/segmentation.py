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
    return _lengths_f(valid_mask(response_mask).float()).long()


def _lengths_f(maskf: torch.Tensor) -> torch.Tensor:
    """(B,) float L_i from a 0/1 float32 mask."""
    # float positions are exact below 2**24 tokens; one multiply + one max, no int64 temporaries
    if maskf.shape[-1] == 0:
        return maskf.new_zeros(maskf.shape[0])
    pos1 = torch.arange(1, maskf.shape[-1] + 1, device=maskf.device, dtype=torch.float32)
    return (maskf * pos1).amax(dim=-1)


def _from_start_map(starts_f: torch.Tensor, maskf: torch.Tensor) -> Segmentation:
    """Segmentation from a float (B, L) map with 1.0 at every segment start (position 0 included, none >= L_i)."""
    # id of a valid token = number of starts at or before it - 1; -1 outside the mask: (cumsum * m) - 1
    seg = starts_f.cumsum(dim=-1).mul_(maskf).sub_(1.0).long()
    starts = starts_f != 0
    return Segmentation(segment_ids=seg, starts=starts, num_segments=starts_f.sum(dim=-1).long())


def _start_map_from_cuts(cuts: torch.Tensor, ok: torch.Tensor, lengths: torch.Tensor, L: int) -> torch.Tensor:
    """(B, k) cut positions with a (B, k) validity flag -> (B, L) float start map (duplicates collapse)."""
    B = cuts.shape[0]
    out = torch.zeros(B, L + 1, dtype=torch.float32, device=cuts.device)
    # invalid cuts go to a dummy column L, dropped below
    target = torch.where(ok, cuts, torch.full_like(cuts, L)).clamp(0, L)
    out.scatter_(1, target, 1.0)
    out[:, 0] = (lengths > 0).float()
    return out[:, :L]


_BLOCK = 64  # block size of the greedy search (block maxima make each pick O(B * (L / 64 + 64)))


def _greedy_spikes(priority: torch.Tensor, mask: torch.Tensor, k: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy top-k selection with a minimum gap m, vectorised over rows (loop over the k picks only).

    Position c is eligible when ``mask[c]`` and ``c >= m`` and no accepted pick lies within ``m - 1`` of it; each pick
    is the eligible position of highest priority, ties to the earlier position. Instead of a full ``max`` over (B, L)
    per pick, the row is cut into blocks of ``_BLOCK`` positions whose maxima are kept up to date: a pick reads the
    best block (first on ties) and the first maximum inside it, then refreshes only the blocks its window touched.

    Args:
        priority: ``(B, L)`` float, finite where ``mask``.
        mask: ``(B, L)`` bool.
        k: number of picks. m: minimum gap.

    Returns:
        cuts ``(B, k)`` long and ok ``(B, k)`` bool (False once a row ran out of eligible positions).
    """
    B, L = priority.shape
    bs = _BLOCK
    nb = max(1, -(-L // bs))
    neg_inf = torch.full((), float("-inf"), dtype=torch.float32, device=priority.device)
    work = torch.empty(B, nb * bs, dtype=torch.float32, device=priority.device)
    work[:, L:] = float("-inf")
    torch.where(mask, priority, neg_inf, out=work[:, :L])
    work[:, : min(m, L)] = float("-inf")
    blocks = work.view(B, nb, bs)
    bmax = blocks.amax(dim=-1)  # (B, nb)
    rows = torch.arange(B, device=priority.device)
    offsets = torch.arange(-(m - 1), m, device=priority.device)  # a pick at c blocks (c - m, c + m)
    n_touch = min(nb, (2 * m - 2) // bs + 2)  # blocks a window can touch
    touch = torch.arange(n_touch, device=priority.device)
    cuts, oks = [], []
    for _ in range(k):
        best, blk = bmax.max(dim=-1)  # first best block on ties
        ok = best > float("-inf")
        idx = blk * bs + blocks[rows, blk].argmax(dim=-1)  # first maximum inside it: the earlier token
        cuts.append(idx)
        oks.append(ok)
        # rows with nothing left are all -inf, so blocking their (arbitrary) window is harmless
        work.scatter_(1, (idx[:, None] + offsets).clamp_(0, nb * bs - 1), float("-inf"))
        first = ((idx - (m - 1)).clamp(min=0) // bs)[:, None]
        bids = (first + touch).clamp_(max=nb - 1)  # (B, n_touch)
        fresh = blocks[rows[:, None], bids].amax(dim=-1)  # (B, n_touch)
        bmax.scatter_(1, bids, fresh)
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
    maskf = mask.float()
    B, L = mask.shape
    device = mask.device
    lengths = _lengths_f(maskf).long()

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
        # eligible: valid token (so c < L_i) at position >= m
        cuts, ok = _greedy_spikes(priority, mask, int(k), int(m))
        return _from_start_map(_start_map_from_cuts(cuts, ok, lengths, L), maskf)
    if strategy == "uniform":
        if int(k) < 1:
            raise ValueError(f"uniform segmentation needs k >= 1, got k={k}")
        j = torch.arange(1, int(k) + 1, device=device)
        cuts = torch.div(j[None, :] * lengths[:, None], int(k) + 1, rounding_mode="floor")
        ok = (cuts >= 1) & (cuts < lengths[:, None])
        return _from_start_map(_start_map_from_cuts(cuts, ok, lengths, L), maskf)
    if strategy == "fixed":
        s = int(step_len)
        if s < 1:
            raise ValueError(f"fixed segmentation needs step_len >= 1, got {step_len}")
        pos = torch.arange(L, device=device)
        # no cumsum needed: the id of position t is t // step_len
        seg = torch.div(pos, s, rounding_mode="floor").float().mul(maskf).add_(maskf).sub_(1.0).long()
        starts = ((pos % s) == 0)[None, :] & (pos[None, :] < lengths[:, None])
        num = torch.div(lengths + s - 1, s, rounding_mode="floor")
        return Segmentation(segment_ids=seg, starts=starts, num_segments=num)
    # newline
    if newline_token_mask is None or responses is None:
        raise ValueError(
            "newline segmentation needs `responses` (B, L) token ids and `newline_token_mask` (V,) "
            "(build it with build_newline_token_mask(tokenizer))"
        )
    if responses.shape != mask.shape:
        raise ValueError(f"responses has shape {tuple(responses.shape)}, response_mask {tuple(mask.shape)}")
    table = newline_token_mask.to(device=device, dtype=torch.float32).reshape(-1)
    if table.numel() == 0:
        table = torch.zeros(1, device=device)
    ids = responses.to(device).long()
    in_vocab = (ids >= 0) & (ids < table.numel())
    is_nl = table[ids.clamp(0, table.numel() - 1)] * in_vocab * maskf
    starts_f = torch.zeros(B, L, dtype=torch.float32, device=device)
    starts_f[:, 1:] = is_nl[:, :-1]  # the token after a blank line starts the next step
    starts_f[:, 0] = (lengths > 0).float()
    pos = torch.arange(L, device=device)
    starts_f *= pos[None, :] < lengths[:, None]  # no start at or past L_i
    return _from_start_map(starts_f, maskf)


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
    seg = segment_ids.to(scores.device)
    if seg.numel() and int(seg.max()) >= scores.shape[1]:
        raise ValueError(f"segment id {int(seg.max())} has no score (scores has {scores.shape[1]} columns)")
    # column 0 holds the 0 of the tokens outside the mask: index = id + 1, no validity pass (int32: half the memory)
    padded = torch.cat([scores.new_zeros(scores.shape[0], 1), scores], dim=1)
    idx = seg.to(torch.int32)
    idx = idx + 1 if idx is seg else idx.add_(1)  # never write into the caller's tensor
    return padded.gather(1, idx)


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
