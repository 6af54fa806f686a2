"""A ``cpu`` platform for verl's platform registry.

verl asks its platform for the torch device module, the collective backend and the Ray resource that marks an
accelerator. On CPU: a small shim module over ``torch.cpu`` (memory queries answer from the process RSS, cache
calls are no-ops), gloo, and logical Ray "GPUs" (declared with ``ray_init.num_gpus``, no CUDA involved) as device slots, because verl's
resource pools always ask Ray for accelerators.
"""

from __future__ import annotations

import os
import types
from contextlib import contextmanager
from typing import Any, Optional

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry

from verl_prpo.cpu import CPU_PLATFORM_NAME, CPU_RAY_RESOURCE


def _rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - metrics only
        return 0


def _make_device_module() -> types.ModuleType:
    """``torch.cuda``-shaped module for the CPU: what verl calls on ``get_torch_device()``."""
    mod = types.ModuleType("verl_prpo_cpu_device")
    cpu = torch.cpu
    mod.is_available = lambda: True
    mod.device_count = lambda: 1
    mod.current_device = lambda: "cpu"
    mod.set_device = lambda *_a, **_k: None
    mod.synchronize = lambda *_a, **_k: None
    mod.empty_cache = lambda: None
    mod.manual_seed = lambda seed: torch.manual_seed(seed)
    mod.manual_seed_all = lambda seed: torch.manual_seed(seed)
    mod.get_rng_state = lambda *_a, **_k: torch.get_rng_state()
    mod.set_rng_state = lambda state, *_a, **_k: torch.set_rng_state(state)
    mod.memory_allocated = lambda *_a, **_k: _rss_bytes()
    mod.memory_reserved = lambda *_a, **_k: _rss_bytes()
    mod.max_memory_allocated = lambda *_a, **_k: _rss_bytes()
    mod.max_memory_reserved = lambda *_a, **_k: _rss_bytes()
    mod.reset_peak_memory_stats = lambda *_a, **_k: None

    def mem_get_info(*_a, **_k):
        try:
            import psutil

            vm = psutil.virtual_memory()
            return int(vm.available), int(vm.total)
        except Exception:  # noqa: BLE001
            return 0, 0

    mod.mem_get_info = mem_get_info
    mod.Stream = cpu.Stream
    mod.Event = getattr(cpu, "Event", None)
    mod.stream = cpu.stream
    mod.current_stream = cpu.current_stream
    mod.is_bf16_supported = lambda *_a, **_k: True
    mod.get_device_name = lambda *_a, **_k: "cpu"
    mod.get_device_capability = lambda *_a, **_k: (None, None)
    mod.amp = torch.amp
    mod.memory = types.SimpleNamespace(_set_allocator_settings=lambda *_a, **_k: None)
    mod.__getattr__ = lambda name: getattr(cpu, name)  # anything else: torch.cpu's own
    return mod


_DEVICE_MODULE = _make_device_module()


@PlatformRegistry.register(platform=CPU_PLATFORM_NAME)
class PlatformCPU(PlatformBase):
    """verl platform for CPU-only machines (tests, CI, laptops). Select it with ``VERL_PLATFORM=cpu``."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return _DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Never auto-detected: CPU mode is an explicit choice (VERL_PLATFORM=cpu), so that installing the
        # plugin cannot change which platform a GPU machine picks.
        return os.environ.get("VERL_PLATFORM", "").strip().lower() == CPU_PLATFORM_NAME

    def current_device(self) -> str:
        # verl moves tensors with ``.to(get_device_id())``: an int would mean cuda:N, so answer the device itself.
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        # verl checks free accelerators by reading Ray's "GPU"/"NPU" counts directly
        # (ResourcePoolManager._check_resource_available), so CPU mode declares logical Ray GPUs
        # (``ray_init.num_gpus``) as device slots; no CUDA is ever touched.
        return CPU_RAY_RESOURCE

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        return {"num_gpus": num_gpus}

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
