"""The credit-assignment grid (examples/credit_assignment/grid.py): methods, the cell layout, confidence intervals."""

from __future__ import annotations

import math

from examples.credit_assignment import grid


def test_issue22_diagnostic_methods_are_prpo_with_exactly_their_overrides():
    assert grid.METHODS["prpo_newline"] == ("prpo", ["algorithm.prpo.segmentation=newline"])
    est, ov = grid.METHODS["prpo_released"]
    assert est == "prpo" and ov[0] == "algorithm.prpo.cut_rule=released"
    key, value = ov[1].split("=")
    assert key == "algorithm.prpo.sigma" and float(value) == math.sqrt(1 / 24) and len(ov) == 2
    assert grid.METHODS["prpo_newline_relative_norm"] == ("prpo", ["algorithm.prpo.segmentation=newline",
                                                                   "algorithm.prpo.normalization=relative"])


# ---------------------------------------------------------------------------------------------------- cell layout
import json  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402

from examples.credit_assignment import evaluate  # noqa: E402

N_PROBLEMS, K = 50, 4


class _FakeTestbed:
    settings = SimpleNamespace(version=3, max_response_length=64)
    policy_dir = Path("/nonexistent/policy")
    manifest = {"settings": {"version": 3}, "task": {"name": "t", "eval_problems": N_PROBLEMS},
                "policy": {"params": 1, "sft_accuracy": 0.3, "sft_greedy_accuracy": 0.8},
                "prm": {"params": 1, "step_accuracy": 0.9, "step_auc": 0.9, "eval_steps": 10}}

    def eval_problems(self):
        return list(range(N_PROBLEMS))


def _launcher_cell(work: Path, method: str, seed: int, steps=(10, 20), wall_s=270.0) -> Path:
    """A cell as /work/grid_v3/launch.py leaves it: checkpoints, metrics.jsonl, train_done.json."""
    cell = work / f"{method}_s{seed}"
    for s in steps:
        (cell / "checkpoints" / f"global_step_{s}" / "actor").mkdir(parents=True)
    (cell / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "data": {
        "critic/score/mean": 0.1 * s, "prpo/z/mean": 0.5, "prpo/abs_beta/mean": 0.2, "other": 1}}) + "\n"
        for s in range(1, 21)))
    (cell / "train_done.json").write_text(json.dumps({
        "method": method, "seed": seed, "wall_s": wall_s, "commit": "e29e333", "command": ["python", "-m", "x"],
        "estimator": "prpo", "overrides": [],
        "budget": {"steps": 20, "prompts_per_step": 16, "n": 16, "lr": 5e-5, "updates_per_step": 2}}))
    return cell


