"""The plugin's own cost in every verl process: whole-process ``python -c "import verl"``, without and with the plugin.

verl imports every ``verl.plugins`` entry point (ours: ``prpo = verl_prpo``) in every process it starts, Ray workers
included, so whatever registration imports is paid once per process. This benchmark runs a fresh interpreter
``python -c "import verl"`` with ``VERL_USE_EXTERNAL_PLUGINS=none`` (verl alone) and with the plugin
(``VERL_USE_EXTERNAL_PLUGINS=prpo``), in interleaved pairs so that machine load affects both alike, and prints the
wall time (start to exit, as the parent sees it) and the peak RSS of each child (``os.wait4``'s ``ru_maxrss``), with
the median of the pairs and the plugin's cost (median of the per-pair differences).

Usage: ``python benchmarks/bench_import.py [--pairs 4] [--platform cpu]`` (``--platform`` sets ``VERL_PLATFORM`` in
the children, as CPU mode does; the default leaves it unset). Run it with the worktree first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def run_once(plugins: str, code: str, extra_env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one ``python -c code`` child with ``VERL_USE_EXTERNAL_PLUGINS=plugins``."""
    env = dict(os.environ, VERL_USE_EXTERNAL_PLUGINS=plugins, **extra_env)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"child failed (VERL_USE_EXTERNAL_PLUGINS={plugins}):\n{err}")
    return wall, rusage.ru_maxrss / 1024.0  # Linux: KiB


def main(argv=None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--platform", default=None, help="VERL_PLATFORM for the children (default: unset)")
    p.add_argument("--code", default="import verl")
    p.add_argument("--plugin-name", default="prpo", help="entry-point name of the plugin")
    args = p.parse_args(argv)
    extra = {} if args.platform is None else {"VERL_PLATFORM": args.platform}

    run_once("none", args.code, extra)  # warm the page cache / .pyc files once, not counted
    run_once(args.plugin_name, args.code, extra)
    rows = []
    for i in range(args.pairs):
        order = ("none", args.plugin_name) if i % 2 == 0 else (args.plugin_name, "none")
        res = {name: run_once(name, args.code, extra) for name in order}
        rows.append((res["none"], res[args.plugin_name]))
        print(f"pair {i}: verl alone {res['none'][0]:6.2f} s {res['none'][1]:7.1f} MiB | "
              f"with plugin {res[args.plugin_name][0]:6.2f} s {res[args.plugin_name][1]:7.1f} MiB", flush=True)

    med = statistics.median
    out = {
        "alone_s": med(r[0][0] for r in rows), "alone_mib": med(r[0][1] for r in rows),
        "plugin_s": med(r[1][0] for r in rows), "plugin_mib": med(r[1][1] for r in rows),
        "delta_s": med(r[1][0] - r[0][0] for r in rows), "delta_mib": med(r[1][1] - r[0][1] for r in rows),
    }
    print(f"\n`python -c {args.code!r}`, median of {args.pairs} interleaved pairs"
          f"{'' if args.platform is None else f', VERL_PLATFORM={args.platform}'}:")
    print(f"  VERL_USE_EXTERNAL_PLUGINS=none : {out['alone_s']:6.2f} s  {out['alone_mib']:7.1f} MiB peak RSS")
    print(f"  with the plugin                : {out['plugin_s']:6.2f} s  {out['plugin_mib']:7.1f} MiB peak RSS")
    print(f"  plugin cost (median of pair differences): {out['delta_s']:+.2f} s  {out['delta_mib']:+.1f} MiB")

    # the same cost without the noise of a 5-10 s import: `import verl_prpo` timed inside a process that has
    # imported verl alone (what the entry point adds to `import verl`)
    probe = ("import resource, sys, time; import verl; r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
             "n = len(sys.modules); t = time.perf_counter(); import verl_prpo; dt = time.perf_counter() - t; "
             "print(dt, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0) / 1024, len(sys.modules) - n)")
    vals = []
    for _ in range(args.pairs):
        env = dict(os.environ, VERL_USE_EXTERNAL_PLUGINS="none", **extra)
        res = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        vals.append([float(v) for v in res.stdout.split()[-3:]])
    out["inproc_s"] = med(v[0] for v in vals)
    out["inproc_mib"] = med(v[1] for v in vals)
    out["inproc_modules"] = med(v[2] for v in vals)
    print(f"  `import verl_prpo` after `import verl` (in process, median of {args.pairs}): "
          f"{out['inproc_s'] * 1e3:.0f} ms, {out['inproc_mib']:+.1f} MiB peak RSS, "
          f"{out['inproc_modules']:.0f} more modules")
    return out


if __name__ == "__main__":
    main()
