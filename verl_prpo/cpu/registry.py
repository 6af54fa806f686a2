"""What CPU mode registers in verl, as cheap entries: the heavy modules load only where they are used.

``verl_prpo.registration`` calls these when verl imports the owning registry module:

* the ``hf`` rollout backend: a loader function in ``RolloutReplicaRegistry`` (``verl_prpo.cpu.rollout``, which
  imports Ray and verl's rollout stack, loads on the first ``RolloutReplicaRegistry.get("hf")``) and a class path in
  ``_ROLLOUT_REGISTRY`` (imported by verl's ``get_rollout_class``);
* on the CPU platform only (``VERL_PLATFORM=cpu``), the FSDP engines for device ``cpu`` and the gloo process group.
"""

from __future__ import annotations

HF_ROLLOUT_NAME = "hf"
#: class path verl's ``get_rollout_class("hf", "async")`` imports
HF_ROLLOUT_CLASS = "verl_prpo.cpu.rollout.HFServerAdapter"


def load_hf_replica():
    """``RolloutReplicaRegistry`` loader of the ``hf`` replica class."""
    from verl_prpo.cpu.rollout import HFReplica

    return HFReplica


VLLM_ROLLOUT_NAME = "vllm"


def load_cpu_vllm_replica():
    """``RolloutReplicaRegistry`` loader of verl's vLLM replica for the CPU build of vLLM (CPU mode only)."""
    from verl_prpo.cpu.vllm_rollout import CPUvLLMReplica

    return CPUvLLMReplica


def register_cpu_engines_and_process_group() -> None:
    """CPU mode: FSDP engines for device ``cpu`` in ``EngineRegistry``; the gloo group of a worker-group process."""
    import verl_prpo.cpu.engine  # noqa: F401  (registers FSDP engines for device cpu)
    from verl_prpo.cpu.distributed import ensure_cpu_process_group

    ensure_cpu_process_group()
