"""CPU mode: one training step with verl's vLLM rollout against the ``hf`` rollout, and world size 2 against 1.

Each configuration is one ``main_ppo`` run in CPU mode (``examples.credit_assignment.quickstart.tiny_command``: the tiny local
assets, PRPO with the PRM worker group, ``--steps`` steps). From verl's per-step metrics (JSON-lines file logger) it
prints the median over the steps after the first (the first step warms up the engine) of where the time goes:

    gen            timing_s/gen             generation (agent loop + rollout server)
    weight_sync    timing_s/update_weights  actor -> rollout weight transfer after the update
    old_log_prob   timing_s/old_log_prob    the actor's log-probs and entropy of the batch
    prm            timing_s/prm             the PRM worker group's scoring
    update         timing_s/update_actor    the FSDP2 actor update
    step           timing_s/step            the whole step

and the wall time of the whole run (start-up included).

Usage: ``python benchmarks/bench_rollout_engines.py [--steps 4] [--configs vllm:1,hf:1,vllm:2,hf:2]
[--out benchmarks/results/rollout_engines]`` (about 3-5 minutes of CPU per configuration on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the lab (examples/) is not installed


STAGES = {"gen": "timing_s/gen", "weight_sync": "timing_s/update_weights", "old_log_prob": "timing_s/old_log_prob",
          "prm": "timing_s/prm", "update": "timing_s/update_actor", "step": "timing_s/step"}


def run_config(engine: str, world_size: int, steps: int, assets, out: Path) -> dict:
    from examples.credit_assignment.quickstart import tiny_command

    run_dir = out / "work" / f"{engine}_ws{world_size}"  # logs and checkpoints: not committed (.gitignore)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = run_dir / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    cmd, env = tiny_command("prpo", assets_dir=assets.root, steps=steps, out_dir=run_dir, metrics_file=metrics,
                            extra=[f"actor_rollout_ref.rollout.name={engine}"], world_size=world_size)
    t0 = time.monotonic()
    with open(run_dir / "log.txt", "w") as fh:
        rc = subprocess.call(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=run_dir)
    wall = time.monotonic() - t0
    if rc != 0:
        raise SystemExit(f"{engine} world size {world_size} failed (rc={rc}); see {run_dir / 'log.txt'}")
    records = [json.loads(line)["data"] for line in metrics.read_text().splitlines() if line.strip()]
    warm = records[1:] or records
    row = {"engine": engine, "world_size": world_size, "steps": len(records), "wall_s": round(wall, 1),
           "first_step_s": round(records[0].get(STAGES["step"], float("nan")), 2)}
    for name, key in STAGES.items():
        vals = [r[key] for r in warm if key in r]
        row[name] = round(statistics.median(vals), 3) if vals else None
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--configs", default="vllm:1,hf:1,vllm:2,hf:2", help="engine:world_size, comma-separated")
    p.add_argument("--out", default="benchmarks/results/rollout_engines")
    args = p.parse_args(argv)
    from examples.credit_assignment.tiny_assets import build_tiny_assets

    out = Path(args.out).resolve()
    assets = build_tiny_assets(out / "work" / "assets", n_train=64, n_val=8)
    rows = []
    for item in args.configs.split(","):
        engine, ws = item.split(":")
        print(f"running {engine} at world size {ws} ...", file=sys.stderr, flush=True)
        rows.append(run_config(engine, int(ws), args.steps, assets, out))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    header = ["engine", "world_size", "wall_s", "first_step_s", *STAGES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)
    meta = {"date": date.today().isoformat(), "command": " ".join([sys.executable, *sys.argv]),
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs", "steps": args.steps}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / "table.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
