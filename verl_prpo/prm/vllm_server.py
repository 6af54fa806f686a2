"""verl's vLLM server classes for a pooling PRM: one override, through verl's worker-extension hook.

After the engine starts, verl's ``vLLMHttpServer`` calls ``monkey_patch_model`` on every vLLM worker
(``verl/workers/rollout/vllm_rollout/vllm_async_server.py``), which wraps ``model.compute_logits`` so that sampling
never picks an out-of-vocabulary or vision-placeholder token. A pooling model never samples, and vLLM's own
``Qwen2ForProcessRewardModel`` has no ``compute_logits``: the patch raises ``AttributeError`` and the server never
comes up. (A ``*ForTokenClassification`` checkpoint passes: vLLM converts it from the ``*ForCausalLM`` class, which
keeps ``compute_logits``.) The worker extensions below skip that patch for models without ``compute_logits``;
everything else is verl's code.

* GPU: ``PRMvLLMReplica`` -> ``PRMvLLMHttpServer`` -> ``PRMWorkerExtension`` (verl's colocate extension);
* CPU mode: ``CPUPRMvLLMReplica`` -> ``CPUPRMvLLMHttpServer`` -> ``CPUPRMWorkerExtension`` (the plugin's CPU
  classes of ``verl_prpo.cpu.vllm_rollout``, which load weights through vLLM's layerwise reload).

This module imports verl's vLLM server stack (and vLLM): import it only where a replica is built.
"""

from __future__ import annotations

import logging

import ray
from verl.workers.rollout.vllm_rollout.utils import vLLMColocateWorkerExtension
from verl.workers.rollout.vllm_rollout.vllm_async_server import vLLMHttpServer, vLLMReplica

from verl_prpo.cpu.vllm_rollout import CPUvLLMHttpServer, CPUvLLMReplica, CPUWorkerExtension

logger = logging.getLogger(__name__)


class _PoolingModelPatch:
    """``monkey_patch_model`` that leaves pooling models (no ``compute_logits``) alone."""

    def monkey_patch_model(self, vocab_size: int, banned_token_ids=None):
        model = self.model_runner.model
        if not hasattr(model, "compute_logits"):
            logger.info("%s has no compute_logits (a pooling model never samples): verl's logits patch skipped",
                        type(model).__name__)
            return None
        return super().monkey_patch_model(vocab_size, banned_token_ids)


class PRMWorkerExtension(_PoolingModelPatch, vLLMColocateWorkerExtension):
    """verl's colocate worker extension for a pooling PRM (GPU)."""


class PRMvLLMHttpServer(vLLMHttpServer):
    def _get_worker_extension_cls(self) -> str:
        return f"{__name__}.PRMWorkerExtension"


class PRMvLLMReplica(vLLMReplica):
    """verl's vLLM replica launching ``PRMvLLMHttpServer``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.server_class = ray.remote(PRMvLLMHttpServer)


class CPUPRMWorkerExtension(_PoolingModelPatch, CPUWorkerExtension):
    """The plugin's CPU worker extension (weights through vLLM's layerwise reload) for a pooling PRM."""


class CPUPRMvLLMHttpServer(CPUvLLMHttpServer):
    def _get_worker_extension_cls(self) -> str:
        return f"{__name__}.CPUPRMWorkerExtension"


class CPUPRMvLLMReplica(CPUvLLMReplica):
    """The plugin's CPU vLLM replica (its start-up checks included) launching ``CPUPRMvLLMHttpServer``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.server_class = ray.remote(CPUPRMvLLMHttpServer)


def replica_class(device_type: str):
    """The PRM replica class for ``device_type`` (``cpu``: the plugin's CPU vLLM classes; else verl's)."""
    return CPUPRMvLLMReplica if device_type == "cpu" else PRMvLLMReplica
