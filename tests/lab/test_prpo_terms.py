"""PRPO's terms from the grid's metrics files (examples/credit_assignment/prpo_terms.py)."""

from __future__ import annotations

import json

import pytest

from examples.credit_assignment import prpo_terms


def _cell(work, name, z, beta, done=True):
    cell = work / name
    cell.mkdir(parents=True)
    rows = [{"step": s, "data": {"prpo/z/mean": z[s - 1], "prpo/abs_beta/mean": beta[s - 1],
                                 "prpo/prm_score/mean": 0.5 + 0.2887 * z[s - 1], "critic/score/mean": 0.0}}
            for s in (1, 2, 3)]
    (cell / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if done:
        (cell / "train_done.json").write_text("{}")


def test_terms_are_averaged_over_seeds_per_step_and_unfinished_or_non_prpo_cells_skipped(tmp_path):
    _cell(tmp_path, "prpo_s0", [-1.0, -0.5, 0.0], [0.8, 0.8, 0.8])
    _cell(tmp_path, "prpo_s1", [-0.6, -0.5, -0.4], [0.6, 0.6, 0.6])
    _cell(tmp_path, "prpo_newline_s0", [0.3, 0.3, 0.3], [0.5, 0.5, 0.5], done=False)
    (tmp_path / "grpo_s0").mkdir()
    (tmp_path / "grpo_s0" / "train_done.json").write_text("{}")
    (tmp_path / "grpo_s0" / "metrics.jsonl").write_text(json.dumps({"step": 1, "data": {"critic/score/mean": 1}}))
    data = prpo_terms.collect(tmp_path)
    assert set(data) == {"prpo"} and set(data["prpo"]) == {0, 1}
    s = prpo_terms.summarise(data)["prpo"]
    assert s["prpo/z/mean"]["first"] == pytest.approx(-0.8) and s["prpo/z/mean"]["last"] == pytest.approx(-0.2)
    assert s["prpo/z/mean"]["all_steps"] == pytest.approx(-0.5)
    assert s["z_over_abs_beta"] == pytest.approx(-0.5 / 0.7)
    assert prpo_terms.curves(data, "prpo/z/mean")["prpo"] == [(1, pytest.approx(-0.8)), (2, -0.5),
                                                               (3, pytest.approx(-0.2))]
