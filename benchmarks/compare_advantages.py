"""Before/after table of ``bench_advantages.py``: several code versions, glibc's default allocator and a kept heap.

Each version is a directory holding a ``verl_prpo`` package (a ``git worktree`` of an older commit, or this checkout);
it is put first on ``PYTHONPATH`` for its runs. For run 1..``--runs``, for each version, for ``--no-metrics`` and
then metrics on, the benchmark runs once with glibc's defaults and once with the heap kept mapped
(``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_THRESHOLD_``; see ``bench_advantages.py``); ``--allocators`` adds
``thp`` (PyTorch's ``THP_MEM_ALLOC_ENABLE=1``: transparent huge pages for large CPU buffers). The raw outputs go to
``--out``; the printed Markdown tables give, per cell, the median over the runs of the ratio to grpo (with the range)
and the median time.

    git worktree add /tmp/before <commit>
    python benchmarks/compare_advantages.py before=/tmp/before now=. [--runs 3] [--out DIR] [-- <bench args>]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).with_name("bench_advantages.py")
ESTIMATORS = ("grpo", "prpo", "prm_avg", "prl", "spro", "pure", "prpo_floor")  # prpo_floor: see bench_advantages
ALLOCATORS = {"glibc": {}, "kept": {"MALLOC_TRIM_THRESHOLD_": "4294967296", "MALLOC_MMAP_THRESHOLD_": "33554432"},
              "thp": {"THP_MEM_ALLOC_ENABLE": "1"}}  # thp: PyTorch's own switch for huge pages on large CPU buffers
ALLOCATOR_LABELS = {"glibc": "glibc", "kept": "heap kept", "thp": "THP"}
ALLOCATOR_VARS = {k for env in ALLOCATORS.values() for k in env}  # unset unless the allocator under test sets them
ROW = re.compile(r"\| (\w+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|")


def parse(text: str) -> dict[str, tuple[float, float]]:
    """{estimator: (median ms, ratio of medians)} from one ``bench_advantages.py`` output."""
    return {m.group(1): (float(m.group(2)), float(m.group(3))) for m in map(ROW.match, text.splitlines()) if m}


def table(results: dict, versions: list[str], mode: str, title: str, allocators=("glibc", "kept")) -> str:
    cols = [(v, a) for a in allocators for v in versions]
    lines = [f"| {title} | " + " | ".join(f"{v}, {ALLOCATOR_LABELS[a]}" for v, a in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for est in ESTIMATORS:
        cells = []
        for v, a in cols:
            runs = results.get((v, a, mode), [])
            ms = [r[est][0] for r in runs if est in r]
            ratios = [r[est][1] for r in runs if est in r]
            if not ms:
                cells.append("-")
            elif est == "grpo":
                cells.append(f"{statistics.median(ms):.1f} ms")
            else:
                cells.append(f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}), "
                             f"{statistics.median(ms):.0f} ms")
        lines.append(f"| {est} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("versions", nargs="+", help="label=DIR, a directory holding verl_prpo")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default="/tmp/verl_prpo_compare_advantages")
    ap.add_argument("--allocators", default="glibc,kept",
                    help=f"comma-separated, from {list(ALLOCATORS)} (thp: THP_MEM_ALLOC_ENABLE=1 over glibc's defaults)")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []  # after --: passed to bench_advantages.py
    args = ap.parse_args(argv[: len(argv) - len(extra) - (1 if "--" in argv else 0)])
    versions = dict(v.split("=", 1) for v in args.versions)
    allocators = args.allocators.split(",")
    if unknown := set(allocators) - set(ALLOCATORS):
        raise SystemExit(f"unknown allocator(s) {sorted(unknown)}; expected some of {list(ALLOCATORS)}")
    for label, path in versions.items():
        if not (Path(path) / "verl_prpo").is_dir():
            raise SystemExit(f"{label}={path}: no verl_prpo package there")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, str, str], list[dict]] = {}
    for run in range(1, args.runs + 1):
        for label, path in versions.items():
            for mode in ("nm", "m"):
                for alloc in allocators:
                    env_vars = ALLOCATORS[alloc]
                    env = {**os.environ, **env_vars, "PYTHONPATH": str(Path(path).resolve())}
                    for k in ALLOCATOR_VARS - set(env_vars):
                        env.pop(k, None)
                    cmd = [sys.executable, str(BENCH), "--threads", "1", *(["--no-metrics"] if mode == "nm" else []),
                           *extra]
                    text = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
                    (out / f"{label}-{alloc}_{mode}_{run}.txt").write_text(text)
                    results.setdefault((label, alloc, mode), []).append(parse(text))
                    print(f"run {run}: {label}, {alloc}, {'metrics on' if mode == 'm' else 'no metrics'}", file=sys.stderr,
                          flush=True)  # progress, kept out of the tables on stdout
    print()
    print(table(results, list(versions), "m", "metrics on (as in training)", allocators))
    print()
    print(table(results, list(versions), "nm", "`--no-metrics`", allocators))


if __name__ == "__main__":
    main()
