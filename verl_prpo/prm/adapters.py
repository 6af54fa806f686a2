"""PRM adapters: one interface over the process reward models PRPO can use.

``PRMAdapter.score(questions, segments)`` returns one probability in [0, 1] per segment. Two layouts:

``QwenMathPRMAdapter`` (Qwen2.5-Math-PRM family)
    chat template (``apply_chat_template(..., tokenize=False, add_generation_prompt=False)``) of
    ``[system = config.system_prompt, user = question, assistant = "<extra_0>".join(segments) + "<extra_0>"]``,
    tokenised as one string; the score of segment s is ``softmax(logits[pos_s])[positive_label]`` where
    ``pos_s`` is the s-th ``<extra_0>`` token. Occurrences of the separator *inside* a segment's text are removed
    first (otherwise the positions would shift).

``TokenClassificationPRMAdapter`` (any ``AutoModelForTokenClassification``, e.g. one trained with TRL's
``PRMTrainer``). The input is what TRL's ``PRMTrainer.tokenize_row`` builds for training, each piece tokenised on
its own with ``add_special_tokens=False``::

    [bos_token_id if the tokenizer has one] + ids(question)
    + ids(segment_0) + ids(separator) + ids(segment_1) + ids(separator) + ... + ids(segment_{S-1}) + ids(separator)

There is no separator between the question and the first segment (TRL puts none). The label of step s is read
at the *last token* of the separator that follows it (TRL writes the step's label there), as
``softmax(logits[pos_s])[positive_label]``.

Common rules:

* All segments of one response are scored in ONE forward pass; responses are grouped into forwards by a token
  budget, longest first so that a forward's responses have similar lengths: right-padded batches
  (``max_tokens_per_batch`` >= batch size x longest input of the batch), with an attention mask only for a
  non-causal PRM (``forward_mode``: a causal decoder needs none with right padding), or one packed row per forward
  without padding (``forward_mode="packed"``). One model call per forward, so model calls <= number of non-empty
  responses; one device-to-host copy per ``score`` call.
* Inputs longer than ``max_length``: the question is left-truncated first (its end is kept, down to nothing if
  needed); if it still does not fit, the segments that do not fit are dropped from the end. A dropped segment gets
  the explicit ``fallback`` score (the prior mean, 0.5 by default) and is counted in ``stats["truncated_segments"]``;
  whatever room the kept segments leave goes back to the end of the question. The PRM is causal, so the kept
  segments' scores do not depend on the dropped ones. Never a silent 0. (Qwen: a truncated input is assembled from
  separately tokenised pieces — template head, question, segments, template tail — so a token boundary can differ
  from tokenising the whole string; inputs that fit always use the whole-string reference tokenisation.)
* An empty segment list gives an empty score list and no model call.
* A NaN score or one outside [0, 1] raises ``ValueError`` naming the response index.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from verl_prpo.prm.config import (
    PRMConfig,
    QWEN_STEP_SEPARATOR,
    TOKEN_CLASSIFICATION_STEP_SEPARATOR,
)

logger = logging.getLogger(__name__)

#: how the forwards are laid out (``PRMAdapter.forward_mode``):
#: ``masked``  right-padded batches with an attention mask;
#: ``causal``  right-padded batches without a mask (exact for causal decoders; lets SDPA take its causal kernels);
#: ``packed``  all responses of a forward in ONE row, no padding, restarted ``position_ids`` (transformers builds
#:             a block-diagonal causal mask; efficient with varlen attention such as flash-attention, but SDPA
#:             then attends over the whole row: see ``benchmarks/bench_prm.py``);
#: ``auto``    ``causal`` for a causal decoder, ``masked`` otherwise.
FORWARD_MODES = ("auto", "masked", "causal", "packed")

_Q_SENTINEL = "\u2063PRPO_QUESTION\u2063"
_A_SENTINEL = "\u2063PRPO_ANSWER\u2063"


@dataclass
class PRMInputs:
    """The PRM input of one response."""

    input_ids: list[int]
    score_positions: list[int]  # index in input_ids where the score of each KEPT segment is read
    num_segments: int  # segments given
    question_tokens: int  # question tokens kept
    question_tokens_dropped: int  # question tokens removed by left truncation

    @property
    def num_kept(self) -> int:
        return len(self.score_positions)

    @property
    def num_dropped(self) -> int:
        return self.num_segments - self.num_kept

    @property
    def question_truncated(self) -> bool:
        return self.question_tokens_dropped > 0


@dataclass
class ScoreStats:
    """Counters of one ``score_with_stats`` call (per response lists and totals)."""

    truncated_segments: list[int] = field(default_factory=list)  # per response: segments given the fallback
    truncated_questions: list[int] = field(default_factory=list)  # per response: 1 if the question was cut
    prm_tokens: list[int] = field(default_factory=list)  # per response: PRM tokens fed (no padding)
    num_segments: list[int] = field(default_factory=list)  # per response
    model_calls: int = 0  # forwards on real data
    dummy_model_calls: int = 0  # forwards added only to keep sharded ranks in step
    padded_tokens: int = 0  # batch size x length summed over forwards (padding included)

    def as_dict(self) -> dict[str, Any]:
        return {
            "truncated_segments": int(sum(self.truncated_segments)),
            "truncated_questions": int(sum(self.truncated_questions)),
            "prm_tokens": int(sum(self.prm_tokens)),
            "segments": int(sum(self.num_segments)),
            "responses": len(self.num_segments),
            "model_calls": self.model_calls,
            "dummy_model_calls": self.dummy_model_calls,
            "padded_tokens": self.padded_tokens,
            "per_response": {
                "truncated_segments": list(self.truncated_segments),
                "truncated_questions": list(self.truncated_questions),
                "prm_tokens": list(self.prm_tokens),
                "num_segments": list(self.num_segments),
            },
        }


def _logits_of(output: Any) -> torch.Tensor:
    """Logits from a model output: a tensor, an object with ``.logits``, a dict, or a tuple (first element)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"PRM output of type {type(output).__name__} has no logits tensor")


