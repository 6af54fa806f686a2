"""``benchmarks/compare_advantages.py``: parsing of ``bench_advantages.py`` output and the before/after table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "compare_advantages", Path(__file__).parents[2] / "benchmarks" / "compare_advantages.py")
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)

OUTPUT = """batch 1024 x 4096, group 8, CPU, 1 threads, 7 interleaved rounds, wall time, metrics on, allocator: glibc defaults

| estimator | median ms | ratio of medians to grpo | median of per-round ratios |
|---|---:|---:|---:|
| grpo | {g} | 1.00 | 1.00 |
| prpo | {p} | {r} | 2.00 |
"""


def test_parse_and_table():
    runs = [compare.parse(OUTPUT.format(g=g, p=p, r=r)) for g, p, r in ((20.0, 60.0, 3.0), (10.0, 40.0, 4.0),
                                                                         (30.0, 50.0, 1.5))]
    assert runs[0] == {"grpo": (20.0, 1.0), "prpo": (60.0, 3.0)}
    text = compare.table({("now", "glibc", "m"): runs}, ["now"], "m", "metrics on")
    lines = text.splitlines()
    assert lines[0] == "| metrics on | now, glibc | now, heap kept |"
    assert lines[2] == "| grpo | 20.0 ms | - |"
    assert lines[3] == "| prpo | 3.00 (1.50-4.00), 50 ms | - |"  # median ratio, range, median time
    assert lines[4] == "| prm_avg | - | - |"


def test_table_columns_follow_the_allocators():
    run = compare.parse(OUTPUT.format(g=20.0, p=60.0, r=3.0))
    text = compare.table({("now", "thp", "m"): [run]}, ["now"], "m", "metrics on", ("thp",))
    assert text.splitlines()[0] == "| metrics on | now, THP |"
    assert text.splitlines()[3] == "| prpo | 3.00 (3.00-3.00), 60 ms |"
