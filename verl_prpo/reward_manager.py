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
    +reward.reward_kwargs.grading_timeout=10     # default 10 s; grading that takes longer counts as wrong

The same keys may also be given directly as constructor keyword arguments (these win over the config).

``run_single`` returns ``{"reward_score": float, "reward_extra_info": {"answer_found": float, "correct": float,
"acc": float}}`` (scalars only, so verl can stack them into arrays; ``acc`` == ``correct`` is what verl's
validation metrics aggregate). The ground truth is ``non_tensor_batch["reward_model"]["ground_truth"]``; the
response is decoded from ``responses`` limited to its valid length (``attention_mask``), as in verl's ``naive``
manager. ``data_source`` is not used: every dataset prepared by :mod:`verl_prpo.data` is graded the same way
(:func:`verl_prpo.math_grading.grade`).

Grading runs in the event loop's default thread pool, so math-verify's signal-based timeouts are disabled
there (see :mod:`verl_prpo.math_grading`); ``grading_timeout`` bounds each call with ``asyncio.wait_for``
instead (the worker thread of a call that timed out finishes in the background).
"""

from __future__ import annotations

import asyncio
import logging

from verl import DataProto
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase
from verl.experimental.reward_loop.reward_manager.registry import register

from verl_prpo.math_grading import GradeResult, grade

logger = logging.getLogger(__name__)

REWARD_MANAGER_NAME = "prpo"

#: keys read from ``reward.reward_kwargs`` and their defaults (``no_answer_score`` defaults to ``incorrect_score``)
DEFAULTS = {"correct_score": 1.0, "incorrect_score": -1.0, "no_answer_score": None, "grading_timeout": 10.0}


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
        self.grading_timeout = None if timeout is None or float(timeout) <= 0 else float(timeout)

    def score_of(self, result: GradeResult) -> float:
        if result.correct:
            return self.correct_score
        if not result.answer_found:
            return self.no_answer_score
        return self.incorrect_score

    async def _grade(self, response_str: str, ground_truth) -> GradeResult:
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, lambda: grade(response_str, ground_truth))
        if self.grading_timeout is None:
            return await fut
        try:
            return await asyncio.wait_for(fut, timeout=self.grading_timeout)
        except asyncio.TimeoutError:
            logger.warning("prpo reward manager: grading timed out after %.1fs; scored as wrong", self.grading_timeout)
            from verl_prpo.math_grading import last_boxed

            pred = last_boxed(response_str)
            return GradeResult(answer_found=bool(pred), correct=False, predicted=pred)

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
            None, lambda: self.tokenizer.decode(valid_ids, skip_special_tokens=True)
        )
        result = await self._grade(response_str, ground_truth)
        score = self.score_of(result)
        return {
            "reward_score": float(score),
            "reward_extra_info": {
                "answer_found": float(result.answer_found),
                "correct": float(result.correct),
                "acc": float(result.correct),
            },
        }
