"""The learning test's run (tests/lab/test_learning.py), repeated: GRPO through verl's ``main_ppo`` on the
testbed, 16 prompts x 8 rollouts, 4 updates per step, lr 3e-5; prints the change in the teacher-forced
log-likelihood of the held-out correct solutions after each run. Shows how far the test's figure moves between runs
and seeds (the test asserts a gain above 0.05 nats at seed 0).

    .venv/bin/python benchmarks/learning_test_gain.py STEPS SEEDS [hydra overrides...]
    .venv/bin/python benchmarks/learning_test_gain.py 8 0,0,1,2      # about 100 s a run on 2 cores

Builds the testbed first if the cache has none (a few minutes).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the lab (examples/) is not installed


from examples.credit_assignment.build import DEFAULT_DIR, build_testbed
from examples.credit_assignment.evaluate import correct_solution_logprob, load_policy
from examples.credit_assignment.grid import read_metrics, train_command


def main(argv: list[str]) -> None:
    steps, seeds, extra = int(argv[0]), [int(x) for x in argv[1].split(",")], argv[2:]
    tb = build_testbed(DEFAULT_DIR)
    before = correct_solution_logprob(*load_policy(tb.policy_dir), tb.eval_problems())
    print(f"before: {before:.4f} nats", flush=True)
    for run, seed in enumerate(seeds):
        out = Path(tempfile.mkdtemp(prefix="learning_test_gain_"))
        cmd, env = train_command(tb, "grpo", seed=seed, steps=steps, out_dir=out, save_every=steps, prompts_per_step=16,
                                 n=8, lr=3e-5, updates_per_step=4, metrics_file=out / "metrics.jsonl", extra=extra)
        t0 = time.time()
        proc = subprocess.run(cmd, env=env, cwd=out, capture_output=True, text=True, timeout=1500)
        if proc.returncode:
            print(f"run {run} failed:\n{(proc.stdout + proc.stderr)[-2000:]}", flush=True)
            continue
        assert len(read_metrics(out / "metrics.jsonl")) == steps
        after = correct_solution_logprob(*load_policy(tb.policy_dir, out / "checkpoints" / f"global_step_{steps}"),
                                         tb.eval_problems())
        print(json.dumps({"run": run, "seed": seed, "steps": steps, "after": round(after, 4),
                          "gain": round(after - before, 4), "wall_s": round(time.time() - t0)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
