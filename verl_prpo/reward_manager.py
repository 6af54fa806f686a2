"""Outcome reward manager ``prpo`` for verl's reward loop: +1 / -1 for a correct / wrong final ``\\boxed{}`` answer.

Registered in verl's live reward-loop registry (``verl/experimental/reward_loop/reward_manager/registry.py``)
under the name ``prpo``. verl resolves the class from ``reward.reward_manager.name`` when
``reward.reward_manager.source`` is ``register`` (the default), so it is selected with the Hydra override::

    reward.reward_manager.name=prpo

(``verl.workers.config.reward.RewardManagerConfig`` asserts at config time that the name is registered; the
``verl.plugins`` entry point of this package makes sure it is, in every process.)

Scores are read from ``reward.reward_kwargs`` (the node verl's own ``dapo`` manager reads; it is not in verl's
default schema, hence the ``+`` on the command line)::

    +reward.reward_kwargs.correct_score=1.0      # default  1.0 (PRPO recipe)
    +reward.reward_kwargs.incorrect_score=-1.0   # default -1.0 (PRPO recipe)
    +reward.reward_kwargs.no_answer_score=-1.0   # default: incorrect_score; a response without a final \\boxed{}
    +reward.reward_kwargs.grading_timeout=10     # default 10 s; a grading that takes longer counts as wrong
    +reward.reward_kwargs.grading_workers=2      # default 2: grading processes of this reward-loop worker
    +reward.reward_kwargs.grading_memory_limit_mb=4096   # address-space limit of each grading process

The same keys may also be given directly as constructor keyword arguments (these win over the config).

``run_single`` returns ``{"reward_score": float, "reward_extra_info": {"answer_found": float, "correct": float,
"acc": float, "grading_timeout": float}}`` (scalars only, so verl can stack them into arrays; ``acc`` ==
``correct`` is what verl's validation metrics aggregate). The ground truth is
``non_tensor_batch["reward_model"]["ground_truth"]``. The response is its valid tokens (``attention_mask``) up to
the first stop token (EOS of the tokenizer or of the generation config, or a special chat-turn token: a response
that runs on into a new turn is cut there), decoded with ``skip_special_tokens=True``
(:mod:`verl_prpo.response_text`, the same text the PRM scores). ``data_source`` is not used: every dataset
prepared by :mod:`verl_prpo.data` is graded the same way (:func:`verl_prpo.math_grading.grade`).

Timeouts. Decoding and box extraction run in the event loop's thread pool; math-verify runs in the grading worker
processes of :mod:`verl_prpo.math_grading`, which kill and replace a worker whose grading passes
``grading_timeout``. So the step never waits on a grading that does not end, and no grading freezes the reward
worker's other threads. A timed-out grading scores as a wrong answer, is logged (warning with the answer), and
is reported as ``grading_timeout = 1`` in ``reward_extra_info``: verl's validation metrics average it, and the
``prpo_sync`` trainer logs the count of a training batch as ``reward/grading_timeouts``. The grading workers start
when the manager is built, so a machine that cannot start them fails at start-up.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from verl import DataProto
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase
from verl.experimental.reward_loop.reward_manager.registry import register

from verl_prpo.math_grading import DEFAULT_TIMEOUT, GradeResult, configure_grading, get_grading_pool, grade
from verl_prpo.response_text import generation_config_eos, response_text, stop_token_ids

logger = logging.getLogger(__name__)

REWARD_MANAGER_NAME = "prpo"

#: keys read from ``reward.reward_kwargs`` and their defaults (``no_answer_score`` defaults to ``incorrect_score``)
DEFAULTS = {"correct_score": 1.0, "incorrect_score": -1.0, "no_answer_score": None,
            "grading_timeout": DEFAULT_TIMEOUT, "grading_workers": 2, "grading_memory_limit_mb": 4096}

#: ``reward_extra_info`` key that is 1.0 for a response whose grading timed out
TIMEOUT_KEY = "grading_timeout"


def _reward_kwargs(config) -> dict:
    """``config.reward.reward_kwargs`` as a plain dict ({} when absent); accepts DictConfig, dataclass or dict."""
    if config is None:
        return {}
    try:
        reward = config.get("reward", None) if hasattr(config, "get") else getattr(config, "reward", None)
    except Exception:  # noqa: BLE001
        reward = None
    if reward is None:
        return {}
    try:
        kw = reward.get("reward_kwargs", None) if hasattr(reward, "get") else getattr(reward, "reward_kwargs", None)
    except Exception:  # noqa: BLE001
        kw = None
    if kw is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(kw, DictConfig):
            return dict(OmegaConf.to_container(kw, resolve=True))
    except ImportError:  # pragma: no cover
        pass
    return dict(kw)


def _model_path(config, tokenizer) -> str | None:
    """Where the policy's generation config is: ``actor_rollout_ref.model.path`` (local copy), else the tokenizer's."""
    try:
        from omegaconf import OmegaConf

        path = OmegaConf.select(config, "actor_rollout_ref.model.path", default=None) if config is not None else None
    except Exception:  # noqa: BLE001 - a plain dict or dataclass config
        path = None
    if path:
        try:
            from verl.utils.fs import copy_to_local

            return copy_to_local(str(path))
        except Exception:  # noqa: BLE001 - no local copy: the tokenizer's directory
            pass
    return getattr(tokenizer, "name_or_path", None) or None


def grading_timeout_count(reward_extra_infos) -> int:
    """Responses whose grading timed out, from a batch's ``reward_extra_info`` dicts (None entries skipped)."""
    return int(sum(float(info.get(TIMEOUT_KEY, 0.0) or 0.0) for info in reward_extra_infos
                   if isinstance(info, dict)))


