"""Process reward model (PRM) support: config, model adapters, token-space scoring, Ray worker group.

Public entry points (the trainer's view):

* ``PRMConfig.from_config(cfg.get("prm"))`` — the validated ``prm`` node;
* ``load_prm(config, device) -> PRMAdapter`` — in-process scoring (``adapter.score(questions, segments)``);
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
    load_prm,
    make_adapter,
    resolve_adapter_kind,
)
from verl_prpo.prm.config import DEFAULT_SYSTEM_PROMPT, PRMConfig
from verl_prpo.prm.scoring import (
    prm_metrics,
    question_from_messages,
    questions_from_batch,
    score_batch,
    segment_texts,
)

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "PRMAdapter",
    "PRMConfig",
    "PRMInputs",
    "QwenMathPRMAdapter",
    "TokenClassificationPRMAdapter",
    "load_prm",
    "make_adapter",
    "prm_metrics",
    "question_from_messages",
    "questions_from_batch",
    "resolve_adapter_kind",
    "score_batch",
    "segment_texts",
]
