"""How many held-out samples per problem the grid's evaluation needs: a variance study (issue 22).

Evaluates the step-0 policy and one trained checkpoint on the 200 held-out problems with ``--kmax`` samples per
problem and the same sampling seed (the grid's common random numbers), then for every k <= kmax takes each
problem's first k samples and reports the 95 % problem-bootstrap half-width of the accuracy and of the paired gain,
and the variance split of the gain: between problems (real differences in how much each problem changed, which
more samples do not remove) and within problems (sampling noise, which shrinks as 1/k).

    python -m examples.credit_assignment.eval_precision --checkpoint /work/grid_v3/work/grpo_s0/checkpoints/global_step_20
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def study(before: list[list[int]], after: list[list[int]], ks: list[int]) -> list[dict]:
    """Per k: accuracy and paired-gain intervals from the first k samples of each problem, and the gain's variance
    split (``within``: mean over problems of the two binomial variances / k; ``between``: the rest)."""
    from examples.credit_assignment import intervals as iv

    b, a = np.asarray(before), np.asarray(after)
    rows = []
    for k in ks:
        cb, ca = b[:, :k].sum(1), a[:, :k].sum(1)
        acc = iv.bootstrap_accuracy(cb, k)
        gain = iv.bootstrap_gain(cb, ca, k)
        d = (ca - cb) / k
        pb, pa = cb / k, ca / k
        within = float(np.mean(pb * (1 - pb) + pa * (1 - pa)) / max(k - 1, 1)) if k > 1 else float("nan")
        total = float(d.var(ddof=1))
        rows.append({"k": k, "accuracy": acc, "gain": gain, "gain_half_width": (gain["hi"] - gain["lo"]) / 2,
                     "accuracy_half_width": (acc["hi"] - acc["lo"]) / 2, "var_gain_per_problem": total,
                     "var_within": within, "var_between": max(total - within, 0.0) if k > 1 else float("nan")})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a trained cell's checkpoints/global_step_N")
    p.add_argument("--kmax", type=int, default=32)
    p.add_argument("--seed", type=int, default=10_000)
    p.add_argument("--testbed", default=None)
    p.add_argument("--out", default="benchmarks/results/eval_precision")
    args = p.parse_args(argv)
    from examples.credit_assignment.build import DEFAULT_DIR, build_testbed
    from examples.credit_assignment.evaluate import evaluate_policy, load_policy

    tb = build_testbed(args.testbed or DEFAULT_DIR)
    problems = tb.eval_problems()
    evals, walls = {}, {}
    for name, ckpt in (("step0", None), ("checkpoint", args.checkpoint)):
        model, tok = load_policy(tb.policy_dir, ckpt)
        t0 = time.time()
        evals[name] = evaluate_policy(model, tok, problems, k=args.kmax, seed=args.seed, per_problem=True,
                                      per_sample=True, max_new_tokens=tb.settings.max_response_length)
        walls[name] = time.time() - t0
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= args.kmax]
    rows = study(evals["step0"]["sample_correct"], evals["checkpoint"]["sample_correct"], ks)
    res = {"checkpoint": args.checkpoint, "kmax": args.kmax, "seed": args.seed, "problems": len(problems),
           "eval_s_at_kmax": walls, "rows": rows,
           "step0_accuracy": evals["step0"]["sampled_accuracy"],
           "checkpoint_accuracy": evals["checkpoint"]["sampled_accuracy"]}
    Path(args.out).with_suffix(".json").write_text(json.dumps(res, indent=1))
    lines = ["| k | accuracy (step 0) ± half-width | gain ± half-width (paired) | var of per-problem gain: "
             "within / between |", "|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['k']} | {r['accuracy']['mean']:.3f} ± {r['accuracy_half_width']:.3f} | "
                     f"{100 * r['gain']['mean']:+.1f} ± {100 * r['gain_half_width']:.1f} pts | "
                     f"{r['var_within']:.4f} / {r['var_between']:.4f} |")
    text = "\n".join(lines) + f"\n\nevaluation time at k = {args.kmax}: " + ", ".join(
        f"{n} {w:.0f} s" for n, w in walls.items()) + "\n"
    Path(args.out).with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
