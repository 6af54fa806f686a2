#!/usr/bin/env python
"""Plot verl training metrics of several runs side by side (PNG).

Inputs (one per run; ``LABEL=PATH`` names the run, otherwise the file or folder name is used):

* a TensorBoard log folder (``trainer.logger=[tensorboard]``; verl writes to ``$TENSORBOARD_DIR`` or
  ``tensorboard_log/<project>/<experiment>``), read with TensorBoard's ``EventAccumulator``; every folder below
  ``PATH`` that holds ``events.out.tfevents.*`` files is read;
* a JSON Lines file of verl's ``file`` logger (``trainer.logger=[file]``; ``$VERL_FILE_LOGGER_PATH`` or
  ``$VERL_FILE_LOGGER_ROOT/<project>/<experiment>.jsonl``), one ``{"step": N, "data": {key: value}}`` per line;
* a text log of verl's ``console`` logger: lines ``step:N - key:value - key:value ...``.

Panels (the first key found in a run is used; ``--list-keys`` shows what a run has):

| panel | keys tried |
|---|---|
| reward | ``critic/score/mean``, ``critic/rewards/mean``, ``reward/mean`` |
| response length | ``response_length/mean`` |
| entropy | ``actor/entropy`` |
| PRM score | ``prm/score/mean``, ``prm/mean``, ``prpo/prm_score/mean``, then any key matching ``prm.*(score|prob)`` |
| advantage spread | ``adv/std``, ``critic/advantages/std``, else ``critic/advantages/max - critic/advantages/min`` |

``--key NAME`` adds panels for arbitrary keys. Writes ``<out>/<panel>.png`` for each panel with data and
``<out>/metrics.png`` with all panels in a grid. Needs matplotlib (``pip install matplotlib`` or
``pip install -e .[plots]``).

    python scripts/plot_metrics.py grpo=tensorboard_log/prpo/grpo prpo=logs/prpo.jsonl --out plots/ --smooth 0.6
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

Series = dict[str, list[tuple[int, float]]]  # key -> [(step, value)] sorted by step


@dataclass(frozen=True)
class Panel:
    name: str
    title: str
    keys: tuple[str, ...]
    pattern: str | None = None
    spread: tuple[str, str] | None = None  # (max key, min key): plotted as max - min when no key matches


PANELS: tuple[Panel, ...] = (
    Panel("reward", "reward (mean score)", ("critic/score/mean", "critic/rewards/mean", "reward/mean")),
    Panel("response_length", "response length (tokens)", ("response_length/mean",)),
    Panel("entropy", "policy entropy", ("actor/entropy", "actor/entropy/mean")),
    Panel("prm_score", "PRM score", ("prm/score/mean", "prm/mean", "prpo/prm_score/mean", "prpo/prm/mean"),
          pattern=r"prm.*(score|prob)"),
    Panel("advantage_spread", "advantage spread", ("adv/std", "critic/advantages/std"),
          spread=("critic/advantages/max", "critic/advantages/min")),
)


# ---------------------------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------------------------


def _add(series: Series, key: str, step, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        return
    series.setdefault(key, []).append((int(step), value))


def _finish(series: Series) -> Series:
    out = {}
    for k, pts in series.items():
        by_step = {}
        for s, v in pts:  # last value logged for a step wins
            by_step[s] = v
        out[k] = sorted(by_step.items())
    return out


def read_jsonl(path: Path) -> Series:
    """verl ``file`` logger: ``{"step": N, "data": {...}}`` per line (a flat ``{"step": N, key: value}`` too)."""
    series: Series = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not JSON ({exc})") from exc
        step = rec.get("step")
        data = rec.get("data", {k: v for k, v in rec.items() if k != "step"})
        if step is None or not isinstance(data, dict):
            continue
        for k, v in data.items():
            _add(series, k, step, v)
    return _finish(series)


_CONSOLE_STEP = re.compile(r"step:(\d+)\s+-\s+")


def read_console(path: Path) -> Series:
    """verl ``console`` logger lines: ``step:N - key:value - key:value``."""
    series: Series = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _CONSOLE_STEP.search(line)
        if not m:
            continue
        step = int(m.group(1))
        for part in line[m.end():].split(" - "):
            key, sep, val = part.strip().rpartition(":")
            if not sep or not key:
                continue
            try:
                _add(series, key, step, float(val))
            except ValueError:
                continue
    return _finish(series)


def read_tensorboard(path: Path) -> Series:
    """Scalars of every TensorBoard event folder under ``path``."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as exc:
        raise SystemExit("reading TensorBoard logs needs the `tensorboard` package (pip install tensorboard)") from exc
    dirs = sorted({p.parent for p in path.rglob("events.out.tfevents.*")})
    if path.is_dir() and any(path.glob("events.out.tfevents.*")):
        dirs = sorted(set(dirs) | {path})
    series: Series = {}
    for d in dirs:
        acc = EventAccumulator(str(d), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            for ev in acc.Scalars(tag):
                _add(series, tag, ev.step, ev.value)
    return _finish(series)


def read_run(path: str | Path) -> Series:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"run log not found: {path}")
    if path.is_dir():
        series = read_tensorboard(path)
        if not series:
            raise ValueError(f"{path}: no TensorBoard scalars found (no events.out.tfevents.* files?)")
        return series
    if path.name.startswith("events.out.tfevents."):
        return read_tensorboard(path.parent)
    head = path.read_text(encoding="utf-8", errors="replace")[:4096].lstrip()
    series = read_jsonl(path) if head.startswith("{") else read_console(path)
    if not series:
        raise ValueError(f"{path}: no metrics found (expected verl file-logger JSON lines or console lines)")
    return series


