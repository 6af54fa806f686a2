"""The ``prpo_sync`` V1 trainer mode: verl's synchronous trainer with the inputs process rewards need.

verl's stock ``_compute_advantage`` hands an estimator only the rewards, the mask and the uids. ``prpo_sync``
overrides that one stage for this plugin's estimators (the records of ``verl_prpo.estimators``, which say what each
one needs):

1. fetch from TransferQueue what they need: entropy (for PRPO's segmentation), old and reference log-probs (PRL,
   SPRO), response tokens and prompts (PRM scoring), and per-token PRM scores a caller may have put there;
2. keep upstream's KL-in-reward and rollout-correction behaviour, in the same order;
3. segment the responses (``needs_segments``) and score the segments with the PRM worker group (``needs_prm``);
4. call the estimator with everything and log its metrics in verl's logger.

Every other estimator (``grpo``, ``gae`` ...) goes through the stock code unchanged, so ``prpo_sync`` is also a
drop-in replacement for ``sync``. At construction the trainer validates the plugin's configuration (before any
rollout) and, for the estimators that read the reference policy (``needs_ref``: PRL, SPRO), makes sure it exists
even when the KL loss coefficient is 0.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, open_dict

from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from verl_prpo.estimators import ESTIMATOR_NAMES, ESTIMATORS, EstimatorSpec

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))

TRAINER_MODE = "prpo_sync"
#: options of ``segmentation.segment`` that an estimator's config node may carry next to ``segmentation``
SEGMENT_OPTIONS = ("k", "m", "step_len", "seed", "cut_rule")
#: TransferQueue field under which a caller may supply per-token PRM scores (used when ``prm.enable`` is false)
PRM_SCORES_KEY = "prm_scores"


def validate_plugin_config(config: DictConfig) -> dict[str, Any]:
    """Validate everything this plugin reads from ``config``; raise a clear error naming the key.

    Returns the typed configs (``{"estimator": ..., "prm": ...}``). Called at trainer start, before any rollout.
    """
    from verl_prpo.prm.config import PRMConfig
    from verl_prpo.startup import check_registered

    check_registered()
    name = str(config.algorithm.adv_estimator)
    check_estimator_name(name)
    spec = ESTIMATORS.get(name)
    typed: dict[str, Any] = {"estimator": spec.config.from_algorithm(config.algorithm) if spec else None,
                             "prm": PRMConfig.from_config(config.get("prm"))}
    rc_cfg = config.algorithm.get("rollout_correction", None)
    if spec and spec.needs_segments and typed["estimator"].segmentation == "entropy" and rc_cfg is not None \
            and rc_cfg.get("bypass_mode", False):
        raise ValueError(
            f"algorithm.{spec.config_node}.segmentation=entropy needs the rollout policy's entropy, which verl does "
            "not compute with algorithm.rollout_correction.bypass_mode=true: turn bypass mode off or choose another "
            f"algorithm.{spec.config_node}.segmentation.")
    needs_prm = bool(spec and spec.needs_prm)
    if needs_prm and not typed["prm"].enable:
        if not typed["prm"].scores_from_batch:
            raise ValueError(
                f"algorithm.adv_estimator={name} needs PRM scores: set prm.enable=true and prm.model_path=<PRM> "
                f"(e.g. Qwen/Qwen2.5-Math-PRM-7B), or prm.scores_from_batch=true if your pipeline writes per-token "
                f"scores to the batch field '{PRM_SCORES_KEY}'.")
        logger.warning("algorithm.adv_estimator=%s reads PRM scores from the batch field '%s' (prm.scores_from_batch)",
                       name, PRM_SCORES_KEY)
    typed["poll_interval"] = replay_buffer_poll_interval(config)
    if needs_prm and typed["prm"].enable:
        warning = own_pool_capacity_warning(config, typed["prm"])
        if warning:
            logger.warning(warning)
    return typed


def check_estimator_name(name: str) -> None:
    """Refuse an ``algorithm.adv_estimator`` that neither this plugin nor verl registered (verl itself would only
    fail in the first advantage stage, after a whole rollout)."""
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

    if name not in ADV_ESTIMATOR_REGISTRY:
        verls = sorted(n for n in ADV_ESTIMATOR_REGISTRY if n not in ESTIMATORS)
        raise ValueError(f"algorithm.adv_estimator={name!r} is not a registered advantage estimator; verl-prpo's: "
                         f"{list(ESTIMATOR_NAMES)}, verl's: {verls}")


#: responses per step from which one ``own_pool`` GPU scoring all of them is worth a start-up warning
OWN_POOL_LARGE_BATCH = 256


def own_pool_capacity_warning(config: DictConfig, prm) -> str | None:
    """The start-up warning for ``prm.placement=own_pool`` with a single PRM GPU and a large batch, else None.

    One GPU then scores every response of the step while the trainer's GPUs wait, and it idles through rollout and
    the update; the default ``prm.n_gpus_per_node`` is 1.
    """
    if prm.placement != "own_pool" or prm.nnodes * prm.n_gpus_per_node > 1:
        return None
    from omegaconf import OmegaConf

    prompts = OmegaConf.select(config, "data.train_batch_size", default=None)
    n = OmegaConf.select(config, "actor_rollout_ref.rollout.n", default=1)
    if prompts is None:
        return None
    responses = int(prompts) * int(n or 1)
    if responses < OWN_POOL_LARGE_BATCH:
        return None
    trainer_gpus = int(config.trainer.nnodes) * int(config.trainer.n_gpus_per_node)
    return (f"prm.placement=own_pool with ONE PRM GPU (prm.nnodes x prm.n_gpus_per_node = 1): it scores all "
            f"{responses} responses of every step (data.train_batch_size x rollout.n) while the trainer's "
            f"{trainer_gpus} GPU(s) wait, and it idles during rollout and the update. Give the PRM more GPUs "
            f"(prm.n_gpus_per_node) or use prm.placement=colocate (README: GPU set-ups).")


def replay_buffer_poll_interval(config: DictConfig) -> float | None:
    """``trainer.v1.sampler.poll_interval``: seconds between the replay buffer's checks for finished rollouts.

    verl 0.9.1 hard-codes 2 s, so every step's generation phase lasts a multiple of 2 s. That is noise on a GPU
    step of minutes but doubles a CPU-mode step whose generation takes a second. null keeps verl's value.
    """
    from omegaconf import OmegaConf

    value = OmegaConf.select(config, "trainer.v1.sampler.poll_interval", default=None)
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"trainer.v1.sampler.poll_interval must be a number of seconds > 0 or null, got {value!r}")
    if not value > 0 or value != value:
        raise ValueError(f"trainer.v1.sampler.poll_interval must be a number of seconds > 0 or null, got {value!r}")
    return value


#: name of the PRM's own resource pool (``prm.placement=own_pool``) in verl's resource pool spec
PRM_POOL = "prm_pool"


def trainer_data_parallel_size(config: DictConfig) -> int:
    """The actor's data-parallel world size, as verl's engines compute it, from the config alone.

    ``trainer.nnodes x trainer.n_gpus_per_node`` GPUs (the global pool; an ``own_pool`` PRM is not part of it),
    divided by the Ulysses sequence-parallel size (FSDP) or by TP x PP x CP (Megatron). The Ulysses size is the one
    verl's ``FSDPActorConfig`` hands the engine: ``actor.ulysses_sequence_parallel_size`` when it is > 1 (verl copies
    the deprecated actor-level key over ``actor.fsdp_config.ulysses_sequence_parallel_size``), else the
    ``fsdp_config`` one.
    """
    n_gpus = int(config.trainer.nnodes) * int(config.trainer.n_gpus_per_node)
    actor = config.actor_rollout_ref.actor
    if str(actor.get("strategy", "fsdp")) == "megatron":
        mc = actor.megatron
        model_parallel = int(mc.tensor_model_parallel_size) * int(mc.pipeline_model_parallel_size) * int(
            mc.get("context_parallel_size", 1))
    else:
        fsdp_cfg = actor.get("fsdp_config", None) or {}
        actor_sp = int(actor.get("ulysses_sequence_parallel_size", 1) or 1)
        model_parallel = actor_sp if actor_sp > 1 else int(fsdp_cfg.get("ulysses_sequence_parallel_size", 1) or 1)
    if n_gpus % model_parallel:
        raise ValueError(f"trainer.nnodes x trainer.n_gpus_per_node = {n_gpus} GPUs is not a multiple of the "
                         f"actor's model-parallel size {model_parallel}")
    return n_gpus // model_parallel


def validate_batch_divisibility(config: DictConfig) -> None:
    """verl asserts ``ppo_mini_batch_size x rollout.n`` divisible by the actor's DP size only inside the first
    actor update (after a whole rollout); check it here, at start-up, for the trainer's real DP size."""
    dp = trainer_data_parallel_size(config)
    n = int(config.actor_rollout_ref.rollout.n)
    checks = [("actor_rollout_ref.actor.ppo_mini_batch_size", int(config.actor_rollout_ref.actor.ppo_mini_batch_size))]
    from verl.trainer.ppo.utils import need_critic

    if config.get("critic", None) is not None and need_critic(config):
        checks.append(("critic.ppo_mini_batch_size", int(config.critic.ppo_mini_batch_size)))
    for key, mini in checks:
        total = mini * n
        if total % dp:
            ok = [d for d in range(1, total + 1) if total % d == 0 and d <= 4 * dp]
            prm = config.get("prm", None) or {}
            hint = ""
            if prm.get("enable", False) and prm.get("placement") == "own_pool":
                hint = (f" With prm.placement=own_pool the PRM's {prm.get('nnodes', 1)} x "
                        f"{prm.get('n_gpus_per_node', 1)} GPUs are not the trainer's: choose the split so that the "
                        f"trainer keeps a divisor of {total} GPUs, or use prm.placement=colocate.")
            raise ValueError(
                f"{key} x actor_rollout_ref.rollout.n = {mini} x {n} = {total} is not divisible by the trainer's "
                f"data-parallel size {dp} (trainer.nnodes x trainer.n_gpus_per_node = "
                f"{int(config.trainer.nnodes) * int(config.trainer.n_gpus_per_node)} GPUs); verl would fail in the "
                f"first actor update. Data-parallel sizes that divide {total}: {ok}.{hint}")


