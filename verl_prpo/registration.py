"""One place that imports every module that registers something in verl, and checks the result.

verl swallows plugin import errors (it logs them at DEBUG), so ``check_registered`` is called again when
the trainer starts and fails loudly if anything is missing.
"""

from __future__ import annotations

import importlib
import logging

logger = logging.getLogger(__name__)

#: modules imported for their registration side effects, in order
REGISTERING_MODULES: tuple[str, ...] = ("verl_prpo.estimators", "verl_prpo.reward_manager", "verl_prpo.trainer")

#: functions called for their registration side effects (module:function)
REGISTERING_FUNCTIONS: tuple[str, ...] = ("verl_prpo.cpu.registry:register_cpu_mode",)

#: advantage estimator names this plugin provides
ESTIMATOR_NAMES: tuple[str, ...] = ("prpo", "prl", "spro", "prm_avg")

_errors: dict[str, BaseException] = {}


def register_all() -> None:
    """Import every registering module; remember (and log) failures instead of hiding them."""
    # functions first: the cpu platform must be registered before any module resolves verl's platform
    for spec in REGISTERING_FUNCTIONS:
        module, func = spec.split(":")
        try:
            getattr(importlib.import_module(module), func)()
        except Exception as exc:  # noqa: BLE001 - re-raised by check_registered at trainer start
            _errors[spec] = exc
            logger.warning("verl_prpo: %s failed: %r", spec, exc)
    for name in REGISTERING_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - re-raised by check_registered at trainer start
            _errors[name] = exc
            logger.warning("verl_prpo: could not import %s: %r", name, exc)


def check_registered() -> None:
    """Raise a clear error if a plugin component is not registered in verl in this process."""
    if _errors:
        details = "; ".join(f"{k}: {v!r}" for k, v in _errors.items())
        raise RuntimeError(f"verl_prpo failed to register its components: {details}")
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY

    missing = [n for n in ESTIMATOR_NAMES if n not in ADV_ESTIMATOR_REGISTRY]
    if "prpo_sync" not in TRAINER_REGISTRY:
        missing.append("trainer mode prpo_sync")
    if missing:
        raise RuntimeError(
            f"verl_prpo estimators {missing} are not registered in verl. Is verl-prpo installed in this "
            "environment (pip install -e .), or set VERL_USE_EXTERNAL_MODULES=verl_prpo for every Ray worker?"
        )
