"""Train one stage of the testbed alone and print its held-out figures as one JSON line, with ``TestbedSettings``
overrides: how much the start of the grid depends on the seed, the thread count and the budget.

    python benchmarks/testbed_stage.py sft --out /tmp/sft --threads 1 [--settings '{"seed": 1, "sft_steps": 800}']
    python benchmarks/testbed_stage.py prm --testbed ~/.cache/verl_prpo/testbed --out /tmp/prm \
        [--settings '{"prm_lr": 3e-4}']
    python benchmarks/testbed_stage.py vllm --testbed ~/.cache/verl_prpo/testbed [--problems 200]

``sft``: tokenizer and policy as ``build_testbed`` trains them; sampled (avg@4 at T = 1) and greedy accuracy on the
200 held-out problems. ``prm``: the PRM on a built testbed's policy and tokenizer; held-out step accuracy and AUC.
``vllm``: the testbed's policy loaded by vLLM (the CPU build: ``enforce_eager``, float32, a 1 GiB KV cache unless
``VLLM_CPU_KVCACHE_SPACE`` says otherwise) generates for the held-out problems: greedy accuracy and the fraction of
greedy answers identical to Hugging Face ``generate``'s, sampled accuracy (avg@4, T = 1, engine seeded), load and generation
time. The held-out set (and the tokenizer of ``sft``) are the testbed's, seed 0, in every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the lab (examples/) is not installed


import torch

from examples.credit_assignment import task
from examples.credit_assignment.build import TestbedSettings, build_tokenizer, train_policy, train_prm
from examples.credit_assignment.evaluate import evaluate_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=["sft", "prm", "vllm"])
    ap.add_argument("--out", help="sft, prm: folder for what the stage trains")
    ap.add_argument("--testbed", help="prm, vllm: a built testbed folder (its policy and tokenizer are used)")
    ap.add_argument("--problems", type=int, default=None, help="vllm: the first N held-out problems (default all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--settings", default="{}", help="TestbedSettings overrides as JSON")
    args = ap.parse_args()
    if args.stage in ("prm", "vllm") and not args.testbed:
        ap.error(f"{args.stage} needs --testbed")
    if args.stage in ("sft", "prm") and not args.out:
        ap.error(f"{args.stage} needs --out")
    torch.set_num_threads(args.threads)
    overrides = json.loads(args.settings)
    s = dataclasses.replace(TestbedSettings(), **overrides)
    base = TestbedSettings()
    eval_set = task.problems(base.n_eval, seed=base.seed + 1000)  # as build_testbed
    exclude = {p.question for p in eval_set}
    if args.stage == "vllm":
        figures = vllm_figures(Path(args.testbed).expanduser(), eval_set[: args.problems], s)
        print(json.dumps({"stage": args.stage, "settings": overrides, **figures}))
        return
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


def vllm_figures(root: Path, problems: list[task.Problem], s: TestbedSettings, k: int = 4) -> dict:
    """Generate with vLLM from the testbed's policy; compare greedy answers with Hugging Face ``generate``."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from examples.credit_assignment.build import prompt_ids
    from examples.credit_assignment.evaluate import _generate, load_policy

    policy_dir = root / "policy"
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    t0 = time.time()
    llm = LLM(model=str(policy_dir), enforce_eager=True, dtype="float32", seed=s.seed)
    load_s = time.time() - t0
    prompts = [{"prompt_token_ids": prompt_ids(tokenizer, p.question)} for p in problems]
    stop = dict(max_tokens=s.max_response_length, stop_token_ids=[tokenizer.eos_token_id], skip_special_tokens=True)
    t0 = time.time()
    greedy = llm.generate(prompts, SamplingParams(temperature=0.0, **stop), use_tqdm=False)
    # seeded through the engine (LLM(seed=...)): a per-request SamplingParams.seed stops vLLM 0.27.1's CPU engine
    # ("CPU Generator does not use offset" in the model runner's bookkeeping)
    sampled = llm.generate(prompts, SamplingParams(n=k, temperature=1.0, top_k=0, top_p=1.0, **stop), use_tqdm=False)
    generate_s = time.time() - t0
    decode = lambda c: tokenizer.decode(c.token_ids, skip_special_tokens=True)  # noqa: E731
    greedy_vllm = [decode(o.outputs[0]) for o in greedy]
    samples = [(p, decode(c)) for p, o in zip(problems, sampled) for c in o.outputs]
    model, _ = load_policy(policy_dir)
    greedy_hf, _, _ = _generate(model, tokenizer, problems, do_sample=False, temperature=1.0,
                                max_new_tokens=s.max_response_length)
    n_tokens = sum(len(c.token_ids) for o in greedy + sampled for c in o.outputs)
    return {"problems": len(problems), "load_s": round(load_s, 1), "generate_s": round(generate_s, 1),
            "tokens_per_s": round(n_tokens / generate_s),
            "greedy_accuracy_vllm": sum(task.is_correct(p, t) for p, t in zip(problems, greedy_vllm)) / len(problems),
            "greedy_accuracy_hf": sum(task.is_correct(p, t) for p, t in zip(problems, greedy_hf)) / len(problems),
            "greedy_same_text": sum(a == b for a, b in zip(greedy_vllm, greedy_hf)) / len(problems),
            "sampled_accuracy_vllm": sum(task.is_correct(p, t) for p, t in samples) / len(samples),
            "greedy_example": greedy_vllm[0]}


if __name__ == "__main__":
    main()