def check_cluster_resources(resource_pool_spec: dict[str, list[int]],
                            available_per_node: dict[str, dict[str, float]] | None = None,
                            cpus_per_device: int = 3) -> None:
    """Fail at start-up, naming what is missing, when the Ray cluster cannot hold every pool of the spec.

    ``resource_pool_spec``: verl's ``{pool: [devices on node 0, devices on node 1, ...]}`` (the PRM's own pool
    included). verl turns each node entry of g devices into one STRICT_PACK placement group of g bundles of
    ``{device: 1, CPU: max_colocate_count}`` (``RayResourcePool.get_placement_groups``), so each entry must find g
    free devices AND g x ``cpus_per_device`` free CPUs on ONE Ray node (first-fit decreasing over the nodes);
    otherwise Ray's placement group would wait forever.

    ``available_per_node``: ``{node: {"GPU": free devices, "CPU": free CPUs}}`` (default: the Ray cluster's; NPUs
    count as devices). ``cpus_per_device``: verl's ``ResourcePoolManager.max_colocate_count``.
    """
    if available_per_node is None:
        import ray

        available_per_node = ray._private.state.available_resources_per_node()
    nodes = {name: [int(info.get("GPU", info.get("NPU", 0)) or 0), float(info.get("CPU", 0) or 0)]
             for name, info in available_per_node.items()}
    need = sorted(((int(g), pool) for pool, entries in resource_pool_spec.items() for g in entries), reverse=True)
    pools = ", ".join(f"{pool}: {' + '.join(str(g) for g in entries)}" for pool, entries in resource_pool_spec.items())
    per_node = ", ".join(f"{g} GPU / {c:g} CPU" for g, c in sorted(nodes.values(), reverse=True))
    total_need, total_free = sum(g for g, _ in need), sum(g for g, _ in nodes.values())
    if total_need > total_free:
        raise ValueError(
            f"the run needs {total_need} GPUs ({pools}) but the Ray cluster has {total_free} free: "
            f"{total_need - total_free} GPU(s) missing. Add nodes, lower trainer.n_gpus_per_node / prm.n_gpus_per_node "
            f"/ prm.nnodes, or use prm.placement=colocate (the PRM then shares the trainer's GPUs).")
    free = sorted(nodes.values(), reverse=True)
    for g, pool in need:
        cpus = g * cpus_per_device
        for slot in free:
            if slot[0] >= g and slot[1] >= cpus:
                slot[0] -= g
                slot[1] -= cpus
                break
        else:
            if any(slot[0] >= g for slot in free):
                raise ValueError(
                    f"pool {pool} needs {g} GPUs and {cpus} CPUs ({cpus_per_device} per GPU bundle, verl's "
                    f"max_colocate_count) on one node, but every Ray node with {g} free GPUs has fewer free CPUs "
                    f"({pools}; free per node: {per_node}). Start the Ray nodes with more logical CPUs "
                    f"(ray start --num-cpus; in CPU mode ray_kwargs.ray_init.num_cpus).")
            raise ValueError(
                f"pool {pool} needs {g} GPUs on one node but no Ray node has {g} free ({pools}; free per node: "
                f"{per_node}): {g - max((slot[0] for slot in free), default=0)} GPU(s) missing on the largest node.")


