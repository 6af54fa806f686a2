"""Which tokens of a generated response are its text: the part both the outcome grader and the PRM see.

A response ends at its first **stop token**: an EOS id of the policy tokenizer, an EOS id of the model's generation
config (Qwen2.5-Math's instruct config stops on ``<|im_end|>`` and ``<|endoftext|>`` while its tokenizer's EOS is
one of them), or a special token that ends or starts a chat turn (``<|im_end|>``, ``<|im_start|>``, Llama 3's
``<|eot_id|>`` ...). What follows the first stop token (a second EOS, a run-on new turn ``<|im_start|>user ...``) is
not part of the response. Inside the response, special tokens are not text: decoding uses
``skip_special_tokens=True``, as verl's reward managers do.

Needs only ``transformers`` (for the generation config); no torch, no verl.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

logger = logging.getLogger(__name__)

#: special tokens that end or start a chat turn in common chat templates (ChatML/Qwen, Llama 3, Gemma, Phi-3);
#: they count as stop tokens only where the tokenizer has them as special tokens
TURN_TOKENS = (
    "<|im_end|>", "<|im_start|>", "<|endoftext|>",
    "<|eot_id|>", "<|start_header_id|>", "<|end_of_text|>",
    "<end_of_turn>", "<start_of_turn>",
    "<|end|>", "<|user|>", "<|assistant|>",
)


def _as_ids(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [int(value)]
    return [int(v) for v in value if v is not None]


def special_token_ids(tokenizer) -> set[int]:
    """Every id the tokenizer treats as special (what ``skip_special_tokens=True`` drops)."""
    ids = set(_as_ids(getattr(tokenizer, "all_special_ids", None)))
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(int(i) for i, tok in added.items() if getattr(tok, "special", False))
    return ids


def generation_config_eos(path: str | None) -> list[int]:
    """EOS ids of the generation config at ``path`` (``generation_config.json``); [] when there is none."""
    if not path:
        return []
    try:
        from transformers import GenerationConfig

        return _as_ids(GenerationConfig.from_pretrained(path).eos_token_id)
    except (OSError, ValueError, TypeError) as exc:  # no generation_config.json: the tokenizer's EOS only
        logger.debug("no generation config at %s (%r); stop tokens from the tokenizer only", path, exc)
        return []


def stop_token_ids(tokenizer, generation_eos: Iterable[int] | int | None = None) -> set[int]:
    """The ids that end a response: the tokenizer's EOS, ``generation_eos`` (the generation config's EOS ids), and
    the tokenizer's special chat-turn tokens (:data:`TURN_TOKENS`)."""
    ids = set(_as_ids(getattr(tokenizer, "eos_token_id", None)))
    ids.update(_as_ids(generation_eos))
    special = special_token_ids(tokenizer)
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    for tok in TURN_TOKENS:
        tid = vocab.get(tok)
        if tid is not None and int(tid) in special:
            ids.add(int(tid))
    return ids


def response_end(ids: Sequence[int], stop_ids: set[int] | frozenset[int]) -> int:
    """Number of leading tokens of ``ids`` that are the response: the index of the first stop token, else len."""
    for j, t in enumerate(ids):
        if int(t) in stop_ids:
            return j
    return len(ids)


def response_text(tokenizer, ids: Sequence[int], stop_ids: set[int] | frozenset[int]) -> str:
    """The response's text: ``ids`` up to the first stop token, special tokens skipped."""
    ids = [int(t) for t in ids]
    return tokenizer.decode(ids[: response_end(ids, stop_ids)], skip_special_tokens=True)
