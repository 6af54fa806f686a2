"""verl's own vLLM rollout on the CPU build of vLLM: three thin subclasses, one behaviour changed.

verl 0.9.1 was written against vLLM 0.24. The CPU build the registry serves with the CPU torch is vLLM 0.27.1, and
there one thing differs on the weight-sync path: after loading, vLLM's CPU linear layers repack their weight for
oneDNN / the SGL kernel and *replace* ``layer.weight`` by an empty parameter without a ``weight_loader``
(``vllm/model_executor/layers/utils.py``, ``dispatch_cpu_unquantized_gemm(..., remove_weight=True)``). verl's
weight sync (``vLLMColocateWorkerExtension.update_weights_from_ipc``, ``verl/workers/rollout/vllm_rollout/utils.py``)
calls ``model.load_weights`` on that model as GPU vLLM 0.24 allowed, and fails with ``'Parameter' object has no
attribute 'weight_loader'``.

vLLM's answer is its own layerwise reload (``vllm/model_executor/model_loader/reload``, used by its
``reload_weights``): put each layer back in checkpoint format, load, re-run the layer's post-load processing (the
repacking) and copy the result into the tensors the kernels hold. The extension below receives verl's buckets as
verl does and loads them through that API. Everything else (server, agent loop, the sender in the actor,
sleep/wake, request routing) is verl's unchanged code: the classes only name the extension.

* ``CPUWorkerExtension``: verl's colocate worker extension with the weight load done by layerwise reload;
* ``CPUvLLMHttpServer``: verl's ``vLLMHttpServer`` naming that extension (verl's documented override hook);
* ``CPUvLLMReplica``: verl's ``vLLMReplica`` launching that server. In CPU mode (``VERL_PLATFORM=cpu``) the plugin
  registers it under verl's own name ``vllm``, so ``actor_rollout_ref.rollout.name=vllm`` selects it.
"""

from __future__ import annotations

import logging
import os

import ray
import torch

from verl.workers.rollout.vllm_rollout.utils import vLLMColocateWorkerExtension
from verl.workers.rollout.vllm_rollout.vllm_async_server import vLLMHttpServer, vLLMReplica

logger = logging.getLogger(__name__)

WORKER_EXTENSION = f"{__name__}.CPUWorkerExtension"
#: vLLM's CPU setting of the KV-cache size in GiB (it replaces gpu_memory_utilization when set)
KV_CACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"


class _RotaryCacheNotLoaded(logging.Filter):
    """Drops layerwise reload's "RotaryEmbedding: Failed to load weights", logged at every sync: the rotary cache is
    computed, never part of a checkpoint, and reload keeps it as it was. Every other layer's warning passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "%s: Failed to load weights" and record.args
                    and record.args[0] == "RotaryEmbedding")


class CPUWorkerExtension(vLLMColocateWorkerExtension):
    """Weight sync into vLLM's CPU model through vLLM's layerwise reload."""

    def update_weights_from_ipc(self, peft_config: dict | None = None, base_sync_done: bool = False,
                                use_shm: bool = False):
        if peft_config:
            raise NotImplementedError("CPU mode: LoRA weight sync into vLLM is not supported")
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

        from verl.workers.rollout.vllm_rollout.bucketed_weight_transfer import BucketedWeightReceiver

        if self.device is None:
            self.device = torch.device("cpu")
        reload_log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
        if not any(isinstance(f, _RotaryCacheNotLoaded) for f in reload_log.filters):
            reload_log.addFilter(_RotaryCacheNotLoaded())
        models = list(self._iter_all_models_with_config())
        for model, _ in models:
            initialize_layerwise_reload(model)

        def on_bucket_received(weights: list[tuple[str, torch.Tensor]], is_last: bool) -> None:
            # On CPU the received tensors are views of the shared-memory bucket, which the next bucket overwrites;
            # layerwise reload keeps a layer's tensors until the whole layer has arrived, so they are copied.
            owned = [(name, t.clone()) for name, t in weights]
            for model, _ in models:
                model.load_weights(owned)

        receiver = BucketedWeightReceiver(zmq_handle=self._get_zmq_handle(), device=self.device, use_shm=use_shm)
        receiver.receive_weights(on_bucket_received=on_bucket_received)
        for model, model_config in models:
            finalize_layerwise_reload(model, model_config)


class CPUvLLMHttpServer(vLLMHttpServer):
    """verl's vLLM server with the CPU worker extension."""

    def _get_worker_extension_cls(self) -> str:
        return WORKER_EXTENSION


class CPUvLLMReplica(vLLMReplica):
    """verl's vLLM replica launching ``CPUvLLMHttpServer``; checks at construction (trainer start-up) what would
    otherwise fail as a traceback from a vLLM worker process: the model's head size and the KV-cache reservation."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.server_class = ray.remote(CPUvLLMHttpServer)
        check_cpu_vllm_setup(self.model_config, self.config)


def supported_head_sizes() -> list[int]:
    """Head sizes vLLM's CPU attention backend accepts (asked from the installed vLLM)."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    return list(CPUAttentionBackend.get_supported_head_sizes())


def head_size(hf_config) -> int:
    text = getattr(hf_config, "text_config", None) or hf_config
    explicit = getattr(text, "head_dim", None)
    return int(explicit) if explicit else int(text.hidden_size) // int(text.num_attention_heads)


def kv_cache_bytes(rollout_config, total_ram_bytes: int) -> tuple[int, str]:
    """Host memory one vLLM engine reserves for its KV cache on CPU, and the setting that decides it."""
    gib = os.environ.get(KV_CACHE_ENV, "").strip()
    if gib:
        return int(gib) << 30, f"{KV_CACHE_ENV}={gib} (GiB)"
    share = float(_get(rollout_config, "gpu_memory_utilization", 0.5))
    return int(share * total_ram_bytes), f"actor_rollout_ref.rollout.gpu_memory_utilization={share} (share of host RAM)"


def check_cpu_vllm_setup(model_config, rollout_config, *, available_bytes: int | None = None,
                         total_bytes: int | None = None) -> None:
    """Raise ``ValueError`` naming the setting to change when vLLM's CPU engine could not start."""
    import psutil

    path = _get(model_config, "local_path", None) or _get(model_config, "path", "?")
    hf_config = _get(model_config, "hf_config", None)
    if hf_config is not None:
        size, ok = head_size(hf_config), supported_head_sizes()
        if size not in ok:
            raise ValueError(
                f"CPU mode: vLLM's CPU attention does not support head size {size} of {path} (hidden_size / "
                f"num_attention_heads); it accepts {ok}. Use a model with one of those head sizes, or set "
                "actor_rollout_ref.rollout.name=hf (Hugging Face generate, slower) for this model.")
    mem = psutil.virtual_memory()
    available = mem.available if available_bytes is None else available_bytes
    total = mem.total if total_bytes is None else total_bytes
    need, setting = kv_cache_bytes(rollout_config, total)
    if need >= available:
        raise ValueError(
            f"CPU mode: vLLM would reserve {need / 2**30:.1f} GiB of host RAM for its KV cache ({setting}), but "
            f"only {available / 2**30:.1f} GiB are available. Set {KV_CACHE_ENV} to a few GiB in "
            "ray_kwargs.ray_init.runtime_env.env_vars (the CPU config sets 1), or lower "
            "actor_rollout_ref.rollout.gpu_memory_utilization.")


def _get(obj, key: str, default=None):
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)