def ensure_reference_policy(config: DictConfig) -> bool:
    """PRL and SPRO need ``ref_log_prob`` even with the KL loss off: turn the KL loss on with coefficient 0.

    verl builds the reference policy only when ``actor.use_kl_loss`` or ``algorithm.use_kl_in_reward`` is set.
    A KL loss with coefficient 0 adds nothing to the gradient. Returns True if the config was changed.
    """
    actor = config.actor_rollout_ref.actor
    if actor.use_kl_loss or config.algorithm.use_kl_in_reward:
        return False
    with open_dict(config):
        actor.use_kl_loss = True
        actor.kl_loss_coef = 0.0
    logger.warning(
        "%s needs the reference policy: set actor_rollout_ref.actor.use_kl_loss=True with kl_loss_coef=0.0 "
        "(the KL enters only through the estimator).", config.algorithm.adv_estimator)
    return True


def check_single_output_sessions(keys) -> None:
    """Refuse batches where an agent-loop session returned several outputs.

    TransferQueue keys are ``{uid}_{session_id}_{index}``. Upstream GRPO (``compute_advantage_for_multi_trajectories``)
    computes group statistics on each session's LAST output and broadcasts them to the session's other outputs;
    the process estimators score every output as a response of its own, which would weight such sessions more
    and compare different things. Rather than train on a different objective silently, stop with a clear error.
    """
    sessions: dict[str, int] = {}
    for key in keys:
        parts = str(key).rsplit("_", 2)
        if len(parts) != 3:
            raise ValueError(f"prpo_sync: unexpected TransferQueue key {key!r} (expected uid_session_index)")
        session = f"{parts[0]}_{parts[1]}"
        sessions[session] = sessions.get(session, 0) + 1
    multi = {s: n for s, n in sessions.items() if n > 1}
    if multi:
        example = next(iter(multi.items()))
        raise ValueError(
            f"prpo_sync: {len(multi)} agent-loop session(s) returned several outputs (e.g. session {example[0]!r}: "
            f"{example[1]} outputs). Upstream GRPO uses only each session's last output; the process estimators "
            f"({', '.join(ESTIMATOR_NAMES)}) do not support multi-output sessions: use an agent loop that returns one "
            f"output per session, or algorithm.adv_estimator=grpo.")


