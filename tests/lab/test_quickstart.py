"""The quickstart (examples/credit_assignment/quickstart.py): one compact line per step, the log's tail on failure."""

from __future__ import annotations

import os
import sys


def test_step_line_shows_reward_heldout_and_time():
    from examples.credit_assignment.quickstart import step_line

    rec = {"step": 3, "data": {"critic/score/mean": -0.25, "timing_s/step": 4.04,
                               "val-core/testbed/acc/mean@2": 0.3625}}
    assert step_line(rec, 20) == "step  3/20  reward -0.250  held-out 0.362  4.0 s/step"
    assert step_line({"step": 0, "data": {"val-core/testbed/acc/mean@2": 0.5}}, 5) == "step 0/5  held-out 0.500"
    assert step_line({"step": 1, "data": {"perf/max_memory": 1.0}}, 5) is None


def _fake_trainer(tmp_path, body: str) -> list[str]:
    script = tmp_path / "fake_main_ppo.py"
    script.write_text("import json, sys, time\nm = open(sys.argv[1], 'a')\n" + body)
    return [sys.executable, str(script), str(tmp_path / "metrics.jsonl")]


def test_run_with_step_lines_prints_each_step_as_it_lands(tmp_path, capsys):
    from examples.credit_assignment.quickstart import run_with_step_lines

    cmd = _fake_trainer(tmp_path, (
        "print('lots of verl output')\n"
        "for s in (1, 2):\n"
        "    m.write(json.dumps({'step': s, 'data': {'critic/score/mean': 0.1 * s, 'timing_s/step': 1.0}}) + '\\n')\n"
        "    m.flush(); time.sleep(0.3)\n"))
    rc = run_with_step_lines(cmd, dict(os.environ), tmp_path, tmp_path / "metrics.jsonl", total_steps=2, poll_s=0.05)
    out = capsys.readouterr().out
    assert rc == 0
    assert [ln.split("  [")[0] for ln in out.splitlines() if ln.startswith("step")] == [
        "step 1/2  reward +0.100  1.0 s/step", "step 2/2  reward +0.200  1.0 s/step"]
    assert "lots of verl output" not in out and "lots of verl output" in (tmp_path / "train.log").read_text()


def test_run_with_step_lines_shows_the_log_tail_on_failure(tmp_path, capsys):
    from examples.credit_assignment.quickstart import run_with_step_lines

    cmd = _fake_trainer(tmp_path, "print('ValueError: algorithm.prpo.k must be >= 1, got 0')\nsys.exit(3)\n")
    rc = run_with_step_lines(cmd, dict(os.environ), tmp_path, tmp_path / "metrics.jsonl", total_steps=2, poll_s=0.05)
    err = capsys.readouterr().err
    assert rc == 3 and "algorithm.prpo.k must be >= 1" in err and "exit code 3" in err
