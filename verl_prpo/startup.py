"""Start-up check: is every component of the plugin registered in verl in this process?

``verl_prpo.registration`` registers the plugin's names lazily, each when verl imports the module that owns the
registry, and records failures here (``registration_errors``) instead of breaking verl's import. The ``prpo_sync``
trainer calls ``check_registered`` before it builds anything, so that a missing or failed registration stops the run
with its cause. This module imports nothing of verl or of the plugin at import time (the registration imports it
while verl loads the plugin; the trainer imports it, not the registration).
"""

from __future__ import annotations

import os

__all__ = ["registration_errors", "cpu_mode", "check_registered"]

#: registration step -> the exception it raised (filled by ``verl_prpo.registration``)
registration_errors: dict[str, BaseException] = {}


def cpu_mode() -> bool:
    """True when this process runs verl on the plugin's CPU platform (``VERL_PLATFORM=cpu``)."""
    from verl_prpo.cpu import CPU_PLATFORM_NAME

    return os.environ.get("VERL_PLATFORM", "").strip().lower() == CPU_PLATFORM_NAME


def _register_late_cpu_mode(missing_engines: bool, missing_vllm: bool) -> None:
    """``VERL_PLATFORM=cpu`` was set after verl imported its engine or replica module (their registration step saw
    no CPU mode): register the CPU engines / the CPU build of the vLLM replica now."""
    try:
        if missing_engines:
            from verl_prpo.cpu.registry import register_cpu_engines_and_process_group

            register_cpu_engines_and_process_group()
        if missing_vllm:
            from verl.workers.rollout.replica import RolloutReplicaRegistry

            from verl_prpo.cpu.registry import VLLM_ROLLOUT_NAME, load_cpu_vllm_replica

            RolloutReplicaRegistry.register(VLLM_ROLLOUT_NAME, load_cpu_vllm_replica)
    except Exception as exc:  # noqa: BLE001 - reported with the rest by check_registered
        registration_errors.setdefault("cpu mode (late)", exc)


def check_registered() -> None:
    """Raise a clear error if a plugin component is not registered in verl in this process.

    Imports verl's registries (which runs every registration step still pending), registers what CPU mode needs if
    ``VERL_PLATFORM=cpu`` came late, then checks each name: the estimators of ``verl_prpo.estimators``, the trainer
    mode ``prpo_sync``, the reward manager ``prpo``, the CPU platform, the ``hf`` rollout and, in CPU mode, the CPU
    engines and vLLM replica. Meant for the trainer process, where those modules are loaded anyway.
    """
    try:
        from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER
        from verl.plugin.platform import PlatformRegistry
        from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY
        from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY
        from verl.workers.rollout import base as rollout_base
        from verl.workers.rollout.replica import RolloutReplicaRegistry

        engines = None
        if cpu_mode():
            from verl.workers.engine.base import EngineRegistry

            engines = EngineRegistry._engines
    except Exception as exc:  # noqa: BLE001 - reported below with the registration errors
        registration_errors.setdefault("import verl's registries", exc)

    from verl_prpo.cpu import CPU_PLATFORM_NAME
    from verl_prpo.cpu.registry import HF_ROLLOUT_NAME, VLLM_ROLLOUT_NAME, load_cpu_vllm_replica

    def cpu_engine_missing(model_type: str) -> bool:
        return CPU_PLATFORM_NAME not in engines.get(model_type, {}).get("fsdp", {})

    model_types = ("language_model", "value_model")
    if not registration_errors and engines is not None:
        late_engines = any(cpu_engine_missing(t) for t in model_types)
        late_vllm = RolloutReplicaRegistry._registry.get(VLLM_ROLLOUT_NAME) is not load_cpu_vllm_replica
        if late_engines or late_vllm:
            _register_late_cpu_mode(late_engines, late_vllm)
    if registration_errors:
        details = "; ".join(f"{k}: {v!r}" for k, v in registration_errors.items())
        raise RuntimeError(f"verl_prpo failed to register its components: {details}")

    from verl_prpo.estimators import ESTIMATOR_NAMES

    missing = [n for n in ESTIMATOR_NAMES if n not in ADV_ESTIMATOR_REGISTRY]
    if "prpo_sync" not in TRAINER_REGISTRY:
        missing.append("trainer mode prpo_sync")
    if "prpo" not in REWARD_MANAGER:
        missing.append("reward manager prpo")
    if PlatformRegistry.get(CPU_PLATFORM_NAME) is None:
        missing.append("platform cpu")
    if HF_ROLLOUT_NAME not in RolloutReplicaRegistry._registry or \
            (HF_ROLLOUT_NAME, "async") not in rollout_base._ROLLOUT_REGISTRY:
        missing.append("rollout hf")
    if engines is not None:
        if RolloutReplicaRegistry._registry.get(VLLM_ROLLOUT_NAME) is not load_cpu_vllm_replica:
            missing.append("rollout vllm (CPU build)")
        missing += [f"cpu engine {t}" for t in model_types if cpu_engine_missing(t)]
    if missing:
        raise RuntimeError(
            f"verl_prpo components {missing} are not registered in verl. Is verl-prpo installed in this "
            "environment (pip install -e .), or set VERL_USE_EXTERNAL_MODULES=verl_prpo for every Ray worker?"
        )
