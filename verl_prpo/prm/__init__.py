"""Process reward model (PRM) support: config, model adapters, token-space scoring, Ray worker group.

Public entry points (the trainer's view):

* ``PRMConfig.from_config(cfg.get("prm"))`` — the validated ``prm`` node;
* ``load_prm(config, device) -> PRMAdapter`` — in-process scoring (``adapter.score(questions, segments)``):
  Hugging Face forwards for ``prm.backend=fsdp``, vLLM's offline engine for ``prm.backend=vllm``
  (``verl_prpo.prm.vllm_backend``; the same input ids and read-out);
* ``score_batch(adapter, policy_tokenizer, responses, response_mask, segment_ids, questions, prior_mean)``;
* ``questions_from_batch(raw_prompts, extra_infos)``, ``prm_metrics(...)``;
* ``verl_prpo.prm.worker``: ``PRMWorker``, ``create_prm_worker_group``, ``compute_prm_scores_with_group``,
  ``make_cpu_resource_pool`` (imported lazily: it pulls in Ray).
"""

from verl_prpo.prm.adapters import (
    PRMAdapter,
    PRMInputs,
    QwenMathPRMAdapter,
    TokenClassificationPRMAdapter,
    make_adapter,
    resolve_adapter_kind,
)
from verl_prpo.prm.adapters import load_prm as load_hf_prm
from verl_prpo.prm.config import DEFAULT_SYSTEM_PROMPT, PRMConfig
from verl_prpo.prm.scoring import (
    prm_metrics,
    question_from_messages,
    questions_from_batch,
    score_batch,
    segment_texts,
)



def load_prm(config: PRMConfig, device="cpu"):
    """Load the PRM of ``config`` for in-process scoring on ``device``.

    ``prm.backend=fsdp``: the model in this process (``adapters.load_prm``); ``prm.backend=vllm``: vLLM's offline
    engine (``vllm_backend.load_vllm_prm``, which needs vLLM for the device's platform). Both return an object with
    ``score(questions, segments) -> list[list[float]]`` and ``score_with_stats``, built on the same input ids.
    """
    if getattr(config, "backend", "fsdp") == "vllm":
        from verl_prpo.prm.vllm_backend import load_vllm_prm

        return load_vllm_prm(config, device)
    return load_hf_prm(config, device)


__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "PRMAdapter",
    "PRMConfig",
    "PRMInputs",
    "QwenMathPRMAdapter",
    "TokenClassificationPRMAdapter",
    "load_hf_prm",
    "load_prm",
    "make_adapter",
    "prm_metrics",
    "question_from_messages",
    "questions_from_batch",
    "resolve_adapter_kind",
    "score_batch",
    "segment_texts",
]
