"""Register verl's own FSDP/FSDP2 engines for the ``cpu`` device.

verl's ``EngineRegistry`` maps (model type, backend, device) to an engine class and registers FSDP for cuda/npu only.
The FSDP2 engine itself runs on CPU with gloo process groups and SDPA attention; registering the same classes under
device ``cpu`` is all it takes (no subclass, no patch).
"""

from __future__ import annotations

from verl.workers.engine.base import EngineRegistry
from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead


def register_cpu_engines() -> None:
    for model_type, engine_cls in (("language_model", FSDPEngineWithLMHead), ("value_model", FSDPEngineWithValueHead)):
        backends = EngineRegistry._engines.get(model_type, {})
        todo = [b for b in ("fsdp", "fsdp2") if "cpu" not in backends.get(b, {})]
        if todo:
            EngineRegistry.register(model_type=model_type, backend=todo, device="cpu")(engine_cls)


register_cpu_engines()
