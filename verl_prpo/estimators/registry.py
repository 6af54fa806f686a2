"""The estimator registry: one record per advantage estimator of this plugin, written next to its formula.

Each estimator module declares itself once with ``@register_estimator(name, config, needs_...)``. Everything else
reads the record: the ``prpo_sync`` trainer (which inputs to fetch, segment and score, which options to validate at
start-up), the registration in verl's ``ADV_ESTIMATOR_REGISTRY`` (``verl_prpo.registration``), the start-up check
(``verl_prpo.startup``), the set-up script and the examples. Plain Python: imports without torch and without verl.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

__all__ = ["EstimatorSpec", "ESTIMATORS", "register_estimator", "get_estimator", "estimator_names"]


@dataclass(frozen=True)
class EstimatorSpec:
    """What one estimator is and what it needs from the trainer.

    Attributes:
        name: the value of ``algorithm.adv_estimator`` (and the key in verl's ``ADV_ESTIMATOR_REGISTRY``).
        fn: the estimator, verl's signature ``fn(token_level_rewards, response_mask, index, config, **inputs)``
            returning ``(advantages, returns)``.
        config: its option dataclass (a ``config.EstimatorConfig``); ``config.NODE`` is the sub-node of
            ``algorithm`` that holds the options (two estimators may share one, as ``prm_avg`` reads ``prpo``).
        needs_prm: reads ``prm_scores`` (B, L): the trainer segments the responses and scores the segments with the
            PRM (or reads the batch field ``prm_scores``).
        needs_ref: reads ``old_log_probs`` and ``ref_log_prob``: the trainer makes verl build the reference policy.
        needs_segments: reads ``segment_ids`` (B, L): the trainer segments with ``algorithm.<node>.segmentation``
            (and the node's ``k``, ``m``, ``step_len``, ``seed``, ``cut_rule`` where it has them).
    """

    name: str
    fn: Callable
    config: type
    needs_prm: bool = False
    needs_ref: bool = False
    needs_segments: bool = False

    @property
    def config_node(self) -> str:
        """The sub-node of verl's ``algorithm`` node that holds the options, e.g. ``prpo``."""
        return self.config.NODE


#: name -> record, in registration order
ESTIMATORS: dict[str, EstimatorSpec] = {}


def register_estimator(name: str, config: type, *, needs_prm: bool = False, needs_ref: bool = False,
                       needs_segments: bool = False) -> Callable[[Callable], Callable]:
    """Decorator recording ``fn`` as the estimator ``name`` (see ``EstimatorSpec``); returns ``fn`` unchanged.

    The record is checked against what the trainer will read from its config: ``NODE``; ``segmentation`` with
    ``needs_segments``; ``mu`` (the score of a segment the PRM could not read) with ``needs_prm``.
    """
    if not isinstance(getattr(config, "NODE", None), str):
        raise ValueError(f"estimator {name!r}: its config {config.__name__} names no NODE (its algorithm.<node>)")
    if needs_prm and not needs_segments:
        raise ValueError(f"estimator {name!r}: needs_prm implies needs_segments (the PRM scores segments)")
    if needs_segments and "segmentation" not in getattr(config, "__dataclass_fields__", {}):
        raise ValueError(f"estimator {name!r}: needs_segments, but {config.__name__} has no `segmentation` option")
    if needs_prm and not hasattr(config, "mu"):
        raise ValueError(f"estimator {name!r}: needs_prm, but {config.__name__} has no `mu` (the PRM's fallback score)")

    def record(fn: Callable) -> Callable:
        spec = EstimatorSpec(name, fn, config, needs_prm=needs_prm, needs_ref=needs_ref, needs_segments=needs_segments)
        if name in ESTIMATORS and ESTIMATORS[name].fn is not fn:
            raise ValueError(f"estimator {name!r} is registered twice: {ESTIMATORS[name].fn} and {fn}")
        ESTIMATORS[name] = spec
        return fn

    return record


def get_estimator(name: str) -> EstimatorSpec:
    """The record of ``name``; a ``ValueError`` listing the registered names if there is none."""
    if name not in ESTIMATORS:
        raise ValueError(f"{name!r} is not an estimator of verl-prpo; registered: {list(ESTIMATORS)}")
    return ESTIMATORS[name]


def estimator_names(*, needs_prm: bool | None = None, needs_ref: bool | None = None,
                    needs_segments: bool | None = None) -> tuple[str, ...]:
    """Registered names, in registration order, filtered by what they need (None: either)."""
    wanted = {"needs_prm": needs_prm, "needs_ref": needs_ref, "needs_segments": needs_segments}
    return tuple(name for name, spec in ESTIMATORS.items()
                 if all(value is None or getattr(spec, key) == value for key, value in wanted.items()))
