"""PRM scoring inside the ``prpo_sync`` trainer: worker-group placement and the per-step call.

Placement (``prm.placement``):

* ``colocate`` (default): the PRM workers join the actor's resource pool; verl shares each bundle's GPU between
  worker groups by fractional requests, and the PRM parameters are offloaded to CPU between scoring calls
  (``prm.param_offload``), so the PRM costs memory only while it scores.
* ``own_pool``: a separate pool of ``prm.nnodes`` x ``prm.n_gpus_per_node`` GPUs (on SLURM: extra nodes for the PRM),
  declared in verl's resource pool spec as ``prm_pool``: verl creates it with the trainer's pools, and a cluster
  without enough free GPUs is a start-up error that says how many are missing.
"""

from __future__ import annotations

import logging

import torch

from verl_prpo.prm.config import PRMConfig

logger = logging.getLogger(__name__)


class PRMScorer:
    """Owns the PRM worker group and turns a training batch into per-token PRM scores plus metrics."""

    def __init__(self, worker_group, prm_config: PRMConfig, prior_mean: float = 0.5, stop_token_ids=()):
        self.worker_group = worker_group
        self.config = prm_config
        self.prior_mean = prior_mean
        #: ids that end a response besides the policy tokenizer's own EOS and chat-turn tokens (generation config)
        self.stop_token_ids = sorted(int(t) for t in stop_token_ids)

    @classmethod
    def create(cls, prm_config: PRMConfig, config, *, actor_pool, prm_pool=None, tokenizer=None,
               prior_mean: float = 0.5):
        """``prm_pool``: the ``own_pool`` pool verl created from its resource pool spec (the trainer adds it there,
        so verl's resource check covers it); without it a pool is made here (direct use outside the trainer)."""
        from verl_prpo.prm.worker import create_prm_worker_group, make_prm_resource_pool

        if prm_config.placement == "own_pool":
            pool = prm_pool if prm_pool is not None else make_prm_resource_pool(prm_config)
        else:
            pool = actor_pool
        model = config.actor_rollout_ref.model
        tok_path = model.get("tokenizer_path") or model.get("local_path") or model.path
        wg = create_prm_worker_group(prm_config, tok_path, pool, name_prefix="prm")
        return cls(wg, prm_config, prior_mean=prior_mean, stop_token_ids=_generation_eos(model))

    def score(self, batch, data, segment_ids: torch.Tensor, correct: torch.Tensor | None = None,
              response_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Per-token PRM scores ``(B, L)`` for the rows of ``data`` (same order as ``batch.keys``), the PRM step of
        every token ``(B, L)`` (``segment_ids`` with segments merged into their step renumbered; -1 off the mask)
        and the PRM metrics.

        ``response_mask``: the mask ``segment_ids`` was computed on (the trainer passes the mask before rollout
        correction); default ``data.batch["response_mask"]``.
        """
        import transfer_queue as tq

        from verl_prpo.prm.scoring import prm_metrics, questions_from_batch
        from verl_prpo.prm.worker import compute_prm_scores_with_group

        meta = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                               select_fields=["raw_prompt", "extra_info"])
        raw_prompts = list(meta["raw_prompt"]) if "raw_prompt" in meta.keys() else None
        extra_infos = list(meta["extra_info"]) if "extra_info" in meta.keys() else None
        questions = questions_from_batch(raw_prompts, extra_infos)
        b = data.batch
        mask = b["response_mask"] if response_mask is None else response_mask
        scores, stats = compute_prm_scores_with_group(
            self.worker_group, b["responses"], mask, segment_ids, questions, prior_mean=self.prior_mean,
            stop_token_ids=self.stop_token_ids)
        metrics = prm_metrics(scores, mask, stats, correct)
        if stats.get("truncated_segments"):
            logger.warning("PRM: %d segments did not fit prm.max_length=%d and got the prior mean %.3f",
                           stats["truncated_segments"], self.config.max_length, self.prior_mean)
        if stats.get("empty_responses"):
            logger.warning("PRM: %d response(s) have no text once special tokens are removed; their tokens get "
                           "the prior mean %.3f (prm/empty_responses)", stats["empty_responses"], self.prior_mean)
        return scores, stats["step_ids"], metrics


def _generation_eos(model_config) -> list[int]:
    """EOS ids of the policy's generation config (``actor_rollout_ref.model``: local copy of ``path``)."""
    from verl_prpo.response_text import generation_config_eos

    path = model_config.get("local_path") or model_config.get("path")
    if not path:
        return []
    try:
        from verl.utils.fs import copy_to_local

        path = copy_to_local(str(path))
    except Exception as exc:  # noqa: BLE001 - no local copy: the tokenizer's stop tokens only
        logger.warning("PRM: no local copy of %s for its generation config (%r); responses end at the tokenizer's "
                       "EOS and chat-turn tokens only", path, exc)
        return []
    return generation_config_eos(path)


