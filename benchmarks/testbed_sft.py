"""Train the testbed's SFT policy alone and print its held-out accuracy: how much the start of the grid depends on
the seed, the thread count and the SFT budget (``TestbedSettings`` overrides as JSON).

    python benchmarks/testbed_sft.py --out /tmp/sft --threads 1 [--settings '{"seed": 1, "sft_steps": 800}']

Prints one JSON line: the overrides, torch threads, sampled accuracy (avg@4 at T = 1) and greedy accuracy on the
200 held-out problems, SFT seconds. The tokenizer and the held-out set are the testbed's (seed 0) in every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from verl_prpo.testbed import task
from verl_prpo.testbed.build import TestbedSettings, build_tokenizer, train_policy
from verl_prpo.testbed.evaluate import evaluate_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for the tokenizer and the policy")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--settings", default="{}", help="TestbedSettings overrides as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = json.loads(args.settings)
    s = dataclasses.replace(TestbedSettings(), **overrides)
    base = TestbedSettings()
    eval_set = task.problems(base.n_eval, seed=base.seed + 1000)  # as build_testbed
    tokenizer = build_tokenizer(Path(args.out) / "tokenizer", base.seed)
    policy, sft_s = train_policy(Path(args.out) / "policy", tokenizer, s, {p.question for p in eval_set},
                                 log_every=10**9)
    ev = evaluate_policy(policy, tokenizer, eval_set, k=4, seed=base.seed, max_new_tokens=s.max_response_length)
    print(json.dumps({"settings": overrides, "threads": torch.get_num_threads(),
                      "sampled_accuracy": ev["sampled_accuracy"], "greedy_accuracy": ev["greedy_accuracy"],
                      "sft_s": round(sft_s)}))


if __name__ == "__main__":
    main()
