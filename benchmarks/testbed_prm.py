"""Train the testbed's PRM alone on a built policy and print its held-out step accuracy and AUC (``TestbedSettings``
overrides as JSON), as ``build_testbed`` trains it.

    python benchmarks/testbed_prm.py --testbed ~/.cache/verl_prpo/testbed --out /tmp/prm --threads 1 \
        [--settings '{"prm_lr": 3e-4}']
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from transformers import AutoTokenizer

from verl_prpo.testbed import task
from verl_prpo.testbed.build import TestbedSettings, train_prm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--testbed", required=True, help="a built testbed folder (its policy and tokenizer are used)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--settings", default="{}", help="TestbedSettings overrides as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = json.loads(args.settings)
    s = dataclasses.replace(TestbedSettings(), **overrides)
    base = TestbedSettings()
    eval_set = task.problems(base.n_eval, seed=base.seed + 1000)  # as build_testbed
    root = Path(args.testbed).expanduser()
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    _, stats = train_prm(Path(args.out), tokenizer, s, {p.question for p in eval_set}, eval_set, root / "policy",
                         log_every=10**9)
    print(json.dumps({"settings": overrides, "threads": torch.get_num_threads(), **stats}))


if __name__ == "__main__":
    main()
