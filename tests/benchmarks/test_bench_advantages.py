"""``benchmarks/bench_advantages.py``: its ``prpo_floor`` row computes what the ``prpo`` row computes, so it is a valid
lower bound for that stage."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

spec = importlib.util.spec_from_file_location(
    "bench_advantages", Path(__file__).parents[2] / "benchmarks" / "bench_advantages.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


@pytest.mark.parametrize("length", [256, 300])
@pytest.mark.parametrize("with_metrics", [False, True])
def test_prpo_floor_equals_prpo(length, with_metrics):
    b = bench.make_batch(32, length, 4, seed=1)
    b["with_metrics"] = with_metrics
    adv, floor = bench.run_prpo(b), bench.run_prpo_floor(b)
    assert floor.shape == adv.shape == (32, length)
    assert (adv != 0).any() and (floor[b["response_mask"] == 0] == 0).all()
    torch.testing.assert_close(floor, adv, rtol=0, atol=1e-6)


def test_measure_counts_faults_per_timed_call():
    calls = []
    faults: dict = {}
    times = bench.measure({"a": lambda b: calls.append(1), "b": lambda b: torch.ones(4)}, {}, repeats=2,
                          faults=faults)
    assert len(calls) == 6  # (warm-up + 2 rounds) x (untimed + timed)
    assert [len(times[k]) for k in "ab"] == [2, 2] and [len(faults[k]) for k in "ab"] == [2, 2]
    assert all(isinstance(f, int) and f >= 0 for f in faults["a"] + faults["b"])
