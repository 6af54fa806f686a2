"""Registration of the plugin's names in verl's registries, at the cost of a dictionary entry per process.

verl imports the ``verl.plugins`` entry point (``prpo = verl_prpo``) in every process it starts. Importing the
modules that define our trainer, reward manager or engines would load verl's trainer, rollout, agent-loop and
reward-loop stacks in every Ray worker (seconds and ~150 MiB each) and, through verl's FSDP engine module, make verl
resolve its platform during ``import verl``. So registration is deferred, registry by registry, to the moment the
process imports the verl module that owns the registry: every verl lookup function is defined in (or imports) that
module, so nothing can be looked up before the entry is there.

=====================================  =============================================  ===================================
verl module (imported by verl itself)  what is registered then                        what that imports
=====================================  =============================================  ===================================
``verl.plugin.platform``               ``cpu`` in ``PlatformRegistry``                ``verl_prpo.cpu.platform`` (torch)
``verl.trainer.ppo.core_algos``        every estimator of the registry                ``verl_prpo.estimators``
``verl.trainer.ppo.v1``                trainer mode ``prpo_sync``                      ``verl_prpo.trainer``
``verl.experimental.reward_loop``      reward manager ``prpo``                         ``verl_prpo.reward_manager``
``.reward_manager``
``verl.workers.rollout.replica``       ``hf`` in ``RolloutReplicaRegistry``; CPU mode  nothing (a loader function)
                                       only: ``vllm`` (verl's replica, CPU extension)
``verl.workers.rollout.base``          ``("hf", "async")`` in ``_ROLLOUT_REGISTRY``     nothing (a class path)
``verl.workers.engine``                CPU mode only: FSDP engines for device cpu     ``verl_prpo.cpu.engine``
=====================================  =============================================  ===================================

"When verl imports the module" is a post-import hook: a ``sys.meta_path`` finder that, for those module names only,
wraps the real loader and runs the registration right after the module has executed (or at once, if the module is
already imported when the plugin loads: ``verl.plugin.platform`` always is). The registries themselves are verl's
unchanged dictionaries. CPU mode is read from ``VERL_PLATFORM`` when ``verl.workers.engine`` is imported, not when
the plugin is, so a ``VERL_PLATFORM`` (or a platform plugin) set after ``import verl`` is honoured: ``import verl``
no longer resolves the platform. In CPU mode the gloo process group of a worker-group process is created with the
platform registration, during ``import verl`` as before (or, when ``VERL_PLATFORM=cpu`` was set later, when the
engines are imported).

Without verl (a bare torch + transformers machine), no hook ever fires and ``import verl_prpo`` imports nothing else.

verl swallows plugin import errors (it logs them at DEBUG), and a registration that runs inside one of verl's imports
must not break that import: failures are logged as warnings and kept in ``verl_prpo.startup.registration_errors``;
``verl_prpo.startup.check_registered`` (called when the trainer is built) imports every owning module, which runs any
registration still pending, and raises if anything is missing or failed. The estimators are registered from their
records (``verl_prpo.estimators.ESTIMATORS``): this module names no estimator.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import logging
import sys
import threading
from typing import Callable

from verl_prpo import startup
from verl_prpo.startup import check_registered, cpu_mode as _cpu_mode  # noqa: F401  (check_registered: re-export)

logger = logging.getLogger(__name__)

#: the estimator registry, whose records are registered in verl's ADV_ESTIMATOR_REGISTRY (its ESTIMATOR_NAMES)
ESTIMATORS_MODULE = "verl_prpo.estimators"
#: modules imported for their registration side effects (each when its verl module is imported)
REGISTERING_MODULES: tuple[str, ...] = (ESTIMATORS_MODULE, "verl_prpo.reward_manager", "verl_prpo.trainer")


# ------------------------------------------------------------------------------------------- registration steps
def _register_platform() -> None:
    import verl_prpo.cpu.platform  # noqa: F401  (PlatformRegistry.register("cpu"))

    if _cpu_mode():
        # a worker-group process of CPU mode: the gloo group must exist before verl's worker creates one
        from verl_prpo.cpu.distributed import ensure_cpu_process_group

        ensure_cpu_process_group()


def _register_estimators() -> None:
    from verl.trainer.ppo.core_algos import register_adv_est

    for spec in importlib.import_module(ESTIMATORS_MODULE).ESTIMATORS.values():
        register_adv_est(spec.name)(spec.fn)


def _register_trainer() -> None:
    importlib.import_module("verl_prpo.trainer")


def _register_reward_manager() -> None:
    importlib.import_module("verl_prpo.reward_manager")


def _register_rollout_replica() -> None:
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    from verl_prpo.cpu.registry import HF_ROLLOUT_NAME, VLLM_ROLLOUT_NAME, load_cpu_vllm_replica, load_hf_replica

    RolloutReplicaRegistry.register(HF_ROLLOUT_NAME, load_hf_replica)
    if _cpu_mode():
        # verl's own name: ``rollout.name=vllm`` gets verl's vLLM replica with the CPU weight-sync extension
        RolloutReplicaRegistry.register(VLLM_ROLLOUT_NAME, load_cpu_vllm_replica)


def _register_rollout_class() -> None:
    from verl.workers.rollout import base as rollout_base

    from verl_prpo.cpu.registry import HF_ROLLOUT_CLASS, HF_ROLLOUT_NAME

    rollout_base._ROLLOUT_REGISTRY[(HF_ROLLOUT_NAME, "async")] = HF_ROLLOUT_CLASS


def _register_cpu_engines() -> None:
    if _cpu_mode():
        from verl_prpo.cpu.registry import register_cpu_engines_and_process_group

        register_cpu_engines_and_process_group()


#: (verl module whose import triggers the step, step name, step); in this order when several are already imported
HOOKS: tuple[tuple[str, str, Callable[[], None]], ...] = (
    ("verl.plugin.platform", "platform cpu", _register_platform),
    ("verl.trainer.ppo.core_algos", "estimators", _register_estimators),
    ("verl.experimental.reward_loop.reward_manager", "reward manager prpo", _register_reward_manager),
    ("verl.workers.rollout.replica", "rollout replica hf", _register_rollout_replica),
    ("verl.workers.rollout.base", "rollout class hf", _register_rollout_class),
    ("verl.workers.engine", "cpu engines", _register_cpu_engines),
    ("verl.trainer.ppo.v1", "trainer mode prpo_sync", _register_trainer),
)


def _run(name: str, step: Callable[[], None]) -> None:
    try:
        step()
    except Exception as exc:  # noqa: BLE001 - kept and re-raised by check_registered at trainer start
        startup.registration_errors[name] = exc
        logger.warning("verl_prpo: registering %s failed: %r", name, exc)


# ------------------------------------------------------------------------------------------- post-import hook
class _RegisterAfterExec(importlib.abc.Loader):
    """Delegates to the real loader; runs the pending steps of the module once it has executed."""

    def __init__(self, loader, finder: "_AfterImportFinder", fullname: str) -> None:
        self._loader = loader
        self._finder = finder
        self._fullname = fullname

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._finder.fire(self._fullname)

    def __getattr__(self, name):  # get_source, get_resource_reader, is_package ... of the real loader
        return getattr(self._loader, name)


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    """``sys.meta_path`` entry that only answers for the module names with pending registration steps."""

    def __init__(self) -> None:
        self._pending: dict[str, list[tuple[str, Callable[[], None]]]] = {}
        self._lock = threading.RLock()

    def add(self, module: str, name: str, step: Callable[[], None]) -> None:
        with self._lock:
            self._pending.setdefault(module, []).append((name, step))

    def pending(self) -> dict[str, list[str]]:
        with self._lock:
            return {m: [n for n, _ in steps] for m, steps in self._pending.items()}

    def fire(self, module: str) -> None:
        with self._lock:
            steps = self._pending.pop(module, [])
        for name, step in steps:
            _run(name, step)

    def find_spec(self, fullname, path, target=None):
        if fullname not in self._pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisterAfterExec(spec.loader, self, fullname)
        return spec


_finder = _AfterImportFinder()
_registered = False


def register_all() -> None:
    """Arrange every registration step to run when its verl module is imported (now, if it already is)."""
    global _registered
    if _registered:
        return
    _registered = True
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
    for module, name, step in HOOKS:
        _finder.add(module, name, step)
    for module, _, _ in HOOKS:
        if module in sys.modules:
            _finder.fire(module)


def pending_registrations() -> dict[str, list[str]]:
    """verl module -> registration steps still waiting for it to be imported (for diagnostics and tests)."""
    return _finder.pending()


def __getattr__(name: str):
    if name == "ESTIMATOR_NAMES":  # the registry's names, read when asked (importing it needs torch)
        return importlib.import_module(ESTIMATORS_MODULE).ESTIMATOR_NAMES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
