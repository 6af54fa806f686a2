"""The PRM scoring pipeline in policy-token space.

``score_batch`` takes the policy's response tokens and a segmentation of them (``segment_ids``, from
``verl_prpo.segmentation``), decodes every segment with the POLICY tokenizer, lets the PRM adapter score the
segments with the PRM's own tokenizer (which may differ), and maps each segment's probability back onto the
policy tokens of that segment: ``prm_scores[i, t] = p[i, segment_ids[i, t]]`` on valid tokens, 0 elsewhere.

Questions come from the dataset: ``questions_from_batch`` prefers ``extra_info["question"]`` and falls back to
the content of the last user message of the prompt.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from verl_prpo.prm.adapters import PRMAdapter

# a last line such as "Please reason step by step, and put your final answer within \boxed{}."
_BOXED_LINE = re.compile(r"\\boxed\s*\{\s*\}")


def _to_list(x: Any) -> list:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes, Mapping)):
        return list(x.tolist())
    return list(x)


def strip_boxed_instruction(text: str) -> str:
    """Remove a trailing line that asks for the answer in ``\\boxed{}`` (the recipe's instruction)."""
    lines = text.rstrip().split("\n")
    if len(lines) > 1 and _BOXED_LINE.search(lines[-1]):
        return "\n".join(lines[:-1]).rstrip()
    return text


def question_from_messages(messages: Any, *, strip_instruction: bool = False) -> str:
    """The content of the last user message of a chat prompt (list / array of ``{"role", "content"}``).

    A plain string prompt is returned as is. ``strip_instruction`` removes a trailing ``\\boxed{}`` instruction
    line; by default the raw content is kept.
    """
    if isinstance(messages, str):
        text = messages
    else:
        msgs = _to_list(messages)
        users = [m for m in msgs if isinstance(m, Mapping) and m.get("role") == "user"]
        if not users:
            raise ValueError(f"prompt has no user message: {str(messages)[:200]!r}")
        text = users[-1].get("content")
        if isinstance(text, list):  # multi-part content: keep the text parts
            text = "".join(p.get("text", "") for p in text if isinstance(p, Mapping))
        if not isinstance(text, str):
            raise ValueError(f"user message content is not text: {text!r}")
    return strip_boxed_instruction(text) if strip_instruction else text


def questions_from_batch(raw_prompts: Sequence[Any] | None, extra_infos: Sequence[Any] | None = None, *,
                         strip_instruction: bool = False) -> list[str]:
    """One question per row: ``extra_info["question"]`` when present, else the last user message of the prompt."""
    raw = _to_list(raw_prompts) if raw_prompts is not None else None
    extra = _to_list(extra_infos) if extra_infos is not None else None
    n = len(raw) if raw is not None else (len(extra) if extra is not None else 0)
    if raw is not None and extra is not None and len(raw) != len(extra):
        raise ValueError(f"{len(raw)} prompts but {len(extra)} extra_info entries")
    out = []
    for i in range(n):
        ei = extra[i] if extra is not None else None
        q = ei.get("question") if isinstance(ei, Mapping) else None
        if isinstance(q, str) and q.strip():
            out.append(q)
            continue
        if raw is None or raw[i] is None:
            raise ValueError(f"row {i}: no question for the PRM: extra_info has no 'question' and no raw prompt "
                             "was given (set data.return_raw_chat=True or add extra_info.question)")
        out.append(question_from_messages(raw[i], strip_instruction=strip_instruction))
    return out


def _eos_ids(policy_tokenizer, eos_token_ids) -> set[int]:
    if eos_token_ids is not None:
        ids = [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids)
        return {int(i) for i in ids}
    eos = getattr(policy_tokenizer, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def segment_texts(policy_tokenizer, responses: torch.Tensor, response_mask: torch.Tensor,
                  segment_ids: torch.Tensor, *, eos_token_ids=None) -> list[list[str]]:
    """Decode every segment with the policy tokenizer (``skip_special_tokens=False``).

    A trailing EOS token of the last segment is removed before decoding (the PRM should not see it).
    Segments must be numbered 0..S_i-1 on valid tokens, each non-empty.
    """
    if responses.shape != response_mask.shape or responses.shape != segment_ids.shape:
        raise ValueError(f"responses {tuple(responses.shape)}, response_mask {tuple(response_mask.shape)} and "
                         f"segment_ids {tuple(segment_ids.shape)} must have the same shape")
    eos = _eos_ids(policy_tokenizer, eos_token_ids)
    mask = response_mask.bool().cpu()
    resp = responses.long().cpu()
    seg = segment_ids.long().cpu()
    if (seg[mask] < 0).any():
        bad = int(torch.nonzero((seg < 0) & mask)[0, 0])
        raise ValueError(f"response {bad}: segment_ids is negative on a valid token")
    pieces: list[list[int]] = []
    owners: list[int] = []
    counts: list[int] = []
    for i in range(resp.shape[0]):
        valid = mask[i]
        ids_i = resp[i][valid]
        seg_i = seg[i][valid]
        if ids_i.numel() == 0:
            counts.append(0)
            continue
        n_seg = int(seg_i.max()) + 1
        sizes = torch.bincount(seg_i, minlength=n_seg)
        if (sizes == 0).any() or (seg_i[1:] < seg_i[:-1]).any():
            raise ValueError(f"response {i}: segment ids must be contiguous, non-decreasing 0..S-1 on valid tokens")
        parts = list(torch.split(ids_i, sizes.tolist()))
        last = parts[-1]
        if eos and last.numel() > 0 and int(last[-1]) in eos:
            parts[-1] = last[:-1]
        pieces.extend(p.tolist() for p in parts)
        owners.extend([i] * n_seg)
        counts.append(n_seg)
    texts = policy_tokenizer.batch_decode(pieces, skip_special_tokens=False) if pieces else []
    out: list[list[str]] = []
    k = 0
    for c in counts:
        out.append(list(texts[k: k + c]))
        k += c
    return out


def score_batch(adapter: PRMAdapter, policy_tokenizer, responses: torch.Tensor, response_mask: torch.Tensor,
                segment_ids: torch.Tensor, questions: Sequence[str], prior_mean: float = 0.5, *,
                eos_token_ids=None, sync_num_forwards=None) -> tuple[torch.Tensor, dict[str, Any]]:
    """PRM probabilities per policy token.

    Returns ``prm_scores`` (B, L) float32 — every valid token carries the probability of its segment, 0 outside
    the mask — and the adapter's stats (``truncated_segments``, ``truncated_questions``, ``prm_tokens``,
    ``model_calls``, per-response lists under ``per_response``) plus ``response_tokens``,
    ``tokens_per_response_token`` and ``time_s`` (seconds: ``decode`` policy tokens to segment texts, ``build`` PRM
    tokenisation, ``forward`` the PRM forwards and read-out, ``map`` scores back onto policy tokens). Segments beyond the PRM's ``max_length`` get ``prior_mean`` (counted).
    """
    questions = list(questions)
    if len(questions) != responses.shape[0]:
        raise ValueError(f"{len(questions)} questions for {responses.shape[0]} responses")
    t0 = time.perf_counter()
    texts = segment_texts(policy_tokenizer, responses, response_mask, segment_ids, eos_token_ids=eos_token_ids)
    t1 = time.perf_counter()
    scores, stats = adapter.score_with_stats(questions, texts, fallback=prior_mean,
                                             sync_num_forwards=sync_num_forwards)
    t2 = time.perf_counter()
    B, L = responses.shape
    n_max = max((len(s) for s in scores), default=0)
    table = torch.zeros((B, max(n_max, 1)), dtype=torch.float32)
    for i, s in enumerate(scores):
        if s:
            table[i, : len(s)] = torch.tensor(s, dtype=torch.float32)
    mask = response_mask.bool().cpu()
    idx = segment_ids.long().cpu().clamp(min=0, max=table.shape[1] - 1)
    prm_scores = torch.gather(table, 1, idx) * mask
    response_tokens = int(mask.sum())
    stats["response_tokens"] = response_tokens
    stats["tokens_per_response_token"] = stats["prm_tokens"] / response_tokens if response_tokens else 0.0
    timing = stats.setdefault("time_s", {})
    timing["decode"] = t1 - t0
    timing["map"] = time.perf_counter() - t2
    return prm_scores.to(torch.float32), stats


def prm_metrics(prm_scores: torch.Tensor, response_mask: torch.Tensor, stats: Mapping[str, Any] | None = None,
                correctness: torch.Tensor | None = None) -> dict[str, float]:
    """Metrics of one scoring step (Python floats).

    * ``prm/tokens_per_response_token``: PRM input tokens / policy response tokens (from ``stats``).
    * ``prm/truncated_segments``: segments that got the fallback score (from ``stats``).
    * ``prm/score_mean``, ``prm/score_std``: over valid tokens (token-weighted, as the estimators see them).
    * ``prm/agreement``: fraction of responses (with at least one valid token) whose token-mean PRM score > 0.5
      agrees with the outcome (``correctness > 0.5``; pass booleans, 0/1 or the +-1 reward), if given.
    """
    mask = response_mask.bool()
    out: dict[str, float] = {}
    if stats is not None:
        if "tokens_per_response_token" in stats:
            out["prm/tokens_per_response_token"] = float(stats["tokens_per_response_token"])
        elif "prm_tokens" in stats and "response_tokens" in stats:
            rt = float(stats["response_tokens"])
            out["prm/tokens_per_response_token"] = float(stats["prm_tokens"]) / rt if rt else 0.0
        if "truncated_segments" in stats:
            out["prm/truncated_segments"] = float(stats["truncated_segments"])
        if "truncated_questions" in stats:
            out["prm/truncated_questions"] = float(stats["truncated_questions"])
    vals = prm_scores[mask].double()
    out["prm/score_mean"] = float(vals.mean()) if vals.numel() else 0.0
    out["prm/score_std"] = float(vals.std(unbiased=False)) if vals.numel() else 0.0
    if correctness is not None:
        correctness = torch.as_tensor(correctness)
        if correctness.shape[0] != prm_scores.shape[0]:
            raise ValueError(f"correctness has {correctness.shape[0]} rows, prm_scores {prm_scores.shape[0]}")
        lengths = mask.sum(-1)
        has = lengths > 0
        mean = (prm_scores * mask).sum(-1) / lengths.clamp(min=1)
        agree = (mean > 0.5) == (correctness.double() > 0.5)
        out["prm/agreement"] = float(agree[has].double().mean()) if has.any() else 0.0
    return out
