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

Then, for versions with the grading pool, the pool's own cost per request (a trivial pair graded in process and
through a worker). Reported per run: gradings per second (wall clock, best of ``--repeats``) and CPU milliseconds per grading (this
process and its grading worker processes, best of the repeats), which other load on a shared machine disturbs less.

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the lab (examples/) is not installed


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


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its live grading workers, if the version measured has
    any: comparable across versions on a machine whose other load makes wall-clock rates noisy."""
    t = os.times()
    total = t.user + t.system
    try:
        import verl_prpo.math_grading as mg

        pool = getattr(mg, "_POOL", None)
        pids = [w.pid for w in getattr(pool, "_all", ())] if pool is not None else []
        zygote = getattr(pool, "_zygote", None)
        if zygote is not None:
            pids.append(zygote.proc.pid)
    except ImportError:
        pids = []
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def _timed(loop):
    """Run ``loop() -> correct`` and return (wall seconds, CPU seconds, correct)."""
    c0, t0 = _cpu_seconds(), time.perf_counter()
    correct = loop()
    return time.perf_counter() - t0, _cpu_seconds() - c0, correct


def _summary(n: int, warm_s: float, runs) -> dict:
    best = min(s for s, _, _ in runs)
    return {"gradings": n, "warmup_s": warm_s, "seconds": [s for s, _, _ in runs],
            "cpu_seconds": [c for _, c, _ in runs], "gradings_per_s": n / best,
            "cpu_ms_per_grading": 1e3 * min(c for _, c, _ in runs) / n, "correct": runs[-1][2]}


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
        return _timed(lambda: sum(grade(r, a).correct for r, a in pairs))

    call = (lambda: _in_thread(loop)) if thread else loop
    warm_s = call()[0]
    return _summary(len(pairs), warm_s, [call() for _ in range(repeats)])


def _tokenizer(tmp: Path, texts: list[str]):
    from transformers import AutoTokenizer

    from examples.credit_assignment.tiny_assets import build_tokenizer

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
        return _timed(lambda: sum(o["reward_score"] > 0 for o in asyncio.run(gather())))

    warm_s = _in_thread(once)[0]
    return _summary(len(pairs), warm_s, [_in_thread(once) for _ in range(repeats)])


def time_overhead(n: int = 300) -> dict | None:
    """Per-request cost of the grading pool itself: one trivial pair ("1" vs "2", math-verify says no in well under
    a millisecond) graded n times in this process and n times through a worker. None for versions without a pool."""
    import verl_prpo.math_grading as mg

    if not hasattr(mg, "get_grading_pool"):
        return None
    pool = mg.get_grading_pool().start()
    mg._warm_up()
    rounds = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            mg._math_verify_equal("1", "2", 5)
        inline = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for _ in range(n):
            pool.equivalent("1", ["2"], 10.0)
        pooled = (time.perf_counter() - t0) / n
        rounds.append((inline, pooled))
    inline, pooled = min(r[0] for r in rounds), min(r[1] for r in rounds)
    return {"in_process_ms": 1e3 * inline, "through_pool_ms": 1e3 * pooled, "overhead_ms": 1e3 * (pooled - inline)}


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
    p.add_argument("--batches", nargs="+", default=["reference", "perturbed"], choices=["reference", "perturbed"])
    p.add_argument("--calls", nargs="+", default=["main", "thread", "manager"], choices=["main", "thread", "manager"])
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    import verl_prpo

    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    sets = batches(rows)
    result = {"label": args.label, "load_average": os.getloadavg(),
              "verl_prpo": str(Path(verl_prpo.__file__).resolve().parent),
              "commit": _commit(), "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
              "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d %H:%M"), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tokenizer(Path(tmp), [r["solution"] for r in rows])
        for name in args.batches:
            pairs = sets[name]
            calls = {"main": ("grade, main thread", lambda: time_grade(pairs, thread=False, repeats=args.repeats)),
                     "thread": ("grade, other thread", lambda: time_grade(pairs, thread=True, repeats=args.repeats)),
                     "manager": ("reward manager", lambda: time_manager(tokenizer, pairs, repeats=args.repeats))}
            for how, fn in (calls[c] for c in args.calls):
                r = fn()
                r.update(batch=name, call=how)
                result["runs"].append(r)
                print(f"{name:10s} {how:22s} {r['gradings_per_s']:8.1f} gradings/s {r['cpu_ms_per_grading']:7.3f} CPU "
                      f"ms/grading  (best of {args.repeats}; warm-up {r['warmup_s']:.2f} s; correct "
                      f"{r['correct']}/{r['gradings']})", flush=True)
    overhead = time_overhead() if "perturbed" in args.batches else None
    if overhead is not None:
        result["pool_overhead"] = overhead
        print(f"pool overhead per request: {overhead['overhead_ms']:.3f} ms (trivial pair: "
              f"{overhead['in_process_ms']:.3f} ms in process, {overhead['through_pool_ms']:.3f} ms through a worker; "
              f"best of 3 x 300)", flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
