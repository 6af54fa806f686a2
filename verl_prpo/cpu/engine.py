"""verl's FSDP/FSDP2 engines, registered in ``EngineRegistry`` for the ``cpu`` device.

verl registers FSDP for cuda/npu only. The FSDP2 engine runs on CPU with gloo process groups and SDPA attention;
the one thing that does not is the reference model: upstream wraps every forward-only model in
``CPUOffloadPolicy(pin_memory=True)``, and pinned memory needs an accelerator. On CPU the parameters already live
in host memory, so the CPU engines build forward-only models without that offload policy and are otherwise
upstream's classes unchanged.
"""

from __future__ import annotations

from verl.workers.engine.base import EngineRegistry
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead


class _NoPinnedOffloadMixin:
    def _build_fsdp_module(self, module):
        forward_only = self.engine_config.forward_only
        if not forward_only:
            return super()._build_fsdp_module(module)
        self.engine_config.forward_only = False  # skips only the forced (pinned) CPU-offload wrapping
        try:
            return super()._build_fsdp_module(module)
        finally:
            self.engine_config.forward_only = forward_only


class CPUFSDPEngineWithLMHead(_NoPinnedOffloadMixin, FSDPEngineWithLMHead):
    """FSDP/FSDP2 language-model engine for CPU mode."""


class CPUFSDPEngineWithValueHead(_NoPinnedOffloadMixin, FSDPEngineWithValueHead):
    """FSDP/FSDP2 value-model engine for CPU mode."""


def register_cpu_engines() -> None:
    for model_type, engine_cls in (("language_model", CPUFSDPEngineWithLMHead),
                                   ("value_model", CPUFSDPEngineWithValueHead)):
        backends = EngineRegistry._engines.get(model_type, {})
        todo = [b for b in ("fsdp", "fsdp2") if "cpu" not in backends.get(b, {})]
        if todo:
            EngineRegistry.register(model_type=model_type, backend=todo, device="cpu")(engine_cls)


register_cpu_engines()