def start_scoring(inputs: list["PRMInputs | None"], fallback: float) -> tuple["ScoreStats", list[list[float]]]:
    """What every backend does before its forwards: check the fallback score, record the per-row input counters
    and fill every segment with the fallback (kept segments are overwritten by the model's scores)."""
    if not (0.0 <= float(fallback) <= 1.0) or math.isnan(float(fallback)):
        raise ValueError(f"fallback score must be in [0, 1], got {fallback}")
    stats = ScoreStats()
    for x in inputs:
        stats.truncated_segments.append(x.num_dropped if x is not None else 0)
        stats.truncated_questions.append(int(x.question_truncated) if x is not None else 0)
        stats.prm_tokens.append(len(x.input_ids) if x is not None and x.num_kept > 0 else 0)
        stats.num_segments.append(x.num_segments if x is not None else 0)
    scores = [[float(fallback)] * (x.num_segments if x is not None else 0) for x in inputs]
    return stats, scores


class PRMAdapter:
    """Scores the segments of responses with a PRM. Subclasses define ``build_inputs``."""

    kind: str = "base"

    def __init__(self, model: torch.nn.Module, tokenizer, *, step_separator: str, positive_label: int = 1,
                 max_length: int = 4096, max_tokens_per_batch: int = 16384, device: str | torch.device = "cpu",
                 expected_num_labels: int | None = None, forward_mode: str = "auto") -> None:
        if max_tokens_per_batch < max_length:
            raise ValueError(f"max_tokens_per_batch ({max_tokens_per_batch}) < max_length ({max_length})")
        self.model = model
        self.tokenizer = tokenizer
        self.step_separator = step_separator
        self.positive_label = int(positive_label)
        self.max_length = int(max_length)
        self.max_tokens_per_batch = int(max_tokens_per_batch)
        self.device = torch.device(device)
        self.expected_num_labels = expected_num_labels
        if forward_mode not in FORWARD_MODES:
            raise ValueError(f"forward_mode must be one of {FORWARD_MODES}, got {forward_mode!r}")
        self.forward_mode = forward_mode
        self._inspected: torch.nn.Module | None = None
        self._causal = False
        self._extra_kwargs: dict[str, Any] = {}  # use_cache=False: no KV cache for a scoring forward
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_token_id = int(pad)
        self.total_model_calls = 0  # over the adapter's lifetime
        self.last_stats: dict[str, Any] | None = None

    # ------------------------------------------------------------------ inputs
    def step_text(self, text: str) -> str:
        """A step's text as this PRM will read it (the scoring pipeline merges steps this leaves blank)."""
        return text

    def build_inputs(self, question: str, segments: list[str]) -> PRMInputs:  # pragma: no cover - abstract
        raise NotImplementedError

    def _encode(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _fit(self, head: list[int], question: list[int], mid: list[int], pieces: list[list[int]],
             tail: list[int], num_segments: int) -> PRMInputs:
        """Assemble head + question + mid + pieces + tail within ``max_length``.

        Each piece is a segment's tokens followed by its separator; its score is read at the piece's last token.
        Truncation order: left-truncate the question (down to 0 tokens), then drop whole pieces from the end; the
        room the kept pieces leave is given back to the end of the question.
        """
        fixed = len(head) + len(mid) + len(tail)
        seg_total = sum(len(p) for p in pieces)
        budget = self.max_length - fixed
        if budget < 0:
            raise ValueError(f"prm.max_length={self.max_length} is smaller than the fixed template "
                             f"({fixed} tokens)")
        kept_pieces: list[list[int]] = pieces
        used = seg_total
        if seg_total > budget:  # even without the question: keep the pieces that fit, in order
            kept_pieces, used = [], 0
            for p in pieces:
                if used + len(p) > budget:
                    break
                kept_pieces.append(p)
                used += len(p)
        room = budget - used  # what is left goes to the end of the question
        kept_q = question[len(question) - room:] if 0 < room < len(question) else (question if room > 0 else [])
        ids = head + kept_q + mid
        positions = []
        for p in kept_pieces:
            ids.extend(p)
            positions.append(len(ids) - 1)
        ids.extend(tail)
        return PRMInputs(ids, positions, num_segments, len(kept_q), len(question) - len(kept_q))

    # ------------------------------------------------------------------ model
    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 position_ids: torch.Tensor | None = None) -> torch.Tensor:
        self.total_model_calls += 1
        self._inspect_model()
        kw: dict[str, Any] = {"input_ids": input_ids, **self._extra_kwargs}
        if attention_mask is not None:
            kw["attention_mask"] = attention_mask
        if position_ids is not None:
            kw["position_ids"] = position_ids
        return _logits_of(self.model(**kw))

    def resolved_forward_mode(self) -> str:
        """``forward_mode`` with ``auto`` resolved: ``causal`` for a causal decoder PRM, ``masked`` otherwise."""
        if self.forward_mode != "auto":
            return self.forward_mode
        self._inspect_model()
        return "causal" if self._causal else "masked"

    def _inspect_model(self) -> None:
        """What the model accepts and is, looked up once per model object (tests and callers may swap it)."""
        if self._inspected is not self.model:
            self._causal = is_causal_model(self.model)
            self._extra_kwargs = {"use_cache": False} if _accepts(self.model, "use_cache") else {}
            self._inspected = self.model

    def _probabilities(self, logits_at_positions: torch.Tensor) -> torch.Tensor:
        """(N, C) logits at the score positions -> (N,) probability of the positive label."""
        if logits_at_positions.dim() != 2:
            raise ValueError(f"PRM logits must be (batch, tokens, labels); got {tuple(logits_at_positions.shape)}")
        n_labels = logits_at_positions.shape[-1]
        if self.expected_num_labels is not None and n_labels != self.expected_num_labels:
            raise ValueError(f"{self.kind} PRM must return {self.expected_num_labels} logits per token, "
                             f"got {n_labels} (is the checkpoint a PRM with a classification head?)")
        if not 0 <= self.positive_label < n_labels:
            raise ValueError(f"prm.positive_label={self.positive_label} but the PRM has {n_labels} labels")
        probs = torch.softmax(logits_at_positions.float(), dim=-1)
        return probs[:, self.positive_label]

    def _plan(self, inputs: list[PRMInputs | None], packed: bool = False) -> list[list[int]]:
        """Group responses (indices with at least one kept segment) into forwards within the token budget.

        Longest first, so that the responses of one padded forward have similar lengths (the padding is the
        difference to the longest of its forward). Padded: batch size x longest <= ``max_tokens_per_batch``;
        packed (one row, no padding): sum of lengths <= ``max_tokens_per_batch``.
        """
        order = sorted((i for i, x in enumerate(inputs) if x is not None and x.num_kept > 0),
                       key=lambda i: -len(inputs[i].input_ids))
        batches: list[list[int]] = []
        current: list[int] = []
        cost = 0
        for i in order:
            n = len(inputs[i].input_ids)
            # longest first: the first response of a padded batch is its longest
            new_cost = cost + n if packed else (len(current) + 1) * (len(inputs[current[0]].input_ids)
                                                                     if current else n)
            if current and new_cost > self.max_tokens_per_batch:
                batches.append(current)
                current, new_cost = [], n
            current.append(i)
            cost = new_cost
        if current:
            batches.append(current)
        return batches

    def _dummy_forward(self) -> None:
        ids = torch.full((1, 1), self.pad_token_id, dtype=torch.long, device=self.device)
        with torch.no_grad():
            self._forward(ids, torch.ones_like(ids) if self.resolved_forward_mode() == "masked" else None)

    def _batch_tensors(self, inputs: list[PRMInputs], mode: str) -> dict[str, torch.Tensor]:
        """Host tensors of one forward: ids (+ mask or position ids) and the flat (row, column) score positions."""
        lengths = [len(x.input_ids) for x in inputs]
        rows: list[int] = []
        cols: list[int] = []
        if mode == "packed":
            ids = torch.tensor([t for x in inputs for t in x.input_ids], dtype=torch.long).unsqueeze(0)
            pos = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
            offset = 0
            for x, n in zip(inputs, lengths):
                cols.extend(offset + c for c in x.score_positions)
                offset += n
            rows = [0] * len(cols)
            out = {"input_ids": ids, "position_ids": pos}
        else:
            width = max(lengths)
            ids = torch.full((len(inputs), width), self.pad_token_id, dtype=torch.long)
            for r, x in enumerate(inputs):
                ids[r, : lengths[r]] = torch.tensor(x.input_ids, dtype=torch.long)
                rows.extend([r] * x.num_kept)
                cols.extend(x.score_positions)
            out = {"input_ids": ids}
            if mode == "masked":
                out["attention_mask"] = (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()
        out["rows"] = torch.tensor(rows, dtype=torch.long)
        out["cols"] = torch.tensor(cols, dtype=torch.long)
        return out

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":  # pinned host memory: the copy does not block the host
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    # ------------------------------------------------------------------ scoring
    def score(self, questions: list[str], segments: list[list[str]], *, fallback: float = 0.5) -> list[list[float]]:
        """One probability in [0, 1] per segment; the counters of the call are left in ``self.last_stats``."""
        scores, _ = self.score_with_stats(questions, segments, fallback=fallback)
        return scores

    def score_with_stats(self, questions: list[str], segments: list[list[str]], *, fallback: float = 0.5,
                         sync_num_forwards: Callable[[int], int] | None = None
                         ) -> tuple[list[list[float]], dict[str, Any]]:
        """Score every response; returns ``(scores, stats)`` (see ``ScoreStats.as_dict``).

        ``sync_num_forwards(n) -> n_max`` (optional) lets sharded ranks agree on the number of forwards: this rank
        runs ``n_max - n`` extra one-token forwards so that collective parameter gathers stay matched.

        The forwards follow ``resolved_forward_mode()``; their inputs are copied to the device once per forward
        (pinned, asynchronous on CUDA), the probabilities stay on the device until ONE copy back after the last
        forward. ``stats["time_s"]`` holds the seconds spent building the inputs (``build``: PRM tokenisation) and
        in the forwards including that copy back (``forward``).
        """
        if len(questions) != len(segments):
            raise ValueError(f"{len(questions)} questions but {len(segments)} segment lists")
        if not (0.0 <= float(fallback) <= 1.0) or math.isnan(float(fallback)):
            raise ValueError(f"fallback score must be in [0, 1], got {fallback}")
        t0 = time.perf_counter()
        inputs: list[PRMInputs | None] = []
        for i, (q, segs) in enumerate(zip(questions, segments)):
            if not isinstance(q, str):
                raise TypeError(f"response {i}: question must be a string, got {type(q).__name__}")
            segs = list(segs)
            if not segs:
                inputs.append(None)
                continue
            x = self.build_inputs(q, segs)
            inputs.append(x)
            if x.num_dropped:
                logger.debug("response %d: %d of %d segments beyond prm.max_length get the fallback score %.3f",
                             i, x.num_dropped, len(segs), fallback)
        t1 = time.perf_counter()
        scores, out = self.score_inputs(inputs, fallback=fallback, sync_num_forwards=sync_num_forwards)
        out["time_s"]["build"] = t1 - t0
        return scores, out

    def score_inputs(self, inputs: list[PRMInputs | None], *, fallback: float = 0.5,
                     sync_num_forwards: Callable[[int], int] | None = None
                     ) -> tuple[list[list[float]], dict[str, Any]]:
        """The forward part of ``score_with_stats``, on inputs already built (``None`` = a response without
        segments): plan, forwards, read-out. Also the entry point of ``benchmarks/gpu_check.py``."""
        t1 = time.perf_counter()
        stats, scores = start_scoring(inputs, fallback)
        mode = self.resolved_forward_mode()
        batches = self._plan(inputs, packed=mode == "packed")
        n_target = sync_num_forwards(len(batches)) if sync_num_forwards is not None else len(batches)
        picked: list[torch.Tensor] = []
        with torch.no_grad():
            for batch in batches:
                host = self._batch_tensors([inputs[i] for i in batch], mode)
                ids = self._to_device(host["input_ids"])
                mask = self._to_device(host["attention_mask"]) if "attention_mask" in host else None
                pos = self._to_device(host["position_ids"]) if "position_ids" in host else None
                logits = self._forward(ids, mask, pos)
                if logits.dim() != 3 or logits.shape[:2] != ids.shape:
                    raise ValueError(f"PRM logits must have shape (batch, tokens, labels) = {tuple(ids.shape)} + "
                                     f"(labels,), got {tuple(logits.shape)}")
                rows = self._to_device(host["rows"])
                cols = self._to_device(host["cols"])
                picked.append(self._probabilities(logits[rows, cols]))
                stats.model_calls += 1
                stats.padded_tokens += int(ids.numel())
            probs = torch.cat(picked).cpu().tolist() if picked else []  # the one device -> host copy
        k = 0
        for batch in batches:
            for i in batch:
                x = inputs[i]
                vals = probs[k: k + x.num_kept]
                k += x.num_kept
                for v in vals:
                    if not (v == v) or v < 0.0 or v > 1.0:  # NaN or out of range
                        raise ValueError(f"PRM score {v} of response {i} is NaN or outside [0, 1]")
                scores[i][: x.num_kept] = vals
        for _ in range(max(n_target - len(batches), 0)):
            self._dummy_forward()
            stats.dummy_model_calls += 1
        out = stats.as_dict()
        out["forward_mode"] = mode
        out["time_s"] = {"build": 0.0, "forward": time.perf_counter() - t1}
        self.last_stats = out
        return scores, out


def _accepts(model: torch.nn.Module, name: str) -> bool:
    """Whether ``model.forward`` takes the keyword ``name`` (explicitly or through ``**kwargs``)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def is_causal_model(model: torch.nn.Module) -> bool:
    """True when every attention module of ``model`` declares ``is_causal = True`` (decoder-only transformers).

    For such a model a right-padded batch needs no attention mask: a real token only attends to the tokens before
    it, which are all real, so its output is the same with or without the mask (padding positions are never read).
    An encoder (``is_causal = False``) or a model that declares nothing keeps the mask.
    """
    flags = [m.is_causal for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)
             and "attention" in type(m).__name__.lower()]
    return bool(flags) and all(flags)


class TokenClassificationPRMAdapter(PRMAdapter):
    """Generic ``AutoModelForTokenClassification`` PRM in TRL's ``PRMTrainer`` layout (see the module docstring)."""

    kind = "token_classification"

    def __init__(self, model, tokenizer, *, step_separator: str = TOKEN_CLASSIFICATION_STEP_SEPARATOR, **kw) -> None:
        super().__init__(model, tokenizer, step_separator=step_separator, **kw)
        self.separator_ids = self._encode(step_separator)
        if not self.separator_ids:
            raise ValueError(f"prm.step_separator {step_separator!r} encodes to no token")
        self.head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []

    def build_inputs(self, question: str, segments: list[str]) -> PRMInputs:
        pieces = [self._encode(s) + self.separator_ids for s in segments]
        return self._fit(list(self.head), self._encode(question), [], pieces, [], len(segments))


class QwenMathPRMAdapter(PRMAdapter):
    """Qwen2.5-Math-PRM: chat template, ``<extra_0>`` after every step, 2-class head (see the module docstring)."""

    kind = "qwen_math_prm"

    def __init__(self, model, tokenizer, *, step_separator: str = QWEN_STEP_SEPARATOR,
                 system_prompt: str = "", **kw) -> None:
        kw.setdefault("expected_num_labels", 2)
        super().__init__(model, tokenizer, step_separator=step_separator, **kw)
        sep = self._encode(step_separator)
        if len(sep) != 1:
            raise ValueError(f"the Qwen PRM adapter needs prm.step_separator {step_separator!r} to be one token "
                             f"of the PRM tokenizer; it encodes to {sep}")
        self.separator_id = sep[0]
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the Qwen PRM adapter needs a tokenizer with a chat template")
        self.system_prompt = system_prompt
        # split the rendered template into head / question / mid / answer / tail (used when truncating)
        text = self._render(_Q_SENTINEL, _A_SENTINEL)
        qi, ai = text.find(_Q_SENTINEL), text.find(_A_SENTINEL)
        if qi < 0 or ai < 0 or ai < qi:
            raise ValueError("could not locate the user and assistant contents in the PRM chat template")
        self._head_text = text[:qi]
        self._mid_text = text[qi + len(_Q_SENTINEL): ai]
        self._tail_text = text[ai + len(_A_SENTINEL):]

    def _messages(self, question: str, answer: str) -> list[dict[str, str]]:
        msgs = []
        if self.system_prompt:
            msgs.append({"role": "system", "content": self.system_prompt})
        msgs.append({"role": "user", "content": question})
        msgs.append({"role": "assistant", "content": answer})
        return msgs

    def _render(self, question: str, answer: str) -> str:
        return self.tokenizer.apply_chat_template(self._messages(question, answer), tokenize=False,
                                                  add_generation_prompt=False)

    def step_text(self, text: str) -> str:
        """The separator string inside a step is dropped (it would shift the score positions)."""
        return text.replace(self.step_separator, "")

    def build_inputs(self, question: str, segments: list[str]) -> PRMInputs:
        segs = [self.step_text(s) for s in segments]
        answer = "".join(s + self.step_separator for s in segs)
        text = self._render(question, answer)
        ids = self._encode(text)
        positions = [j for j, t in enumerate(ids) if t == self.separator_id]
        if len(ids) <= self.max_length and len(positions) == len(segs):
            # the reference path: the whole conversation tokenised as one string
            return PRMInputs(ids, positions, len(segs), len(self._encode(question)), 0)
        # too long (or the separator also occurs in the question): assemble piece by piece
        pieces = [self._encode(s) + [self.separator_id] for s in segs]
        return self._fit(self._encode(self._head_text), self._encode(question), self._encode(self._mid_text),
                         pieces, self._encode(self._tail_text), len(segs))


# ---------------------------------------------------------------------------------------------------- loading
def _torch_dtype(name: str, device: torch.device) -> torch.dtype:
    """The parameter dtype for COMPUTE on ``device``: ``prm.dtype`` on an accelerator, float32 on CPU.

    Pass the device the forwards run on, not the device the weights are loaded to: an offloaded or sharded PRM
    that computes on a GPU is loaded in ``prm.dtype`` even though its weights first land in host memory.
    """
    if torch.device(device).type == "cpu":
        return torch.float32  # bf16 matmuls on CPU are slow and less accurate; always float32 there
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


compute_dtype = _torch_dtype


#: architecture name of the Qwen2.5-Math-PRM family, loaded natively (``verl_prpo.prm.qwen_prm_model``)
QWEN_PRM_ARCHITECTURE = "Qwen2ForProcessRewardModel"


def _architectures(model_config) -> list[str]:
    return [str(a) for a in (getattr(model_config, "architectures", None) or [])]


def is_native_qwen_prm(model_config) -> bool:
    """True when the checkpoint declares ``Qwen2ForProcessRewardModel`` (loaded without its remote code)."""
    return QWEN_PRM_ARCHITECTURE in _architectures(model_config)


def resolve_adapter_kind(config: PRMConfig, model_config=None, tokenizer=None) -> str:
    """``auto`` -> ``qwen_math_prm`` if the architectures name Qwen2ForProcessRewardModel, or the tokenizer has
    ``<extra_0>`` and a chat template; ``token_classification`` otherwise."""
    if config.adapter != "auto":
        return config.adapter
    if is_native_qwen_prm(model_config):
        return "qwen_math_prm"
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        vocab = tokenizer.get_vocab()
        if QWEN_STEP_SEPARATOR in vocab:
            return "qwen_math_prm"
    return "token_classification"


def resolve_step_separator(config: PRMConfig, kind: str, model_config=None) -> str:
    if config.step_separator is not None:
        return config.step_separator
    from_model = getattr(model_config, "step_separator", None)
    if isinstance(from_model, str) and from_model:
        return from_model
    return QWEN_STEP_SEPARATOR if kind == "qwen_math_prm" else TOKEN_CLASSIFICATION_STEP_SEPARATOR


def load_model_config(config: PRMConfig):
    """The PRM's config, without running checkpoint code for architectures this package implements.

    ``config.json`` is read as a plain dict first; a ``Qwen2ForProcessRewardModel`` checkpoint then gets the stock
    ``Qwen2Config`` whatever its ``auto_map`` says (and whatever ``prm.trust_remote_code`` is). Any other
    checkpoint goes through ``AutoConfig`` with ``prm.trust_remote_code``.
    """
    from transformers import AutoConfig, PretrainedConfig, Qwen2Config

    raw, _ = PretrainedConfig.get_config_dict(config.model_path)
    if QWEN_PRM_ARCHITECTURE in (raw.get("architectures") or []):
        if raw.get("model_type", "qwen2") != "qwen2":
            raise ValueError(f"prm.model_path={config.model_path}: architecture {QWEN_PRM_ARCHITECTURE} with "
                             f"model_type {raw.get('model_type')!r}; expected 'qwen2'")
        return Qwen2Config.from_pretrained(config.model_path)
    return AutoConfig.from_pretrained(config.model_path, trust_remote_code=config.trust_remote_code)


def _from_pretrained(auto_cls, path: str, **kw):
    try:
        return auto_cls.from_pretrained(path, attn_implementation="sdpa", **kw)
    except (ValueError, ImportError, TypeError) as exc:  # a remote-code model without sdpa support
        logger.info("loading %s with sdpa failed (%r); using the model's default attention", path, exc)
        return auto_cls.from_pretrained(path, **kw)


def _device_map(device: torch.device) -> dict:
    """Load straight into accelerator memory (no transient host copy per rank); CPU loads need no map."""
    device = torch.device(device)
    return {} if device.type == "cpu" else {"device_map": str(device)}


def _load_native_qwen_prm(config: PRMConfig, model_config, dtype: torch.dtype,
                          device: torch.device) -> torch.nn.Module:
    from verl_prpo.prm.qwen_prm_model import Qwen2ForProcessRewardModel

    model, info = Qwen2ForProcessRewardModel.from_pretrained(
        config.model_path, config=model_config, dtype=dtype, attn_implementation="sdpa", output_loading_info=True,
        **_device_map(device))
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ValueError(f"prm.model_path={config.model_path}: the {QWEN_PRM_ARCHITECTURE} checkpoint lacks "
                         f"{len(missing)} weights (e.g. {missing[:4]}); expected model.*, score.0.*, score.2.*")
    return model


def load_tokenizer(config: PRMConfig, model_config=None):
    """The PRM's tokenizer (remote code only for checkpoints this package does not implement natively)."""
    from transformers import AutoTokenizer

    native = is_native_qwen_prm(model_config)
    return AutoTokenizer.from_pretrained(config.model_path, trust_remote_code=config.trust_remote_code and not native)


def build_empty_model(config: PRMConfig, kind: str, model_config, dtype: torch.dtype) -> torch.nn.Module:
    """The PRM's module tree on the ``meta`` device (no memory): for sizing and for ranks that receive their
    shard from rank 0. Same class selection as ``load_model``."""
    from transformers import AutoModel, AutoModelForTokenClassification

    archs = _architectures(model_config)
    auto_map = getattr(model_config, "auto_map", None) or {}
    with torch.device("meta"):
        if is_native_qwen_prm(model_config):
            from verl_prpo.prm.qwen_prm_model import Qwen2ForProcessRewardModel

            model = Qwen2ForProcessRewardModel._from_config(model_config, dtype=dtype, attn_implementation="sdpa")
        elif kind == "qwen_math_prm" and ("AutoModel" in auto_map or not any(a.endswith("ForTokenClassification")
                                                                             for a in archs)):
            model = AutoModel.from_config(model_config, trust_remote_code=config.trust_remote_code, dtype=dtype)
        else:
            model = AutoModelForTokenClassification.from_config(model_config, dtype=dtype,
                                                                trust_remote_code=config.trust_remote_code)
    model.eval()
    model.requires_grad_(False)
    return model


def load_model(config: PRMConfig, kind: str, device: torch.device, model_config=None,
               dtype: torch.dtype | None = None) -> torch.nn.Module:
    """``from_pretrained`` on ``config.model_path`` (a directory or a hub name), eval mode, on ``device``.

    * architecture ``Qwen2ForProcessRewardModel``: the native class of ``qwen_prm_model`` (never remote code);
    * a stock ``...ForTokenClassification`` architecture: ``AutoModelForTokenClassification``;
    * another Qwen-style PRM that ships its own class (``auto_map``): ``AutoModel``, which needs
      ``prm.trust_remote_code=true``.

    ``dtype`` defaults to ``prm.dtype`` on an accelerator and float32 on CPU.
    """
    from transformers import AutoModel, AutoModelForTokenClassification

    if dtype is None:
        dtype = _torch_dtype(config.dtype, device)
    archs = _architectures(model_config)
    auto_map = getattr(model_config, "auto_map", None) or {}
    if is_native_qwen_prm(model_config):
        model = _load_native_qwen_prm(config, model_config, dtype, device)
    elif kind == "qwen_math_prm" and ("AutoModel" in auto_map or not any(a.endswith("ForTokenClassification")
                                                                         for a in archs)):
        if "AutoModel" in auto_map and not config.trust_remote_code:
            raise ValueError(f"prm.model_path={config.model_path} ships its own model class "
                             f"({auto_map['AutoModel']}, architectures {archs}); set prm.trust_remote_code=true to "
                             f"run it (only for code you trust)")
        model = _from_pretrained(AutoModel, config.model_path, trust_remote_code=config.trust_remote_code,
                                 dtype=dtype, **_device_map(device))
    else:
        model = _from_pretrained(AutoModelForTokenClassification, config.model_path,
                                 trust_remote_code=config.trust_remote_code, dtype=dtype, **_device_map(device))
    model.eval()
    model.requires_grad_(False)
    return model.to(device)


def make_adapter(config: PRMConfig, model: torch.nn.Module, tokenizer, *, kind: str, device,
                 model_config=None) -> PRMAdapter:
    """Wrap an already loaded model and tokenizer in the adapter for ``kind``."""
    sep = resolve_step_separator(config, kind, model_config)
    common = dict(step_separator=sep, positive_label=config.positive_label, max_length=config.max_length,
                  max_tokens_per_batch=config.max_tokens_per_batch, device=device)
    if kind == "qwen_math_prm":
        return QwenMathPRMAdapter(model, tokenizer, system_prompt=config.system_prompt, **common)
    if kind == "token_classification":
        return TokenClassificationPRMAdapter(model, tokenizer, **common)
    raise ValueError(f"prm.adapter: unknown adapter {kind!r}")


def load_prm(config: PRMConfig, device: str | torch.device = "cpu") -> PRMAdapter:
    """Load the PRM named by ``config.model_path`` and its tokenizer and return the matching adapter."""
    if config.model_path is None:
        raise ValueError("prm.model_path is required to load a PRM")
    device = torch.device(device)
    model_config = load_model_config(config)
    tokenizer = load_tokenizer(config, model_config)
    kind = resolve_adapter_kind(config, model_config, tokenizer)
    model = load_model(config, kind, device, model_config)
    adapter = make_adapter(config, model, tokenizer, kind=kind, device=device, model_config=model_config)
    logger.info("PRM %s loaded as %s on %s (separator %r)", config.model_path, kind, device, adapter.step_separator)
    return adapter
