"""World size 2 in CPU mode: two logical device slots, gloo, verl's vLLM rollout (one replica per rank).

What users run on 8-64 GPUs, at the smallest size that still has more than one rank: the FSDP2 actor sharded over
both ranks, the weight sync from the sharded actor into two vLLM engines, the PRM worker group colocated on both
ranks (replicated and sharded), resume from a world-size-2 checkpoint, and the failure path (one PRM rank raises,
the other is healthy: the job must end with that error, never hang). The PRM on a pool of its own, one trainer rank
and one PRM rank, runs in ``test_multinode.py``, where the two ranks are on two Ray nodes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.e2e, pytest.mark.multirank]

RUN_TIMEOUT_S = 900
#: a failing run must end well before this (it fails in its first PRM call, a minute or two after start-up)
FAILURE_TIMEOUT_S = 600
#: a large step, so that a rollout generating from stale weights would be far from the actor's log-probs
LR = "actor_rollout_ref.actor.optim.lr=0.01"


@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory):
    from examples.credit_assignment.tiny_assets import build_tiny_assets

    return build_tiny_assets(tmp_path_factory.mktemp("tiny_assets_ws2"), n_train=64, n_val=8)


def _launch(estimator: str, assets, out: Path, *, steps: int, world_size: int, extra: list[str],
            timeout: float = RUN_TIMEOUT_S) -> tuple[int, str, list[dict], float]:
    from examples.credit_assignment.quickstart import tiny_command

    out.mkdir(parents=True, exist_ok=True)
    metrics_file = out / "metrics.jsonl"
    cmd, env = tiny_command(estimator, assets_dir=assets.root, steps=steps, out_dir=out, metrics_file=metrics_file,
                            extra=extra, world_size=world_size, python=sys.executable)
    log = out / "log.txt"
    t0 = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, cwd=out)
    seconds = time.monotonic() - t0
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()] \
        if metrics_file.exists() else []
    return proc.returncode, log.read_text(errors="replace"), records, seconds


def _train(estimator, assets, out, *, steps, world_size=2, extra=()):
    rc, log, records, _ = _launch(estimator, assets, out, steps=steps, world_size=world_size, extra=list(extra))
    if rc != 0:
        pytest.fail(f"{estimator} world size {world_size} failed (rc={rc}); log tail:\n{log[-6000:]}")
    return records


def _check_steps(records, steps, keys):
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    for r in records:
        for key in keys:
            assert key in r["data"], f"step {r['step']}: {key} missing"
            assert math.isfinite(float(r["data"][key])), f"step {r['step']}: {key} = {r['data'][key]}"


def _shards(ckpt: Path) -> dict[int, dict[str, torch.Tensor]]:
    files = sorted((ckpt / "actor").glob("model_world_size_*_rank_*.pt"))
    return {int(f.stem.rsplit("_", 1)[1]): torch.load(f, map_location="cpu", weights_only=False) for f in files}


@pytest.fixture(scope="module")
def prpo_ws2(tiny_assets, tmp_path_factory):
    """PRPO at world size 2, PRM colocated and replicated, a checkpoint at step 2 (resumed below)."""
    out = tmp_path_factory.mktemp("ws2") / "prpo_replicate"
    records = _train("prpo", tiny_assets, out, steps=2,
                     extra=["prm.sharding=replicate", "trainer.save_freq=2", LR])
    return records, out


def test_prpo_trains_at_world_size_2_with_a_replicated_prm_on_both_ranks(prpo_ws2):
    records, _ = prpo_ws2
    _check_steps(records, 2, ["actor/pg_loss", "prpo/prm_score/mean", "adv/mean", "timing_s/prm", "timing_s/gen"])
    for r in records:
        assert r["data"]["prm/ranks"] == 2 and r["data"]["prm/sharded"] == 0 and r["data"]["prm/own_pool"] == 0


def test_the_actor_is_sharded_over_both_ranks(prpo_ws2):
    _, out = prpo_ws2
    shards = _shards(out / "checkpoints" / "global_step_2")
    assert sorted(shards) == [0, 1], "expected one FSDP shard file per rank"
    for name, t in shards[0].items():
        assert hasattr(t, "to_local"), f"{name} is not a DTensor shard"
        assert t.to_local().numel() < t.numel() or t.numel() < 2, f"{name}: rank 0 holds the whole tensor"


def _assert_rollout_matches_actor(data: dict, step: int) -> None:
    # verl compares the log-probs the rollout returned for its own samples with the actor's recomputation of them
    assert data["training/rollout_actor_probs_pearson_corr"] > 0.99, (step, data["training/rollout_actor_probs_pearson_corr"])
    assert data["rollout_corr/k3_kl"] < 1e-3, (step, data["rollout_corr/k3_kl"])


def test_rollout_generates_from_the_updated_weights(prpo_ws2):
    """After each update the sharded actor's weights reach both vLLM engines: the rollout's log-probs of its own
    samples agree with the actor's (correlation of the token probabilities, k3 KL). Measured once with the engine
    loading only the first sync (GRPO, world size 1, this lr): step 1 0.998 / 8e-5, step 2 0.20 / 0.039, step 3
    0.06 / 0.062; synced, every step is about 0.998 / 1e-4. An engine never synced (vLLM starts on dummy weights) is
    off at step 1 already (correlation -0.03)."""
    records, _ = prpo_ws2
    for r in records:
        _assert_rollout_matches_actor(r["data"], r["step"])


def test_resume_from_a_world_size_2_checkpoint(prpo_ws2, tiny_assets):
    _, out = prpo_ws2
    extra = [f"trainer.default_local_dir={out / 'checkpoints'}", "trainer.resume_mode=auto", "trainer.save_freq=-1",
             "prm.sharding=replicate", LR]
    records = _train("prpo", tiny_assets, out.parent / "prpo_resumed", steps=3, extra=extra)
    assert [r["step"] for r in records] == [3]
    _assert_rollout_matches_actor(records[0]["data"], 3)  # the resumed weights reached both engines


def test_prpo_trains_at_world_size_2_with_a_sharded_prm(tiny_assets, tmp_path):
    records = _train("prpo", tiny_assets, tmp_path / "prpo_shard", steps=1, extra=["prm.sharding=shard"])
    _check_steps(records, 1, ["actor/pg_loss", "prpo/prm_score/mean", "timing_s/prm"])
    assert records[0]["data"]["prm/ranks"] == 2 and records[0]["data"]["prm/sharded"] == 1


@pytest.mark.parametrize("sharding", ["shard"])
def test_a_failing_prm_rank_ends_the_job_with_its_error(tiny_assets, tmp_path, sharding):
    """PRM rank 1 raises on its rows (injected) while rank 0 is healthy; sharded, rank 0 would otherwise wait in a
    collective forever. The job must end with rank 1's error on the driver, well within the time limit."""
    from verl_prpo.prm.worker import FAULT_ENV

    extra = [f"prm.sharding={sharding}", f"+ray_kwargs.ray_init.runtime_env.env_vars.{FAULT_ENV}='1'"]  # quoted: Hydra would pass an int
    rc, log, records, seconds = _launch("prpo", tiny_assets, tmp_path / "prpo_fail", steps=2, world_size=2,
                                        extra=extra, timeout=FAILURE_TIMEOUT_S)
    assert rc != 0, "the run succeeded although PRM rank 1 raised"
    assert "injected PRM failure on rank 1" in log, log[-4000:]
    assert records == [], "a step completed although the PRM failed in step 1"
    assert seconds < FAILURE_TIMEOUT_S
