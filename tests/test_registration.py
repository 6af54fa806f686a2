"""The plugin costs nothing to load: lazy registration, the platform choice left to verl, import without verl.

Fresh interpreters (started together, read by their tests) check what ``import verl`` loads and registers; the
post-import mechanism and ``check_registered``'s errors are checked in this process on a throw-away module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

PYTHON = sys.executable
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_HEAVY = ["verl_prpo.trainer", "verl_prpo.reward_manager", "verl_prpo.estimators", "verl_prpo.cpu.rollout",
          "verl_prpo.cpu.engine", "verl.trainer.ppo.v1", "verl.trainer.ppo.core_algos", "verl.workers.engine",
          "verl.workers.rollout.replica", "verl.experimental.reward_loop.reward_manager"]

_LAZY_PROBE = textwrap.dedent(r"""
    import json, os, sys
    import verl  # the entry point loads the plugin
    heavy = [m for m in HEAVY if m in sys.modules]
    from verl.plugin.platform import platform_manager
    resolved_at_import = platform_manager._current_platform is not None
    from verl.plugin.platform import PlatformRegistry
    cpu_platform = PlatformRegistry.get("cpu") is not None
    os.environ["VERL_PLATFORM"] = "cpu"  # set AFTER import verl, as a launcher or a later plugin may
    from verl.plugin.platform import get_platform
    device = get_platform().device_name
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY
    from verl.trainer.ppo.v1 import get_trainer_cls
    from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
    from verl.workers.rollout.replica import RolloutReplicaRegistry
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.engine.base import EngineRegistry
    from verl_prpo.registration import check_registered, pending_registrations
    check_registered()
    print("PROBE=" + json.dumps({
        "heavy_after_import_verl": heavy, "resolved_at_import": resolved_at_import, "cpu_platform": cpu_platform,
        "device": device, "estimators": sorted(ADV_ESTIMATOR_REGISTRY),
        "trainer": get_trainer_cls("prpo_sync").__module__, "reward": get_reward_manager_cls("prpo").__module__,
        "replica": RolloutReplicaRegistry.get("hf").__module__, "rollout": _ROLLOUT_REGISTRY[("hf", "async")],
        "cpu_engines": {k: "cpu" in v.get("fsdp", {}) for k, v in EngineRegistry._engines.items()},
        "pending": pending_registrations()}))
""").replace("HEAVY", repr(_HEAVY))

_NO_VERL_PROBE = textwrap.dedent(r"""
    import importlib.abc, json, sys

    class BlockVerl(importlib.abc.MetaPathFinder):  # a GPU machine with only torch and transformers
        def find_spec(self, name, path, target=None):
            if name == "verl" or name.startswith("verl."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, BlockVerl())
    import verl_prpo
    import verl_prpo.prm
    from verl_prpo.prm.adapters import PRMAdapter, QwenMathPRMAdapter, TokenClassificationPRMAdapter
    from verl_prpo.prm.scoring import score_batch
    from verl_prpo.registration import pending_registrations
    print("PROBE=" + json.dumps({"verl": sorted(m for m in sys.modules if m == "verl" or m.startswith("verl.")),
                                 "pending": sorted(pending_registrations())}))
""")


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.pop("VERL_USE_EXTERNAL_MODULES", None)
    env.pop("VERL_USE_EXTERNAL_PLUGINS", None)
    env.pop("VERL_PLATFORM", None)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("import_cost")
    procs = {name: subprocess.Popen([PYTHON, "-c", code], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, code in (("lazy", _LAZY_PROBE), ("no_verl", _NO_VERL_PROBE))}
    yield procs
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.communicate()


def _read(proc) -> dict:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-4000:]
    lines = [ln for ln in out.splitlines() if ln.startswith("PROBE=")]
    assert lines, out[-2000:] + err[-2000:]
    return json.loads(lines[-1][len("PROBE="):])


@pytest.fixture(scope="module")
def lazy(probes):
    return _read(probes["lazy"])


def test_import_verl_loads_no_heavy_module(lazy):
    assert lazy["heavy_after_import_verl"] == []
    assert lazy["cpu_platform"] is True  # the one eager registration (verl.plugin.platform is always imported)


def test_names_are_registered_when_verl_imports_their_registry(lazy):
    assert {"prpo", "prl", "spro", "prm_avg"} <= set(lazy["estimators"])
    assert lazy["trainer"] == "verl_prpo.trainer"
    assert lazy["reward"] == "verl_prpo.reward_manager"
    assert lazy["replica"] == "verl_prpo.cpu.rollout"
    assert lazy["rollout"] == "verl_prpo.cpu.rollout.HFServerAdapter"
    assert lazy["pending"] == {}


def test_verl_platform_set_after_import_verl_is_honoured(lazy):
    assert lazy["resolved_at_import"] is False  # import verl no longer picks the platform
    assert lazy["device"] == "cpu"
    assert lazy["cpu_engines"] == {"language_model": True, "value_model": True}


def test_plugin_imports_without_verl(probes):
    probe = _read(probes["no_verl"])
    assert probe["verl"] == []
    assert "verl.trainer.ppo.v1" in probe["pending"]  # nothing fired, nothing failed


# ---------------------------------------------------------------------------------------- in this process


@pytest.fixture
def fake_module(tmp_path, monkeypatch):
    """A throw-away module ``prpo_fake_registry`` on sys.path, with a clean error table."""
    from verl_prpo import registration, startup

    (tmp_path / "prpo_fake_registry.py").write_text("REGISTRY = {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(startup, "registration_errors", {})
    yield registration
    sys.modules.pop("prpo_fake_registry", None)


def test_post_import_hook_runs_after_the_module_executes(fake_module):
    reg = fake_module
    seen = []

    def step():
        mod = sys.modules["prpo_fake_registry"]
        seen.append(dict(mod.REGISTRY))  # the module body has run: its names exist
        mod.REGISTRY["ours"] = 1

    reg._finder.add("prpo_fake_registry", "fake", step)
    import prpo_fake_registry

    assert seen == [{}] and prpo_fake_registry.REGISTRY == {"ours": 1}
    assert "prpo_fake_registry" not in reg.pending_registrations()


def test_failed_registration_keeps_verls_import_working_and_check_registered_raises(fake_module):
    reg = fake_module

    def broken():
        raise ImportError("simulated: a dependency of the trainer module is missing")

    reg._finder.add("prpo_fake_registry", "trainer mode prpo_sync", broken)
    import prpo_fake_registry  # noqa: F401  (verl's import must not fail because of us)

    with pytest.raises(RuntimeError, match="trainer mode prpo_sync.*simulated"):
        reg.check_registered()


def test_check_registered_names_a_missing_component(monkeypatch):
    from verl.experimental.reward_loop.reward_manager import registry as rm_registry
    from verl.trainer.ppo.v1 import trainer_base

    from verl_prpo import registration, startup

    registration.check_registered()  # everything is there in this process
    monkeypatch.setattr(startup, "registration_errors", {})
    monkeypatch.delitem(trainer_base.TRAINER_REGISTRY, "prpo_sync")
    monkeypatch.delitem(rm_registry.REWARD_MANAGER, "prpo")
    with pytest.raises(RuntimeError, match=r"trainer mode prpo_sync.*reward manager prpo"):
        registration.check_registered()
