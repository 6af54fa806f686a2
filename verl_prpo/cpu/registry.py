"""Registration of the CPU-mode pieces in verl's registries (cheap: heavy modules load lazily)."""

from __future__ import annotations

import os

from verl_prpo.cpu import CPU_PLATFORM_NAME

HF_ROLLOUT_NAME = "hf"


def _load_hf_replica():
    from verl_prpo.cpu.rollout import HFReplica

    return HFReplica


def register_cpu_mode() -> None:
    """Register the ``cpu`` platform, the ``hf`` rollout backend and, on the CPU platform, the CPU engines."""
    from verl.workers.rollout import base as rollout_base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    import verl_prpo.cpu.platform  # noqa: F401  (registers the platform)

    RolloutReplicaRegistry.register(HF_ROLLOUT_NAME, _load_hf_replica)
    rollout_base._ROLLOUT_REGISTRY[(HF_ROLLOUT_NAME, "async")] = "verl_prpo.cpu.rollout.HFServerAdapter"
    if os.environ.get("VERL_PLATFORM", "").strip().lower() == CPU_PLATFORM_NAME:
        import verl_prpo.cpu.engine  # noqa: F401  (registers FSDP engines for device cpu)
        from verl_prpo.cpu.distributed import ensure_cpu_process_group

        ensure_cpu_process_group()
