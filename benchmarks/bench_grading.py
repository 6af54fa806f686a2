"""Outcome grading throughput on a MATH500-sized batch: gradings per second.

Two batches of 500 responses built from the offline MATH500 copy:

* ``reference``  each problem's reference solution against its ``answer`` (all correct; most are decided by the
                 normalised string comparison, the rest by math-verify);
* ``perturbed``  the same solutions with the final box's first number changed (all wrong; every one goes through
                 math-verify, the expensive path).

Three ways of calling, each timed after one untimed warm-up pass over the batch:

* ``grade, main thread``     ``[grade(r, a) for ...]`` in the main thread;
* ``grade, other thread``    the same loop in a ``threading.Thread`` (how a Ray actor's code runs);
* ``reward manager``         ``PRPORewardManager.run_single`` on every response, gathered concurrently in one
                             event loop that runs off the main thread (verl's reward loop): decoding included.

Usage::

    python benchmarks/bench_grading.py [--data PATH/math500.jsonl] [--repeats 3] [--out FILE.json]

Works on any version of ``verl_prpo`` that has ``math_grading.grade`` and ``reward_manager.PRPORewardManager``
(point ``PYTHONPATH`` at another checkout to measure it). Numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DEFAULT_DATA = Path(os.environ.get("VERL_PRPO_DATA", "/work/shared/data")) / "eval" / "math500.jsonl"


def _perturb(answer: str) -> str:
    if re.fullmatch(r"-?\d+", answer):
        return str(int(answer) + 1)
    m = re.search(r"\d+", answer)
    if m:
        return answer[: m.start()] + str(int(m.group()) + 1) + answer[m.end():]
    return answer + "+1"


def batches(rows: list[dict]) -> dict[str, list[tuple[str, str]]]:
    reference = [(r["solution"], r["answer"]) for r in rows]
    perturbed = [(r["solution"].rsplit("\\boxed", 1)[0] + "\\boxed{" + _perturb(r["answer"]) + "}", r["answer"])
                 for r in rows]
    return {"reference": reference, "perturbed": perturbed}


def _in_thread(fn):
    out: dict = {}

    def run():
        out["value"] = fn()

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out["value"]


def time_grade(pairs, *, thread: bool, repeats: int) -> dict:
    from verl_prpo.math_grading import grade

    def loop():
        t0 = time.perf_counter()
        res = [grade(r, a) for r, a in pairs]
        return time.perf_counter() - t0, sum(g.correct for g in res)

    call = (lambda: _in_thread(loop)) if thread else loop
    warm_s, _ = call()
    runs = [call() for _ in range(repeats)]
    best = min(s for s, _ in runs)
    return {"gradings": len(pairs), "warmup_s": warm_s, "seconds": [s for s, _ in runs],
            "gradings_per_s": len(pairs) / best, "correct": runs[-1][1]}


def _tokenizer(tmp: Path, texts: list[str]):
    from transformers import AutoTokenizer

    from verl_prpo.assets import build_tokenizer

    build_tokenizer(tmp / "tok", texts[:200], vocab_size=2000)
    return AutoTokenizer.from_pretrained(tmp / "tok")


def _items(tokenizer, pairs):
    import numpy as np
    import torch
    from verl import DataProto

    prompt = torch.tensor(tokenizer("Solve.", add_special_tokens=False)["input_ids"], dtype=torch.long)
    items = []
    for response, answer in pairs:
        ids = torch.tensor(tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
        input_ids = torch.cat([prompt, ids])
        mask = torch.ones_like(input_ids)
        items.append(DataProto.from_dict(
            tensors={"prompts": prompt[None], "responses": ids[None], "input_ids": input_ids[None],
                     "attention_mask": mask[None], "position_ids": (mask.cumsum(0) - 1)[None]},
            non_tensors={"reward_model": np.array([{"style": "rule", "ground_truth": answer}], dtype=object)}))
    return items


def time_manager(tokenizer, pairs, *, repeats: int) -> dict:
    from omegaconf import OmegaConf

    from verl_prpo.reward_manager import PRPORewardManager

    cfg = OmegaConf.create({"reward": {"reward_manager": {"source": "register", "name": "prpo"}}})
    manager = PRPORewardManager(cfg, tokenizer, compute_score=None)
    items = _items(tokenizer, pairs)

    async def gather():
        return await asyncio.gather(*(manager.run_single(d) for d in items))

    def once():
        t0 = time.perf_counter()
        outs = asyncio.run(gather())
        return time.perf_counter() - t0, sum(o["reward_score"] > 0 for o in outs)

    warm_s, _ = _in_thread(once)
    runs = [_in_thread(once) for _ in range(repeats)]
    best = min(s for s, _ in runs)
    return {"gradings": len(pairs), "warmup_s": warm_s, "seconds": [s for s, _ in runs],
            "gradings_per_s": len(pairs) / best, "correct": runs[-1][1]}


def _commit() -> str:
    import verl_prpo

    root = Path(verl_prpo.__file__).resolve().parent.parent
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--label", default="", help="a name for this run in the output (e.g. before / after)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    import verl_prpo

    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    sets = batches(rows)
    result = {"label": args.label, "verl_prpo": str(Path(verl_prpo.__file__).resolve().parent),
              "commit": _commit(), "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
              "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d %H:%M"), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tokenizer(Path(tmp), [r["solution"] for r in rows])
        for name, pairs in sets.items():
            for how, fn in (("grade, main thread", lambda: time_grade(pairs, thread=False, repeats=args.repeats)),
                            ("grade, other thread", lambda: time_grade(pairs, thread=True, repeats=args.repeats)),
                            ("reward manager", lambda: time_manager(tokenizer, pairs, repeats=args.repeats))):
                r = fn()
                r.update(batch=name, call=how)
                result["runs"].append(r)
                print(f"{name:10s} {how:22s} {r['gradings_per_s']:8.1f} gradings/s  (best of {args.repeats}; "
                      f"warm-up {r['warmup_s']:.2f} s; correct {r['correct']}/{r['gradings']})", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