def grading_timeout_metrics(batch) -> dict[str, float]:
    """``{"reward/grading_timeouts": n}`` for a training batch (a TransferQueue ``KVBatchMeta``): the responses whose
    grading timed out. The flag reaches TransferQueue as the sample field ``grading_timeout`` (rewards computed by the
    trainer's reward loop) or in ``extra_fields["reward_extra_info"]`` (rewards computed in the agent loop); {} when
    the batch has neither (another reward manager)."""
    import torch
    import transfer_queue as tq

    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                           select_fields=[TIMEOUT_KEY, "extra_fields"])
    fields = set(data.keys())
    if TIMEOUT_KEY in fields:
        flags = data[TIMEOUT_KEY]
        if isinstance(flags, torch.Tensor):
            count = int((flags.reshape(len(batch), -1)[:, 0] > 0.5).sum())
        else:
            count = sum(float(f) > 0.5 for f in (flags.tolist() if hasattr(flags, "tolist") else list(flags)))
    elif "extra_fields" in fields:
        extra = data["extra_fields"]
        extra = extra.tolist() if hasattr(extra, "tolist") else list(extra)
        count = grading_timeout_count(e.get("reward_extra_info") for e in extra if isinstance(e, dict))
    else:
        return {}
    return {"reward/grading_timeouts": float(count)}


@register(REWARD_MANAGER_NAME)
class PRPORewardManager(RewardManagerBase):
    """Rule-based outcome reward: ``correct_score`` / ``incorrect_score`` / ``no_answer_score`` per trajectory."""

    def __init__(
        self,
        config,
        tokenizer,
        compute_score=None,
        reward_router_address=None,
        reward_model_tokenizer=None,
        **kwargs,
    ):
        super().__init__(config, tokenizer, compute_score)
        # verl passes its default compute_score (or a custom_reward_function); this manager ignores it and grades
        # with verl_prpo.math_grading (use verl's `naive` manager for a custom reward function).
        self.reward_router_address = reward_router_address
        self.reward_model_tokenizer = reward_model_tokenizer
        opts = dict(DEFAULTS)
        from_cfg = _reward_kwargs(config)
        unknown = sorted(set(from_cfg) - set(DEFAULTS))
        if unknown:
            logger.warning("prpo reward manager: ignoring unknown reward.reward_kwargs keys %s", unknown)
        opts.update({k: v for k, v in from_cfg.items() if k in DEFAULTS})
        opts.update({k: v for k, v in kwargs.items() if k in DEFAULTS})
        self.correct_score = float(opts["correct_score"])
        self.incorrect_score = float(opts["incorrect_score"])
        self.no_answer_score = (
            self.incorrect_score if opts["no_answer_score"] is None else float(opts["no_answer_score"])
        )
        timeout = opts["grading_timeout"]
        try:
            self.grading_timeout = float(timeout)
        except (TypeError, ValueError):
            self.grading_timeout = float("nan")
        if not self.grading_timeout > 0 or self.grading_timeout == float("inf"):
            raise ValueError(f"reward.reward_kwargs.grading_timeout must be a finite number of seconds > 0, got "
                             f"{timeout!r} (a grading without a bound can hang the reward worker)")
        configure_grading(workers=opts["grading_workers"], memory_limit_mb=opts["grading_memory_limit_mb"])
        get_grading_pool().start(wait=True)  # a machine that cannot run the grading workers fails here
        self.stop_ids = frozenset(stop_token_ids(tokenizer, generation_config_eos(_model_path(config, tokenizer))))

    def score_of(self, result: GradeResult) -> float:
        if result.correct:
            return self.correct_score
        if not result.answer_found:
            return self.no_answer_score
        return self.incorrect_score

    async def _grade(self, response_str: str, ground_truth) -> GradeResult:
        # the executor thread waits on a grading worker (GIL released); the worker is killed after grading_timeout
        loop = asyncio.get_running_loop()
        # a timed-out grading is logged (warning, with the answer) by the grading pool
        return await loop.run_in_executor(
            None, functools.partial(grade, response_str, ground_truth, timeout=self.grading_timeout))

    async def run_single(self, data: DataProto) -> dict:
        data = data[-1:]  # multi-sequence outputs: the reward is computed on the last sequence (as verl's managers)
        item = data[0]
        response_ids = item.batch["responses"]
        response_length = response_ids.shape[-1]
        valid_len = int(item.batch["attention_mask"][-response_length:].sum())
        valid_ids = response_ids[:valid_len]

        reward_model = item.non_tensor_batch.get("reward_model", None)
        if reward_model is None or "ground_truth" not in reward_model:
            raise KeyError("prpo reward manager: non_tensor_batch['reward_model']['ground_truth'] is missing")
        ground_truth = reward_model["ground_truth"]
        if hasattr(ground_truth, "tolist"):  # numpy array / scalar from parquet
            ground_truth = ground_truth.tolist()

        # the running loop (not ``self.loop`` captured at construction): works under Ray and under asyncio.run
        response_str = await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(response_text, self.tokenizer, valid_ids.tolist(), self.stop_ids))
        result = await self._grade(response_str, ground_truth)
        score = self.score_of(result)
        return {
            "reward_score": float(score),
            "reward_extra_info": {
                "answer_found": float(result.answer_found),
                "correct": float(result.correct),
                "acc": float(result.correct),
                TIMEOUT_KEY: float(result.timed_out),
            },
        }