def grpo_comparison_metrics(advantages: torch.Tensor, data, norm_by_std: bool = True) -> dict[str, float]:
    """How far the process estimator moved the advantage from verl's GRPO on the same batch.

    ``adv/mean_abs_diff_vs_grpo`` is the token-mean of |A - A_grpo| over valid tokens: 0 means the process signal
    changed nothing (for PRPO: every PRM score at the prior mean and no beta normalisation difference).
    ``norm_by_std``: ``algorithm.norm_adv_by_std_in_grpo``, so the reference is the GRPO the user would run.
    """
    from verl_prpo.ops import outcome_advantage

    mask = data.batch["response_mask"].bool()
    if not mask.any():
        return {}
    # verl's GRPO (unbiased std, eps 1e-6), vectorised; tests check ops.outcome_advantage against verl's function
    a_out, _ = outcome_advantage(data.batch["token_level_rewards"], data.batch["response_mask"],
                                 data.non_tensor_batch["uid"], norm_by_std=bool(norm_by_std))
    diff = (advantages.float() - a_out[:, None].to(advantages.device)).abs()[mask]
    return {"adv/mean_abs_diff_vs_grpo": float(diff.mean())}


@register_trainer(TRAINER_MODE)
class PRPOTrainerSync(PPOTrainerSync):
    """Synchronous V1 trainer that feeds the process-reward estimators (see the module docstring)."""

    # verl 0.9.1 compares ``self.trainer_mode`` with the string "sync" (trainer_base.py: replay buffer class,
    # exact refill, TransferQueue checkpoint on save/resume, re-issue of in-flight prompts, prompt storage) and
    # reads ``trainer.v1.<mode>`` for the mode's options. prpo_sync is the sync loop, so verl must see "sync"
    # everywhere; the config keeps ``trainer.v1.trainer_mode=prpo_sync`` (main_ppo selects this class by it).
    @property
    def trainer_mode(self) -> str:
        return "sync"

    @trainer_mode.setter
    def trainer_mode(self, value: str) -> None:
        if value not in (TRAINER_MODE, "sync"):
            raise ValueError(f"{type(self).__name__} is the '{TRAINER_MODE}' trainer mode, got "
                             f"trainer.v1.trainer_mode={value!r}")

    def __init__(self, config: DictConfig):
        self.plugin_config = validate_plugin_config(config)
        self.adv_name = str(config.algorithm.adv_estimator)
        if self.estimator is not None and self.estimator.needs_ref:
            ensure_reference_policy(config)
        validate_batch_divisibility(config)
        super().__init__(config)
        self.prm_scorer = None
        self._prm_layout: dict[str, float] = {}
        self._newline_mask: torch.Tensor | None = None

    @property
    def estimator(self) -> EstimatorSpec | None:
        """The record of ``algorithm.adv_estimator`` if it is one of this plugin's estimators, else None."""
        return ESTIMATORS.get(self.adv_name)

    # ------------------------------------------------------------------ setup
    def _setup(self):
        super()._setup()
        if self._uses_prm():
            from verl_prpo.prm.trainer_glue import PRMScorer

            create = PRMScorer.create
            if self.plugin_config["prm"].backend == "vllm":  # the PRM on verl's reward-model vLLM servers
                from verl_prpo.prm.vllm_backend import create_vllm_prm_scorer as create
            actor_pool = self.resource_pool_manager.get_resource_pool(self._actor_role())
            self.prm_scorer = create(
                self.plugin_config["prm"], self.config, actor_pool=actor_pool,
                prm_pool=self.resource_pool_manager.resource_pool_dict.get(PRM_POOL),
                prior_mean=self.plugin_config["estimator"].mu)
            # where the PRM runs, logged with every step's metrics (world-size tests and users read it there)
            ranks = self.prm_scorer.worker_group.describe()
            self._prm_layout = {"prm/ranks": float(len(ranks)),
                                "prm/sharded": float(any(r["sharded"] for r in ranks)),
                                "prm/own_pool": float(self.plugin_config["prm"].placement == "own_pool")}
            logger.info("PRM worker group ready (%s): %s", self.plugin_config["prm"].placement, self._prm_layout)

    def _build_replay_buffer(self):
        replay_buffer = super()._build_replay_buffer()
        if self.plugin_config["poll_interval"] is not None:
            replay_buffer.poll_interval = self.plugin_config["poll_interval"]
        return replay_buffer

    def _uses_prm(self) -> bool:
        return self.estimator is not None and self.estimator.needs_prm and self.plugin_config["prm"].enable

    def _init_resource_pool_mgr(self):
        """verl's pools plus the PRM's own pool (``own_pool``), so that verl creates and checks it with the others;
        a cluster too small for all of them fails here, before any placement group waits."""
        super()._init_resource_pool_mgr()
        prm = self.plugin_config["prm"]
        rpm = self.resource_pool_manager
        if self._uses_prm() and prm.placement == "own_pool":
            rpm.resource_pool_spec[PRM_POOL] = [prm.n_gpus_per_node] * prm.nnodes
        check_cluster_resources(rpm.resource_pool_spec, cpus_per_device=rpm.max_colocate_count)

    def _actor_role(self):
        from verl.trainer.ppo.utils import Role

        for role in (Role.Actor, Role.ActorRolloutRef, Role.ActorRollout):
            if role in self.role_worker_mapping:
                return role
        raise RuntimeError("prpo_sync: no actor role in the worker mapping")

    # ------------------------------------------------------------------ advantage
    def _compute_advantage(self, batch, metrics: dict):
        metrics.update(self._grading_timeout_metrics(batch))
        if self.estimator is None:  # one of verl's estimators: the stock stage
            return super()._compute_advantage(batch, metrics)

        check_single_output_sessions(batch.keys)

        import transfer_queue as tq
        from tensordict import TensorDict

        from verl import DataProto
        from verl.trainer.ppo.core_algos import get_adv_estimator_fn
        from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_add_to_batch
        from verl.trainer.ppo.ray_trainer import apply_kl_penalty
        from verl.workers.utils.padding import response_to_nested

        fields = ["uid", "response_mask", "rm_scores", "rollout_log_probs", "old_log_probs", "ref_log_prob",
                  "entropy", "responses", PRM_SCORES_KEY]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        response_mask_nested = data["response_mask"]
        data = DataProto(batch=data.to_padded_tensor())
        data.batch["token_level_scores"] = data.batch["rm_scores"]
        data.non_tensor_batch["uid"] = np.array(data.batch.pop("uid").tolist(), dtype=object)

        # 1. KL in reward (upstream behaviour)
        if self.config.algorithm.use_kl_in_reward:
            data, kl_metrics = apply_kl_penalty(
                data, kl_ctrl=self.kl_ctrl_in_reward, kl_penalty=self.config.algorithm.kl_penalty)
            metrics.update(kl_metrics)
        else:
            data.batch["token_level_rewards"] = data.batch["token_level_scores"]

        # 2. rollout correction (upstream behaviour, decoupled mode only). Rejection sampling may zero tokens or
        # whole responses of response_mask; segmentation and PRM scoring use the mask as the policy produced it
        # (a segment is a piece of the generated text), the estimator gets the corrected mask.
        segment_mask = data.batch["response_mask"].clone()
        rc_cfg = self.config.algorithm.get("rollout_correction", None)
        bypass = rc_cfg and rc_cfg.get("bypass_mode", False)
        rollout_correction = rc_cfg is not None and "rollout_log_probs" in data.batch and not bypass
        if rollout_correction:
            data, is_metrics = compute_rollout_correction_and_add_to_batch(data, rc_cfg)
            metrics.update(is_metrics)

        # 3. segmentation and PRM scores
        kwargs = self._estimator_inputs(batch, data, metrics, segment_mask)

        # 4. the estimator itself
        est_metrics: dict[str, float] = {}
        fn = get_adv_estimator_fn(self.adv_name)
        advantages, returns = fn(
            token_level_rewards=data.batch["token_level_rewards"],
            response_mask=data.batch["response_mask"],
            index=data.non_tensor_batch["uid"],
            config=self.config.algorithm,
            metrics=est_metrics,
            **kwargs,
        )
        data.batch["advantages"] = advantages
        data.batch["returns"] = returns
        metrics.update(est_metrics)
        metrics.update(grpo_comparison_metrics(
            advantages, data, norm_by_std=self.config.algorithm.get("norm_adv_by_std_in_grpo", True)))

        # 5. write back (same fields as upstream)
        out_fields = ["advantages", "returns"]
        if self.config.algorithm.use_kl_in_reward:
            out_fields.append("token_level_rewards")
        if rollout_correction:
            out_fields.append("response_mask")
            if "rollout_is_weights" in data.batch:
                out_fields.append("rollout_is_weights")
        output = {f: response_to_nested(data.batch[f], response_mask_nested) for f in out_fields}
        return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id,
                               fields=TensorDict(output, batch_size=len(batch)))

    def _grading_timeout_metrics(self, batch) -> dict[str, float]:
        """``reward/grading_timeouts`` of the batch when the ``prpo`` reward manager grades it (verl logs reward
        extra info only in validation)."""
        from omegaconf import OmegaConf

        if OmegaConf.select(self.config, "reward.reward_manager.name", default=None) != "prpo":
            return {}
        from verl_prpo.reward_manager import grading_timeout_metrics

        return grading_timeout_metrics(batch)

    def _estimator_inputs(self, batch, data, metrics: dict, segment_mask: torch.Tensor | None = None
                          ) -> dict[str, Any]:
        """Everything the estimator needs beyond rewards, mask and uid.

        ``segment_mask`` (B, L): the response mask before rollout correction (default: the batch's mask); the
        segmentation and the PRM see it, so a rejected token never splits a segment.
        """
        b = data.batch
        kwargs: dict[str, Any] = {}
        for key in ("entropy", "old_log_probs", "ref_log_prob"):
            if key in b.keys():
                kwargs[key] = b[key]
        cfg = self.plugin_config["estimator"]
        mask = b["response_mask"] if segment_mask is None else segment_mask
        if not self.estimator.needs_segments:
            return kwargs

        seg = self._segment(b, mask, cfg, entropy=kwargs.get("entropy"))
        # the estimator sees the corrected mask: tokens that rollout correction rejected get segment id -1 there
        kwargs["segment_ids"] = seg.segment_ids.masked_fill(~b["response_mask"].bool(), -1)
        if not self.estimator.needs_prm:
            return kwargs
        if self.prm_scorer is not None:
            t0 = time.perf_counter()
            # "correct" = positive outcome reward, for the PRM/outcome agreement metric: the reward manager's score
            # (token_level_scores), not token_level_rewards, which hold the KL penalty with use_kl_in_reward
            scores, prm_steps, prm_metrics = self.prm_scorer.score(batch, data, seg.segment_ids,
                                                                   correct=b["token_level_scores"].sum(-1) > 0,
                                                                   response_mask=mask)
            metrics["timing_s/prm"] = time.perf_counter() - t0
            metrics.update(prm_metrics)
            metrics.update(getattr(self, "_prm_layout", {}))  # set in _setup; absent on a trainer built without it
            kwargs["prm_scores"] = scores
            # the estimator's steps are the PRM's: a segment with no text of its own (an EOS-only tail) was scored
            # as part of the step before it and must not count as a step again (PURE's soft minimum would)
            kwargs["segment_ids"] = prm_steps.to(seg.segment_ids.device).masked_fill(~b["response_mask"].bool(), -1)
        elif PRM_SCORES_KEY in b.keys():
            kwargs["prm_scores"] = b[PRM_SCORES_KEY]
        else:
            raise ValueError(
                f"algorithm.adv_estimator={self.adv_name} needs PRM scores: set prm.enable=true and prm.model_path=..., "
                f"or put per-token scores in the batch under '{PRM_SCORES_KEY}'.")
        return kwargs

    def _segment(self, b, mask: torch.Tensor, cfg, entropy: torch.Tensor | None = None):
        """``segmentation.segment`` of ``mask`` with the estimator's ``segmentation`` and whichever of
        ``SEGMENT_OPTIONS`` its config has (the random seed advances with the step); the newline strategy also gets
        the tokens and the tokenizer table."""
        from verl_prpo.segmentation import segment

        options = {key: getattr(cfg, key) for key in SEGMENT_OPTIONS if hasattr(cfg, key)}
        if "seed" in options:
            options["seed"] += int(self.global_steps)
        if cfg.segmentation == "entropy":
            options["entropy"] = entropy
        if cfg.segmentation == "newline":
            options.update(newline_token_mask=self._newline_token_mask(),
                           responses=b["responses"] if "responses" in b.keys() else None)
        return segment(cfg.segmentation, mask, **options)

    def _newline_token_mask(self) -> torch.Tensor:
        if self._newline_mask is None:
            from verl_prpo.segmentation import build_newline_token_mask

            self._newline_mask = build_newline_token_mask(self.tokenizer)
        return self._newline_mask