@pytest.fixture
def fake_eval(monkeypatch):
    """evaluate_policy replaced: step 0 gets 1 correct of K per problem, a checkpoint of step s gets 1 + s // 10;
    records (checkpoint, seed) of every call."""
    calls = []

    class FakeModel:
        def __init__(self, checkpoint):
            self.checkpoint, self.dtype = checkpoint, None

        def to(self, dtype):
            self.dtype = dtype
            return self

    def load_policy(policy_dir, checkpoint=None):
        return FakeModel(checkpoint), None

    def evaluate_policy(model, tokenizer, problems, *, k, seed, max_new_tokens, per_problem):
        step = 0 if model.checkpoint is None else int(Path(model.checkpoint).name.split("_")[-1])
        calls.append((step, seed))
        c = min(K, 1 + step // 10)
        return {"greedy_accuracy": 0.9, "sampled_accuracy": c / K, "pass_at_k": 1.0, "response_length": 30.0,
                "entropy": 0.5, "k": k, "sampling_seed": seed, "correct_counts": [c] * len(problems),
                "greedy_correct": [1] * len(problems)}

    monkeypatch.setattr(evaluate, "load_policy", load_policy)
    monkeypatch.setattr(evaluate, "evaluate_policy", evaluate_policy)
    return calls


def test_eval_phase_reads_the_launcher_layout_shares_step0_and_one_sampling_seed(tmp_path, fake_eval):
    work, out = tmp_path / "work", tmp_path / "grid"
    _launcher_cell(work, "prpo", 1)
    _launcher_cell(work, "grpo", 1, wall_s=None)  # a cell finished by hand records no wall time
    (work / "pure_s1").mkdir()  # training in progress: no marker
    tb = _FakeTestbed()
    with pytest.raises(FileNotFoundError, match="train_done"):
        grid.evaluate_cell(tb, "pure", 1, out, work, k=K, steps=20, eval_every=10)
    r = grid.evaluate_cell(tb, "prpo", 1, out, work, k=K, steps=20, eval_every=10)
    grid.evaluate_cell(tb, "grpo", 1, out, work, k=K, steps=20, eval_every=10)
    # step 0 once for both methods; every evaluation of seed 1 samples with the same seed
    assert [c[0] for c in fake_eval] == [0, 10, 20, 10, 20]
    assert {c[1] for c in fake_eval} == {grid.eval_seed(1)} and grid.eval_seed(1) != grid.eval_seed(0)
    assert [e["step"] for e in r["eval"]] == [0, 10, 20]
    assert r["budget"] == {"steps": 20, "prompts_per_step": 16, "n": 16, "lr": 5e-5, "updates_per_step": 2, "k": K,
                           "eval_dtype": "float32"}
    assert {e["dtype"] for e in r["eval"]} == {"float32"}
    assert r["commit"] == "e29e333" and r["testbed_version"] == 3
    assert r["train"][0]["prpo/z/mean"] == 0.5 and "other" not in r["train"][0]
    # every problem gains 2 of 4 samples: the paired interval has no width
    assert r["ci"]["sampled_gain"]["mean"] == pytest.approx(0.5) and r["ci"]["sampled_gain"]["lo"] == 0.5
    assert (work / "prpo_s1" / "checkpoints" / "global_step_20").is_dir()  # the launcher's checkpoints are kept
    res = grid.aggregate(out, tb, K, expected=[("prpo", 1), ("grpo", 1), ("pure", 1)])
    assert res["testbed_version"] == 3 and res["missing"] == ["pure_s1"]
    assert res["methods"]["prpo"]["sampled_gain"]["mean"] == pytest.approx(0.5)
    assert res["runs"][0]["ci"]["sampled_gain"]["hi"] == pytest.approx(0.5)
    assert "+50.0" in out.with_suffix(".md").read_text()


def test_missing_checkpoint_is_an_error_not_a_silent_short_curve(tmp_path, fake_eval):
    work = tmp_path / "work"
    _launcher_cell(work, "prpo", 0, steps=(20,))
    with pytest.raises(FileNotFoundError, match=r"steps \[10\]"):
        grid.evaluate_cell(_FakeTestbed(), "prpo", 0, tmp_path / "grid", work, k=K, steps=20, eval_every=10)


def test_a_finished_cell_is_not_trained_again(tmp_path, monkeypatch):
    work = tmp_path / "work"
    _launcher_cell(work, "grpo", 2)

    def no_training(*a, **kw):
        raise AssertionError("trained a finished cell")

    monkeypatch.setattr(grid.subprocess, "call", no_training)
    rec = grid.train_cell(_FakeTestbed(), "grpo", 2, work, steps=20, eval_every=10, prompts_per_step=16, n=16,
                          lr=5e-5)
    assert rec["commit"] == "e29e333"


def test_prefix_prm_method_trains_prpo_with_the_prefix_prm(monkeypatch, tmp_path):
    from examples.credit_assignment import prefix_prm

    monkeypatch.setattr(prefix_prm, "build_prefix_prm", lambda tb: tmp_path / "prefix_prm")
    tb = SimpleNamespace(settings=SimpleNamespace(max_response_length=64), root=tmp_path, prm_dir=tmp_path / "prm",
                         policy_dir=tmp_path / "policy", train_parquet="t", eval_parquet="e")
    cmd, _ = grid.train_command(tb, "prpo_prefix_prm", seed=0, steps=20, out_dir=tmp_path / "c", save_every=10)
    assert f"prm.model_path={tmp_path / 'prefix_prm'}" in cmd and "algorithm.adv_estimator=prpo" in cmd
    cmd, _ = grid.train_command(tb, "prpo", seed=0, steps=20, out_dir=tmp_path / "c", save_every=10)
    assert f"prm.model_path={tmp_path / 'prm'}" in cmd


def test_curves_are_each_runs_change_from_its_own_step0(tmp_path):
    # two seeds with different step-0 accuracies; the second never reached step 20
    runs = [{"method": "grpo", "seed": 0, "eval": [{"step": s, "sampled_accuracy": a, "greedy_accuracy": 1.0,
                                                    "response_length": 30.0, "entropy": 0.1}
                                                   for s, a in ((0, 0.30), (10, 0.35), (20, 0.40))]},
            {"method": "grpo", "seed": 1, "eval": [{"step": s, "sampled_accuracy": a, "greedy_accuracy": 1.0,
                                                    "response_length": 30.0, "entropy": 0.1}
                                                   for s, a in ((0, 0.40), (10, 0.41))]}]
    steps, mean = grid.change_curve(runs, "sampled_accuracy", 100)
    assert steps == [0, 10, 20]
    assert mean == pytest.approx([0.0, 3.0, 10.0])  # (5 + 1) / 2 at step 10; seed 0 alone at step 20
    png = grid.plot(runs + [dict(r, method="prpo") for r in runs], tmp_path / "c.png")
    assert png is not None and png.stat().st_size > 10_000
