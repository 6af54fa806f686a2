"""Do the quickstart's validation and the grid's evaluation measure the same thing? (issue 22)

The quickstart reports verl's own validation (``trainer.val_before_train``: verl's vLLM rollout with
``val_kwargs`` do_sample, T = 1, top_p = 1, top_k = -1, ``n`` samples per problem, graded by the plugin's ``prpo``
reward manager with math-verify, ``val-core/.../acc/mean@n``); the grid reports
:func:`examples.credit_assignment.evaluate.evaluate_policy` (Hugging Face ``generate``, T = 1, top_k = 0, top_p = 1,
``k`` samples per problem, graded by ``task.is_correct``). This module measures both on the same policy and the same
200 held-out problems:

1. ``main_ppo`` with the quickstart's own command (:func:`examples.credit_assignment.quickstart.build_command`) plus
   ``trainer.val_only=true`` (verl 0.9.1's V1 trainer returns after the first validation) and
   ``trainer.validation_data_dir`` (verl dumps every prompt, response, score and ``acc``);
2. the grid's evaluation of the same weights in float32 (the actor's and the grid's dtype) and in bfloat16 (the
   dtype verl's rollout serves the policy in: ``actor_rollout_ref.rollout.dtype`` defaults to bfloat16);
3. the comparison: prompts (verl's decoded prompt against the grid's), response lengths and truncation, grading
   agreement (``task.is_correct`` on verl's responses against verl's ``acc``), and the accuracies with 95 %
   problem-bootstrap intervals, plus what ``n = 2`` (the quickstart's setting) leaves of the precision.

    python -m examples.credit_assignment.eval_agreement [--n 16] [--out benchmarks/results/eval_agreement]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from collections import defaultdict
from pathlib import Path

from examples.credit_assignment import task

_Q = re.compile(r"user\n(.*?)\nassistant", re.S)


def verl_validation_command(testbed_dir, n: int, dump_dir: Path, metrics_file: Path, out_dir: Path):
    """The quickstart's command (estimator grpo: validation does not depend on it) with validation only, ``n``
    samples per problem and the generations dumped."""
    from examples.credit_assignment.quickstart import build_command

    extra = ["trainer.val_only=true", "trainer.val_before_train=true",
             f"actor_rollout_ref.rollout.val_kwargs.n={n}", f"trainer.validation_data_dir={dump_dir}"]
    return build_command("grpo", testbed_dir=testbed_dir, steps=1, out_dir=out_dir, extra=extra,
                         metrics_file=metrics_file)


def read_verl_dump(dump_dir: Path, problems: list[task.Problem]) -> dict:
    """verl's validation dump (``<dump_dir>/0.jsonl``) -> per problem (in ``problems`` order): correct counts by
    verl's ``acc`` and by ``task.is_correct``, sample counts, response texts; and the decoded prompts."""
    path = Path(dump_dir) / "0.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no validation dump at {path}")
    by_q = {p.question: i for i, p in enumerate(problems)}
    acc, ours, n, outputs, inputs = (defaultdict(int), defaultdict(int), defaultdict(int), defaultdict(list),
                                     {})
    for line in path.read_text().splitlines():
        r = json.loads(line)
        m = _Q.search(r["input"])
        if not m or m[1].strip() not in by_q:
            raise ValueError(f"verl's prompt {r['input']!r} is not a held-out question")
        i = by_q[m[1].strip()]
        inputs[i] = r["input"]
        n[i] += 1
        acc[i] += int(float(r["acc"]) > 0.5) if "acc" in r else int(float(r["score"]) > 0)
        ours[i] += int(task.is_correct(problems[i], r["output"]))
        outputs[i].append(r["output"])
    if len(n) != len(problems):
        raise ValueError(f"verl's dump covers {len(n)} of {len(problems)} problems")
    idx = range(len(problems))
    return {"acc_counts": [acc[i] for i in idx], "task_counts": [ours[i] for i in idx],
            "samples": [n[i] for i in idx], "outputs": [outputs[i] for i in idx], "inputs": [inputs[i] for i in idx]}


