"""Shared test guards."""

from __future__ import annotations

import os

import pytest

# environment variables that change how verl and the plugin behave in the test process itself
_PROCESS_WIDE = ("VERL_PLATFORM", "VERL_USE_EXTERNAL_PLUGINS", "VERL_USE_EXTERNAL_MODULES")


@pytest.fixture(autouse=True)
def _no_process_wide_env_leak(request):
    """Fail the test that changes a process-wide verl variable and leaves it changed (monkeypatch restores first).

    A leaked ``VERL_PLATFORM=cpu`` once made every later test in the same pytest process fail at trainer start.
    """
    before = {k: os.environ.get(k) for k in _PROCESS_WIDE}
    yield
    after = {k: os.environ.get(k) for k in _PROCESS_WIDE}
    leaked = {k: (before[k], after[k]) for k in _PROCESS_WIDE if before[k] != after[k]}
    for k, (old, _) in leaked.items():  # restore, so one leak does not cascade into unrelated failures
        if old is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = old
    assert not leaked, f"{request.node.nodeid} changed process-wide environment variables (before, after): {leaked}"


#: test files whose training runs hold the most memory (several vLLM engines each). Under pytest-xdist they never
#: run at the same time: together they peaked at 21.8 of 23.5 GB on a 24 GB machine, near Ray's OOM killer.
MEMORY_HEAVY = ("tests/system/test_world_size_2.py", "tests/system/test_training_prm_vllm.py")


@pytest.fixture(autouse=True, scope="module")
def _one_memory_heavy_file_at_a_time(request):
    """A file of MEMORY_HEAVY holds an exclusive lock (shared by every pytest process on the machine) while it runs."""
    if request.node.nodeid not in MEMORY_HEAVY:
        yield
        return
    import fcntl
    import tempfile
    from pathlib import Path

    with open(Path(tempfile.gettempdir()) / "verl_prpo_tests_memory_heavy.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield
