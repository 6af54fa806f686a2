"""The trainer's vLLM PRM path on verl's reward-model server replicas, in CPU mode (a local Ray cluster).

One scenario in a subprocess (``python tests/prm/test_vllm_server.py OUT.json``; VERL_PLATFORM=cpu there only):
the PRM of the Qwen2.5-Math-PRM layout served by ``VLLMPRMGroup`` (verl's ``init_colocated`` on a logical-GPU pool,
``POST /pooling``) scores a batch of policy tokens through ``compute_prm_scores_with_group`` exactly as the trainer's
``PRMScorer`` does; then the replica's engine core is killed, then its server actor: each failure must end the
scoring call with a ``PRMServerError`` that names the replica, within seconds (never a hang).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.ray]

SCENARIO_TIMEOUT_S = 1200
FAILURE_BOUND_S = 30.0  # a dead replica must stop the call well within this (it takes well under a second)


def _batch(tok):
    import torch

    texts = ["We compute 6*7=42. So the answer is 42.", "First add the numbers. Then check the result.",
             "The answer is 42.", "Add 1 and 41. Then check the result. So 42."]
    L = 28
    responses = torch.full((len(texts), L), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(texts), L), dtype=torch.long)
    seg = torch.full((len(texts), L), -1, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = tok(t, add_special_tokens=False)["input_ids"][:L]
        n = len(ids)
        responses[i, :n] = torch.tensor(ids)
        mask[i, :n] = 1
        seg[i, :n] = torch.arange(n) * 3 // n
    return responses, mask, seg, ["What is 6 times 7?"] * len(texts)


def scenario(out_path: str) -> None:
    import psutil
    import ray
    from transformers import AutoTokenizer

    from verl_prpo.prm import PRMConfig, load_prm
    from verl_prpo.prm.scoring import score_batch
    from examples.credit_assignment.tiny_checkpoints import build_qwen_prm_checkpoint

    work = Path(out_path).parent
    ckpt = build_qwen_prm_checkpoint(work / "qwen_prm")
    path = str(ckpt["path"])
    ray.init(address="local", num_cpus=8, num_gpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"VERL_PLATFORM": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1",
                                       "TOKENIZERS_PARALLELISM": "false"}})
    from verl.single_controller.ray import RayResourcePool

    from verl_prpo.prm.vllm_backend import PRMServerError, create_vllm_prm_group
    from verl_prpo.prm.worker import compute_prm_scores_with_group

    result: dict = {}
    cfg = PRMConfig(enable=True, model_path=path, backend="vllm", request_timeout_s=120)
    pool = RayResourcePool(process_on_nodes=[1], use_gpu=True, max_colocate_count=3, name_prefix="prm_vllm_test")
    t0 = time.perf_counter()
    group = create_vllm_prm_group(cfg, path, pool, gpus_per_node=1, device_type="cpu")
    result["start_s"] = time.perf_counter() - t0
    result["describe"] = group.describe()
    tok = AutoTokenizer.from_pretrained(path)
    responses, mask, seg, questions = _batch(tok)
    got, stats = compute_prm_scores_with_group(group, responses, mask, seg, questions, prior_mean=0.5)
    want, want_stats = score_batch(load_prm(PRMConfig(enable=True, model_path=path), "cpu"), tok, responses, mask,
                                   seg, questions, prior_mean=0.5)
    result["max_abs_diff"] = float((got - want).abs().max())
    result["zero_pattern_equal"] = bool(((got == 0) == (want == 0)).all())
    result["segments"] = [stats["segments"], want_stats["segments"]]
    result["model_calls"] = stats["model_calls"]

    def failure(kill) -> dict:
        kill()
        time.sleep(1.0)
        t = time.perf_counter()
        try:
            compute_prm_scores_with_group(group, responses, mask, seg, questions)
        except PRMServerError as exc:
            return {"raised": True, "seconds": time.perf_counter() - t, "message": str(exc)[:3000]}
        except Exception as exc:  # noqa: BLE001 - reported to the test
            return {"raised": False, "other": repr(exc)[:3000], "seconds": time.perf_counter() - t}
        return {"raised": False, "seconds": time.perf_counter() - t}

    server = group.replicas[0].server_handle
    server_pid = ray.get(server.__ray_call__.remote(lambda self: os.getpid()))

    def kill_engine():
        for proc in psutil.Process(server_pid).children(recursive=True):
            if "EngineCore" in proc.name() or "EngineCore" in " ".join(proc.cmdline()):
                proc.kill()

    result["engine_killed"] = failure(kill_engine)
    result["server_killed"] = failure(lambda: ray.kill(server))
    Path(out_path).write_text(json.dumps(result))
    ray.shutdown()


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    out = tmp_path_factory.mktemp("prm_vllm_server") / "result.json"
    env = dict(os.environ, VERL_PLATFORM="cpu", VLLM_CPU_KVCACHE_SPACE="1", TOKENIZERS_PARALLELISM="false")
    # the scenario builds its checkpoint with the lab's tiny_checkpoints (examples/, not installed)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")]))
    log = out.parent / "log.txt"
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, __file__, str(out)], env=env, stdout=fh, stderr=subprocess.STDOUT,
                              timeout=SCENARIO_TIMEOUT_S, cwd=out.parent)
    if proc.returncode != 0 or not out.exists():
        pytest.fail(f"scenario failed (rc={proc.returncode}); log tail:\n{log.read_text(errors='replace')[-6000:]}")
    return json.loads(out.read_text())


def test_server_replicas_score_what_the_fsdp_backend_scores(outcome):
    assert outcome["describe"][0]["backend"] == "vllm" and outcome["describe"][0]["pooling"] == "STEP"
    assert outcome["max_abs_diff"] < 2e-5 and outcome["zero_pattern_equal"]
    assert outcome["segments"][0] == outcome["segments"][1] >= 4
    assert outcome["model_calls"] == 1  # one /pooling request for the batch on one replica


@pytest.mark.parametrize("what", ["engine_killed", "server_killed"])
def test_a_dying_prm_server_stops_the_call_with_its_error(outcome, what):
    res = outcome[what]
    assert res["raised"], res
    assert res["seconds"] < FAILURE_BOUND_S
    assert "PRM replica 0" in res["message"] and "Replicas: replica 0 at" in res["message"]
    if what == "engine_killed":
        assert "HTTP 500" in res["message"] and "engine is dead" in res["message"]
    else:
        assert "did not answer /pooling" in res["message"] and "actor not answering" in res["message"]


if __name__ == "__main__":
    scenario(sys.argv[1])