def _hf(tb, dtype: str, k: int, seed: int) -> dict:
    import torch

    from examples.credit_assignment.evaluate import evaluate_policy, load_policy

    model, tok = load_policy(tb.policy_dir)
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    t0 = time.time()
    out = evaluate_policy(model, tok, tb.eval_problems(), k=k, seed=seed,
                          max_new_tokens=tb.settings.max_response_length, per_problem=True)
    out["wall_s"] = time.time() - t0
    out["dtype"] = dtype
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=16, help="samples per problem, both evaluations")
    p.add_argument("--seed", type=int, default=0, help="the grid evaluation's sampling seed")
    p.add_argument("--testbed", default=None)
    p.add_argument("--work", default="/tmp/eval_agreement", help="verl's run folder and dump")
    p.add_argument("--skip-verl", action="store_true", help="reuse the dump in --work")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--out", default="benchmarks/results/eval_agreement")
    args = p.parse_args(argv)
    from examples.credit_assignment import intervals as iv
    from examples.credit_assignment.build import DEFAULT_DIR, build_testbed
    from examples.credit_assignment.task import prompt_ids
    from verl_prpo.cpu.launch import read_metrics

    tb = build_testbed(args.testbed or DEFAULT_DIR)
    problems = tb.eval_problems()
    work = Path(args.work).resolve()
    dump, metrics = work / "val_dump", work / "metrics.jsonl"
    res: dict = {"problems": len(problems), "n": args.n}
    if not args.skip_verl:
        work.mkdir(parents=True, exist_ok=True)
        metrics.unlink(missing_ok=True)
        cmd, env = verl_validation_command(tb.root, args.n, dump, metrics, work / "run")
        t0 = time.time()
        with open(work / "verl.log", "w") as fh:
            rc = subprocess.call(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=work)
        if rc:
            raise SystemExit(f"main_ppo failed (rc={rc}), see {work / 'verl.log'}")
        res["verl_wall_s"] = time.time() - t0
        res["verl_command"] = cmd
    verl = read_verl_dump(dump, problems)
    recs = read_metrics(metrics)
    res["verl_metric"] = {k: v for r in recs for k, v in r["data"].items() if k.startswith("val-core/")}
    if set(verl["samples"]) != {args.n}:
        raise ValueError(f"verl's dump has {sorted(set(verl['samples']))} samples per problem, expected {args.n}")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tb.policy_dir)
    ours_prompts = [tok.decode(prompt_ids(tok, q.question), skip_special_tokens=True) for q in problems]
    lengths = [len(tok(o, add_special_tokens=False)["input_ids"]) for outs in verl["outputs"] for o in outs]
    res["verl"] = {
        "accuracy_acc": iv.bootstrap_accuracy(verl["acc_counts"], args.n),
        "accuracy_task_grader": iv.bootstrap_accuracy(verl["task_counts"], args.n),
        "grader_disagreements": sum(abs(a - b) for a, b in zip(verl["acc_counts"], verl["task_counts"])),
        "prompts_identical": sum(a == b for a, b in zip(verl["inputs"], ours_prompts)),
        "response_tokens_mean": sum(lengths) / len(lengths),
        "responses_at_length_limit": sum(x >= tb.settings.max_response_length for x in lengths),
        "correct_counts": verl["acc_counts"],
    }
    res["grid"] = {}
    for dtype in args.dtypes:
        out = _hf(tb, dtype, args.n, args.seed)
        res["grid"][dtype] = {"accuracy": iv.bootstrap_accuracy(out["correct_counts"], args.n),
                              "greedy_accuracy": out["greedy_accuracy"], "response_length": out["response_length"],
                              "wall_s": out["wall_s"], "correct_counts": out["correct_counts"]}
        # unpaired difference verl - grid (independent samples): bootstrap the per-problem difference of means
        res["grid"][dtype]["verl_minus_grid"] = iv.bootstrap_gain(out["correct_counts"], verl["acc_counts"],
                                                                  args.n)
    # the quickstart's n = 2: the interval of a mean@2 over the same problems (first two samples of verl's n)
    two = [sum(task.is_correct(problems[i], o) for o in outs[:2]) for i, outs in enumerate(verl["outputs"])]
    res["verl_mean_at_2"] = iv.bootstrap_accuracy(two, 2)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    v, g = res["verl"], res["grid"]
    lines = [f"verl validation (vLLM, bf16, n={args.n}): acc {v['accuracy_acc']['mean']:.3f} "
             f"[{v['accuracy_acc']['lo']:.3f}, {v['accuracy_acc']['hi']:.3f}]; task grader on the same responses "
             f"{v['accuracy_task_grader']['mean']:.3f}; grader disagreements {v['grader_disagreements']}; prompts "
             f"identical {v['prompts_identical']}/{len(problems)}; mean response {v['response_tokens_mean']:.1f} "
             f"tokens, {v['responses_at_length_limit']} at the limit"]
    for dtype, e in g.items():
        a, d = e["accuracy"], e["verl_minus_grid"]
        lines.append(f"grid evaluation (HF generate, {dtype}, k={args.n}): {a['mean']:.3f} [{a['lo']:.3f}, "
                     f"{a['hi']:.3f}], greedy {e['greedy_accuracy']:.3f}; verl - grid {100 * d['mean']:+.1f} pts "
                     f"[{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]")
    m2 = res["verl_mean_at_2"]
    lines.append(f"verl's first 2 samples (the quickstart's mean@2): {m2['mean']:.3f} [{m2['lo']:.3f}, {m2['hi']:.3f}]")
    out.with_suffix(".md").write_text("\n\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
