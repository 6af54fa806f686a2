"""The PRM scoring pipeline in policy-token space.

``score_batch`` takes the policy's response tokens and a segmentation of them (``segment_ids``, from
``verl_prpo.segmentation``), turns every segment into a step text with the POLICY tokenizer
(:func:`build_segment_texts`), lets the PRM adapter score the steps with the PRM's own tokenizer (which may differ),
and maps each step's probability back onto the policy tokens of its segments:
``prm_scores[i, t] = p[i, step(segment_ids[i, t])]`` on valid tokens, 0 elsewhere.

The PRM sees the response the outcome grader sees (:mod:`verl_prpo.response_text`): the valid tokens up to the
first stop token (EOS of the tokenizer or the generation config, a special chat-turn token: a response that runs on
into a new turn is cut there), special tokens skipped. A segment whose step text is empty or blank once that is
done (an EOS-only last segment, a segment after the cut, a lone separator string the PRM would drop) is merged
into the previous step (the first non-blank one when it leads): the PRM never reads a score at a separator right
after another separator, and every policy segment still gets a score. A response with no text at all gets the
prior mean on its tokens (counted as ``empty_responses``).

Questions come from the dataset: ``questions_from_batch`` prefers ``extra_info["question"]`` and falls back to
the content of the last user message of the prompt.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from verl_prpo.prm.adapters import PRMAdapter
from verl_prpo.response_text import special_token_ids, stop_token_ids

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


@dataclass
class SegmentTexts:
    """Step texts of a batch and how the policy segments map onto them.

    ``texts[i]``: the steps of response i, none empty or blank. ``segment_to_step[i][s]``: the step that policy
    segment s of response i belongs to (-1 for every segment of a response without text). Per-response counters:
    ``special_tokens_removed`` (special tokens among the valid tokens, none of which reaches the PRM),
    ``run_on_tokens`` (other tokens after the first stop token), ``merged_segments`` (segments that are not a step
    of their own), ``empty`` (1 for a response with valid tokens but no text).
    """

    texts: list[list[str]]
    segment_to_step: list[list[int]]
    special_tokens_removed: list[int] = field(default_factory=list)
    run_on_tokens: list[int] = field(default_factory=list)
    merged_segments: list[int] = field(default_factory=list)
    empty: list[int] = field(default_factory=list)


def _merge_blank_steps(pieces: list[str]) -> tuple[list[str], list[int]]:
    """Steps from segment texts: a blank text joins the previous step (or the next one while none exists yet).

    Returns the steps and, per segment, its step index (all -1 when every text is blank).
    """
    steps: list[str] = []
    owner: list[int] = []
    pending = ""  # blank texts before the first step
    for text in pieces:
        if text.strip():
            steps.append(pending + text)
            pending = ""
        elif steps:
            steps[-1] += text
        else:
            pending += text
        owner.append(len(steps) - 1)
    if steps:
        first = owner.index(0) if 0 in owner else len(owner)
        owner[:first] = [0] * first  # leading blank segments belong to the first step
    return steps, owner


def build_segment_texts(policy_tokenizer, responses: torch.Tensor, response_mask: torch.Tensor,
                        segment_ids: torch.Tensor, *, eos_token_ids=None,
                        step_text: Callable[[str], str] | None = None) -> SegmentTexts:
    """Decode every segment with the policy tokenizer into the step text the PRM scores (module docstring).

    Args:
        responses, response_mask, segment_ids: ``(B, L)``; segments numbered 0..S_i-1 on valid tokens, contiguous
            and non-decreasing, each non-empty.
        eos_token_ids: more ids that end a response (the generation config's EOS ids), besides the tokenizer's EOS
            and its special chat-turn tokens (:func:`verl_prpo.response_text.stop_token_ids`).
        step_text: what the PRM adapter makes of a step's text (``PRMAdapter.step_text``: the Qwen adapter drops
            its separator string); a step is blank if this leaves only whitespace.
    """
    if responses.shape != response_mask.shape or responses.shape != segment_ids.shape:
        raise ValueError(f"responses {tuple(responses.shape)}, response_mask {tuple(response_mask.shape)} and "
                         f"segment_ids {tuple(segment_ids.shape)} must have the same shape")
    stop = torch.tensor(sorted(stop_token_ids(policy_tokenizer, eos_token_ids)), dtype=torch.long)
    special = torch.tensor(sorted(special_token_ids(policy_tokenizer)), dtype=torch.long)
    mask = response_mask.bool().cpu()
    resp = responses.long().cpu()
    seg = segment_ids.long().cpu()
    if (seg[mask] < 0).any():
        bad = int(torch.nonzero((seg < 0) & mask)[0, 0])
        raise ValueError(f"response {bad}: segment_ids is negative on a valid token")
    pieces: list[list[int]] = []
    counts: list[int] = []
    out = SegmentTexts([], [])
    for i in range(resp.shape[0]):
        valid = mask[i]
        ids_i = resp[i][valid]
        seg_i = seg[i][valid]
        n = ids_i.numel()
        if n == 0:
            counts.append(0)
            out.special_tokens_removed.append(0)
            out.run_on_tokens.append(0)
            continue
        n_seg = int(seg_i.max()) + 1
        sizes = torch.bincount(seg_i, minlength=n_seg)
        if (sizes == 0).any() or (seg_i[1:] < seg_i[:-1]).any():
            raise ValueError(f"response {i}: segment ids must be contiguous, non-decreasing 0..S-1 on valid tokens")
        stops = torch.nonzero(torch.isin(ids_i, stop))
        cut = int(stops[0, 0]) if stops.numel() else n  # the response ends at its first stop token
        is_special = torch.isin(ids_i, special)
        out.special_tokens_removed.append(int(is_special.sum()))
        out.run_on_tokens.append(int((~is_special[cut:]).sum()))
        text_ids = ids_i[:cut].masked_fill(is_special[:cut], -1)  # -1: dropped below (special tokens)
        parts = torch.split(torch.cat([text_ids, ids_i.new_full((n - cut,), -1)]), sizes.tolist())
        pieces.extend([t for t in p.tolist() if t >= 0] for p in parts)
        counts.append(n_seg)
    decoded = policy_tokenizer.batch_decode(pieces, skip_special_tokens=True) if pieces else []
    k = 0
    for c in counts:
        texts_i = decoded[k: k + c]
        k += c
        if step_text is not None:
            texts_i = [step_text(t) for t in texts_i]
        steps, owner = _merge_blank_steps(texts_i)
        out.texts.append(steps)
        out.segment_to_step.append(owner)
        out.merged_segments.append(c - len(steps) if steps else c)
        out.empty.append(int(c > 0 and not steps))
    return out


def segment_texts(policy_tokenizer, responses: torch.Tensor, response_mask: torch.Tensor,
                  segment_ids: torch.Tensor, *, eos_token_ids=None) -> list[list[str]]:
    """The step texts of every response (:func:`build_segment_texts`): never an empty or blank string, never the
    text of a special token; a response without text has no step. A step may hold several policy segments."""
    return build_segment_texts(policy_tokenizer, responses, response_mask, segment_ids,
                               eos_token_ids=eos_token_ids).texts


def score_batch(adapter: PRMAdapter, policy_tokenizer, responses: torch.Tensor, response_mask: torch.Tensor,
                segment_ids: torch.Tensor, questions: Sequence[str], prior_mean: float = 0.5, *,
                eos_token_ids=None, sync_num_forwards=None) -> tuple[torch.Tensor, dict[str, Any]]:
    """PRM probabilities per policy token.

    Returns ``prm_scores`` (B, L) float32 — every valid token carries the probability of its segment's step, 0
    outside the mask — and the adapter's stats (``truncated_segments``, ``truncated_questions``, ``prm_tokens``,
    ``segments`` (steps scored), ``model_calls``, per-response lists under ``per_response``) plus
    ``special_tokens_removed``, ``run_on_tokens``, ``merged_segments``, ``empty_responses`` (totals and per
    response, :class:`SegmentTexts`), ``response_tokens``, ``tokens_per_response_token``, ``step_ids`` ((B, L) long: the step of every valid token, the
    segment ids with merged segments renumbered into their step, -1 outside the mask) and ``time_s`` (seconds:
    ``decode`` policy tokens to step texts, ``build`` PRM tokenisation, ``forward`` the PRM forwards and read-out,
    ``map`` scores back onto policy tokens). Steps beyond the PRM's ``max_length`` and responses without text get
    ``prior_mean`` (counted). ``eos_token_ids``: extra stop ids (the generation config's EOS).
    """
    questions = list(questions)
    if len(questions) != responses.shape[0]:
        raise ValueError(f"{len(questions)} questions for {responses.shape[0]} responses")
    t0 = time.perf_counter()
    st = build_segment_texts(policy_tokenizer, responses, response_mask, segment_ids, eos_token_ids=eos_token_ids,
                             step_text=adapter.step_text)
    t1 = time.perf_counter()
    scores, stats = adapter.score_with_stats(questions, st.texts, fallback=prior_mean,
                                             sync_num_forwards=sync_num_forwards)
    t2 = time.perf_counter()
    B, L = responses.shape
    # (B, S) per policy segment: its step's score (a response without text: the prior mean) and its step, so that
    # the estimators count the steps the PRM scored (a merged segment shares its step's id; a response without
    # text keeps its segment ids)
    n_max = max((len(m) for m in st.segment_to_step), default=0)
    table = torch.zeros((B, max(n_max, 1)), dtype=torch.float32)
    step_table = torch.full((B, max(n_max, 1)), -1, dtype=torch.long)
    for i, (s, owner) in enumerate(zip(scores, st.segment_to_step)):
        if len(s) != (max(owner) + 1 if owner else 0):
            raise RuntimeError(f"response {i}: the PRM returned {len(s)} scores for {max(owner, default=-1) + 1} "
                               "steps")
        if owner:
            per_segment = [s[k] if k >= 0 else float(prior_mean) for k in owner]
            table[i, : len(owner)] = torch.tensor(per_segment, dtype=torch.float32)
            step_table[i, : len(owner)] = torch.tensor(owner) if owner[0] >= 0 else torch.arange(len(owner))
    mask = response_mask.bool().cpu()
    idx = segment_ids.long().cpu().clamp(min=0, max=table.shape[1] - 1)
    prm_scores = torch.gather(table, 1, idx) * mask
    stats["step_ids"] = torch.gather(step_table, 1, idx).masked_fill(~mask, -1)
    response_tokens = int(mask.sum())
    stats["response_tokens"] = response_tokens
    stats["tokens_per_response_token"] = stats["prm_tokens"] / response_tokens if response_tokens else 0.0
    per = stats.setdefault("per_response", {})
    for key, values in (("special_tokens_removed", st.special_tokens_removed), ("run_on_tokens", st.run_on_tokens),
                        ("merged_segments", st.merged_segments), ("empty_responses", st.empty)):
        per[key] = list(values)
        stats[key] = int(sum(values))
    timing = stats.setdefault("time_s", {})
    timing["decode"] = t1 - t0
    timing["map"] = time.perf_counter() - t2
    return prm_scores.to(torch.float32), stats


def prm_metrics(prm_scores: torch.Tensor, response_mask: torch.Tensor, stats: Mapping[str, Any] | None = None,
                correctness: torch.Tensor | None = None) -> dict[str, float]:
    """Metrics of one scoring step (Python floats).

    * ``prm/tokens_per_response_token``: PRM input tokens / policy response tokens (from ``stats``).
    * ``prm/truncated_segments``: segments that got the fallback score (from ``stats``).
    * ``prm/special_tokens_removed``, ``prm/run_on_tokens``, ``prm/merged_segments``, ``prm/empty_responses``:
      what the step texts left out or merged (from ``stats``, :class:`SegmentTexts`).
    * ``prm/score_mean``, ``prm/score_std``: over valid tokens (token-weighted, as the estimators see them).
    * ``prm/agreement``: fraction of responses (with at least one valid token) whose token-mean PRM score > 0.5
      agrees with the outcome (``correctness > 0.5``; pass booleans, 0/1 or the +-1 outcome score), if given.
      The trainer passes the outcome reward without the KL penalty (``token_level_scores``).
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
        for key in ("special_tokens_removed", "run_on_tokens", "merged_segments", "empty_responses"):
            if key in stats:
                out[f"prm/{key}"] = float(stats[key])
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