# ---------------------------------------------------------------------------------------------------------------
# panels
# ---------------------------------------------------------------------------------------------------------------


def resolve(panel: Panel, series: Series) -> tuple[str, list[tuple[int, float]]] | None:
    """(label of the key used, points) for ``panel`` in one run, or None."""
    for k in panel.keys:
        if k in series:
            return k, series[k]
    if panel.pattern:
        rx = re.compile(panel.pattern)
        for k in sorted(series):
            if rx.search(k):
                return k, series[k]
    if panel.spread and all(k in series for k in panel.spread):
        hi, lo = dict(series[panel.spread[0]]), dict(series[panel.spread[1]])
        pts = [(s, hi[s] - lo[s]) for s in sorted(set(hi) & set(lo))]
        return f"{panel.spread[0]} - {panel.spread[1]}", pts
    return None


def smooth(values: list[float], weight: float) -> list[float]:
    """TensorBoard-style exponential moving average (weight 0: none)."""
    if weight <= 0:
        return list(values)
    out, last = [], None
    for v in values:
        last = v if last is None else weight * last + (1 - weight) * v
        out.append(last)
    return out


def _import_pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(
            "plot_metrics.py needs matplotlib, which is not installed: pip install matplotlib "
            "(or pip install -e .[plots])"
        ) from None
    return plt


def plot(runs: dict[str, Series], out_dir: str | Path, *, panels: tuple[Panel, ...] = PANELS,
         smoothing: float = 0.0, dpi: int = 120) -> dict[str, dict[str, str]]:
    """Write one PNG per panel plus ``metrics.png``; returns ``{panel: {run: key used}}`` for panels with data."""
    plt = _import_pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    used: dict[str, dict[str, str]] = {}
    resolved: dict[str, dict[str, tuple[str, list]]] = {}
    for p in panels:
        per_run = {}
        for run, series in runs.items():
            r = resolve(p, series)
            if r is not None and r[1]:
                per_run[run] = r
        if per_run:
            resolved[p.name] = per_run
            used[p.name] = {run: key for run, (key, _) in per_run.items()}

    from matplotlib.ticker import MaxNLocator

    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0", "C1", "C2", "C3"])
    colors = {run: cycle[i % len(cycle)] for i, run in enumerate(runs)}  # one colour per run in every panel

    def draw(ax, panel: Panel, per_run):
        keys = sorted({k for k, _ in per_run.values()})
        for run, (key, pts) in per_run.items():
            steps = [s for s, _ in pts]
            vals = [v for _, v in pts]
            label = run if len(keys) == 1 else f"{run} [{key}]"
            ax.plot(steps, smooth(vals, smoothing), label=label, color=colors[run], linewidth=1.5)
            if smoothing > 0:
                ax.plot(steps, vals, color=colors[run], alpha=0.25, linewidth=0.8)
        ax.set_title(panel.title + ("" if len(keys) > 1 else f"\n{keys[0]}"), fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    by_name = {p.name: p for p in panels}
    for name, per_run in resolved.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        draw(ax, by_name[name], per_run)
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}.png", dpi=dpi)
        plt.close(fig)
    if resolved:
        cols = min(3, len(resolved))
        rows = math.ceil(len(resolved) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
        for ax, (name, per_run) in zip(axes.flat, resolved.items()):
            draw(ax, by_name[name], per_run)
        for ax in list(axes.flat)[len(resolved):]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out_dir / "metrics.png", dpi=dpi)
        plt.close(fig)
    return used


# ---------------------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------------------


def _parse_run(arg: str) -> tuple[str, str]:
    if "=" in arg and not Path(arg).exists():
        label, path = arg.split("=", 1)
        return label, path
    p = Path(arg)
    return (p.stem if p.is_file() else p.name) or arg, arg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="[LABEL=]PATH: TensorBoard folder, verl file-logger .jsonl or console log")
    ap.add_argument("--out", default="plots", help="output folder (default: plots)")
    ap.add_argument("--key", action="append", default=[], help="also plot this metric key (repeatable)")
    ap.add_argument("--panels", nargs="+", default=None, choices=[p.name for p in PANELS],
                    help="default panels to draw (default: all)")
    ap.add_argument("--smooth", type=float, default=0.0, help="EMA smoothing weight in [0, 1)")
    ap.add_argument("--list-keys", action="store_true", help="print each run's metric keys and exit")
    args = ap.parse_args(argv)
    if not 0 <= args.smooth < 1:
        ap.error("--smooth must be in [0, 1)")

    runs: dict[str, Series] = {}
    for arg in args.runs:
        label, path = _parse_run(arg)
        if label in runs:
            label = f"{label}#{len(runs)}"
        try:
            runs[label] = read_run(path)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.list_keys:
        for label, series in runs.items():
            print(f"{label}: {len(series)} keys")
            for k in sorted(series):
                print(f"  {k} ({len(series[k])} points)")
        return 0
    panels = tuple(p for p in PANELS if args.panels is None or p.name in args.panels)
    panels += tuple(Panel(re.sub(r"[^A-Za-z0-9_.-]+", "_", k), k, (k,)) for k in args.key)
    used = plot(runs, args.out, panels=panels, smoothing=args.smooth)
    if not used:
        print("error: none of the requested metrics was found in any run (see --list-keys)", file=sys.stderr)
        return 1
    for name, per_run in used.items():
        print(f"{args.out}/{name}.png: " + ", ".join(f"{r} [{k}]" for r, k in per_run.items()))
    missing = [p.name for p in panels if p.name not in used]
    if missing:
        print(f"no data for: {', '.join(missing)}")
    print(f"{args.out}/metrics.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
