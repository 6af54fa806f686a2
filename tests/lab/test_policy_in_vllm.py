"""The testbed's policy in vLLM (the CPU build CPU mode rolls out with): it loads, and its greedy answers are those of
Hugging Face ``generate`` (a model vLLM reads differently, e.g. wrong heads or a wrong tokenizer, answers otherwise).
Runs ``benchmarks/testbed_stage.py vllm`` in a subprocess (vLLM starts its engine in a spawned process). Marked
``e2e``: about a minute on 2 cores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
pytest.importorskip("vllm")

REPO = Path(__file__).resolve().parents[2]


def test_vllm_loads_the_policy_and_generates_what_hf_generates(tmp_path):
    from examples.credit_assignment.build import DEFAULT_DIR, build_testbed

    tb = build_testbed(DEFAULT_DIR)
    cmd = [sys.executable, str(REPO / "benchmarks" / "testbed_stage.py"), "vllm", "--testbed", str(tb.root),
           "--problems", "48"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    fig = json.loads(proc.stdout.strip().splitlines()[-1])
    assert fig["problems"] == 48
    assert fig["greedy_same_text"] >= 0.9, fig  # float32 both ways: only near-ties may differ
    assert abs(fig["greedy_accuracy_vllm"] - fig["greedy_accuracy_hf"]) <= 0.05, fig
    assert fig["greedy_accuracy_vllm"] >= 0.8, fig
    # sampling at T = 1 gives the policy's moderate accuracy (48 x 4 samples: wide bounds)
    assert 0.15 <= fig["sampled_accuracy_vllm"] <= 0.75, fig
