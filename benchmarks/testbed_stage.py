"""Train one stage of the testbed alone and print its held-out figures as one JSON line, with ``TestbedSettings``
overrides: how much the start of the grid depends on the seed, the thread count and the budget.

    python benchmarks/testbed_stage.py sft --out /tmp/sft --threads 1 [--settings '{"seed": 1, "sft_steps": 800}']
    python benchmarks/testbed_stage.py prm --testbed ~/.cache/verl_prpo/testbed --out /tmp/prm \
        [--settings '{"prm_lr": 3e-4}']

``sft``: tokenizer and policy as ``build_testbed`` trains them; sampled (avg@4 at T = 1) and greedy accuracy on the
200 held-out problems. ``prm``: the PRM on a built testbed's policy and tokenizer; held-out step accuracy and AUC.
The held-out set (and the tokenizer of ``sft``) are the testbed's, seed 0, in every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from verl_prpo.testbed import task
from verl_prpo.testbed.build import TestbedSettings, build_tokenizer, train_policy, train_prm
from verl_prpo.testbed.evaluate import evaluate_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=["sft", "prm"])
    ap.add_argument("--out", required=True, help="folder for what the stage trains")
    ap.add_argument("--testbed", help="prm: a built testbed folder (its policy body and tokenizer are used)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--settings", default="{}", help="TestbedSettings overrides as JSON")
    args = ap.parse_args()
    if args.stage == "prm" and not args.testbed:
        ap.error("prm needs --testbed")
    torch.set_num_threads(args.threads)
    overrides = json.loads(args.settings)
    s = dataclasses.replace(TestbedSettings(), **overrides)
    base = TestbedSettings()
    eval_set = task.problems(base.n_eval, seed=base.seed + 1000)  # as build_testbed
    exclude = {p.question for p in eval_set}
    out = Path(args.out)
    if args.stage == "sft":
        tokenizer = build_tokenizer(out / "tokenizer", base.seed)
        policy, sft_s = train_policy(out / "policy", tokenizer, s, exclude, log_every=10**9)
        ev = evaluate_policy(policy, tokenizer, eval_set, k=4, seed=base.seed, max_new_tokens=s.max_response_length)
        figures = {"sampled_accuracy": ev["sampled_accuracy"], "greedy_accuracy": ev["greedy_accuracy"],
                   "sft_s": round(sft_s)}
    else:
        from transformers import AutoTokenizer

        root = Path(args.testbed).expanduser()
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
        _, figures = train_prm(out, tokenizer, s, exclude, eval_set, root / "policy", log_every=10**9)
    print(json.dumps({"stage": args.stage, "settings": overrides, "threads": torch.get_num_threads(), **figures}))


if __name__ == "__main__":
    main()
