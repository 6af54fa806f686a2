"""End to end in CPU mode: verl's whole training loop with the plugin, tiny local models, no GPU.

Each run is ``python -m examples.credit_assignment.quickstart`` (verl's own ``main_ppo`` with the ``prpo_trainer_cpu`` config):
rollout through verl's vLLM rollout (the CPU build of vLLM), reward, PRM worker group (prpo), old/ref log-probs,
the estimator, the FSDP2 actor update and the weight sync back into the vLLM engine. Slow (a few minutes in all): marked ``e2e``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.e2e

RUN_TIMEOUT_S = 900
STEPS = 2

# estimator -> metrics it must log (finite)
EXPECTED_METRICS = {
    "grpo": ["critic/advantages/mean", "actor/pg_loss"],
    "prpo": ["prpo/segments_per_response/mean", "prpo/segment_length/mean", "prpo/prm_score/mean",
             "prpo/prm_score/std", "prpo/abs_beta/mean", "prpo/z/mean", "adv/mean", "adv/std",
             "adv/mean_abs_diff_vs_grpo", "prm/tokens_per_response_token", "prm/truncated_segments",
             "prm/score_mean", "timing_s/prm"],
    "prl": ["prl/process_term/mean", "prl/process_term/std", "prl/steps_per_response/mean", "adv/mean", "adv/std"],
    "spro": ["spro/msa/mean", "spro/msa/std", "spro/cpr/mean", "adv/mean", "adv/std"],
    "pure": ["pure/soft_min_reward/mean", "pure/baseline/mean", "pure/steps_per_response/mean",
             "pure/steps_per_response/max", "adv/mean", "adv/std", "adv/mean_abs_diff_vs_grpo",
             "prm/score_mean", "timing_s/prm"],
}
ESTIMATORS = list(EXPECTED_METRICS)


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    from examples.credit_assignment.tiny_assets import build_tiny_assets

    return build_tiny_assets(tmp_path_factory.mktemp("tiny_assets"), n_train=64, n_val=8)


def _run(estimator: str, assets, out: Path, steps: int, extra: list[str]) -> list[dict]:
    from examples.credit_assignment.quickstart import build_command

    metrics_file = out / "metrics.jsonl"
    cmd, env = build_command(estimator, assets_dir=assets.root, steps=steps, out_dir=out,
                             metrics_file=metrics_file, extra=extra, python=sys.executable)
    log = out / "log.txt"
    out.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_S, cwd=out)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-6000:]
        pytest.fail(f"{estimator} run failed (rc={proc.returncode}); log tail:\n{tail}")
    return [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]


def _actor_state(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    shard = ckpt_dir / "actor" / "model_world_size_1_rank_0.pt"
    assert shard.exists(), f"no actor checkpoint at {shard}"
    sd = torch.load(shard, map_location="cpu", weights_only=False)
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).float() for k, v in sd.items()}


def _initial_state(policy_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(str(policy_dir / "model.safetensors")).items()}


class _Runs(dict):
    """One training run per estimator, started on first use (so ``-k pure`` runs only that one)."""

    def __init__(self, assets, root: Path):
        super().__init__()
        self.assets, self.root = assets, root

    def __missing__(self, est: str) -> dict:
        out = self.root / est
        records = _run(est, self.assets, out, STEPS, [f"trainer.save_freq={STEPS}"])
        self[est] = {"records": records, "out": out}
        return self[est]


@pytest.fixture(scope="session")
def runs(tiny_assets, tmp_path_factory):
    return _Runs(tiny_assets, tmp_path_factory.mktemp("e2e_runs"))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_training_steps_complete_and_log_finite_metrics(runs, estimator):
    records = runs[estimator]["records"]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for r in records:
        data = r["data"]
        for key in EXPECTED_METRICS[estimator]:
            assert key in data, f"{estimator} step {r['step']}: metric {key} missing"
            assert math.isfinite(float(data[key])), f"{estimator}: {key} = {data[key]}"
        assert data["training/global_step"] == r["step"]
        # the vLLM engine generates from the actor's weights (it starts on dummy weights: unsynced, the correlation
        # of its token probabilities with the actor's is about 0; tests/system/test_world_size_2.py checks after updates)
        assert data["training/rollout_actor_probs_pearson_corr"] > 0.99


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_actor_weights_changed(runs, tiny_assets, estimator):
    after = _actor_state(runs[estimator]["out"] / "checkpoints" / f"global_step_{STEPS}")
    before = _initial_state(Path(tiny_assets.policy_dir))
    common = [k for k in before if k in after]
    assert len(common) >= len(before) - 1  # tied lm_head may be absent on one side
    max_change = max(float((after[k] - before[k]).abs().max()) for k in common)
    assert max_change > 1e-6, f"{estimator}: actor weights did not change (max |delta| = {max_change})"


def test_prpo_advantages_differ_from_grpo_on_the_same_batch(runs):
    # prpo_sync computes verl's GRPO advantage on the very batch PRPO used and logs the mean |difference|
    for r in runs["prpo"]["records"]:
        assert r["data"]["adv/mean_abs_diff_vs_grpo"] > 1e-4
        assert r["data"]["prpo/segments_per_response/max"] >= 2  # entropy segmentation did cut


def test_pure_advantages_are_whitened_and_differ_from_grpo(runs):
    for r in runs["pure"]["records"]:
        assert r["data"]["adv/mean_abs_diff_vs_grpo"] > 1e-4
        assert abs(r["data"]["adv/mean"]) < 1e-3  # whiten=true: mean 0 over the valid tokens
        assert r["data"]["pure/steps_per_response/mean"] >= 1


def test_spro_msa_is_zero_while_policy_equals_reference(runs):
    # step 1: pi_old == pi_ref, so every implicit process reward (and the MSA) is 0; step 2 after an update: not
    first, second = runs["spro"]["records"][:2]
    assert abs(first["data"]["spro/msa/std"]) < 1e-3
    assert second["data"]["spro/cpr/mean"] != 0.0


def test_resume_continues_at_next_step(runs, tiny_assets):
    out = runs["grpo"]["out"]
    resumed_out = out.parent / "grpo_resumed"
    extra = [f"trainer.default_local_dir={out / 'checkpoints'}", "trainer.resume_mode=auto", "trainer.save_freq=-1"]
    records = _run("grpo", tiny_assets, resumed_out, STEPS + 1, extra)
    assert [r["step"] for r in records] == [STEPS + 1]
