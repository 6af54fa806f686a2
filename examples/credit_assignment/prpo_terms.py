"""The size of PRPO's two advantage terms on the grid's real batches (issue 22).

PRPO's advantage of a token is ``A = z + beta``: ``z = (p - mu) / sigma`` of its segment's PRM score with the fixed
prior (mu = 0.5, sigma = sqrt(1/12)), and ``beta = R - mean_G R`` the outcome shift (R = +1 / -1). The prior assumes
the PRM's scores centre at 0.5; a PRM that scores most segments near 1 makes ``z`` a large positive constant on
every token, which the (group-centred, zero-mean) outcome shift cannot cancel. The estimator logs, per training
step, ``prpo/z/mean`` (token mean of z), ``prpo/abs_beta/mean`` (response mean of |beta|) and
``prpo/prm_score/mean``; this module reads them from the cells' ``metrics.jsonl`` and tabulates them per method
(mean over seeds, first step, last step, and over all steps) with a plot over training.

    python -m examples.credit_assignment.prpo_terms --work /work/grid_v3/work [--out benchmarks/results/prpo_terms]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from verl_prpo.cpu.launch import read_metrics

KEYS = ("prpo/z/mean", "prpo/abs_beta/mean", "prpo/prm_score/mean", "prpo/prm_score/std", "critic/score/mean",
        "prpo/segments_per_response/mean")


def collect(work: Path) -> dict[str, dict[int, list[dict]]]:
    """method -> seed -> per-step records (only the keys above) of every finished cell that logged PRPO's terms."""
    out: dict[str, dict[int, list[dict]]] = {}
    for cell in sorted(Path(work).glob("*_s*")):
        if not (cell / "train_done.json").exists():
            continue
        method, _, seed = cell.name.rpartition("_s")
        recs = [{"step": r["step"], **{k: r["data"][k] for k in KEYS if k in r["data"]}}
                for r in read_metrics(cell / "metrics.jsonl")]
        if recs and "prpo/z/mean" in recs[0]:
            out.setdefault(method, {})[int(seed)] = recs
    return out


def summarise(data: dict[str, dict[int, list[dict]]]) -> dict:
    """Per method: the seeds, and for each key its mean over seeds at the first step, the last step and over all
    steps; and ``z_over_abs_beta`` (mean z / mean |beta| over all steps)."""
    res = {}
    for method, seeds in data.items():
        entry = {"seeds": sorted(seeds)}
        for key in KEYS:
            per_seed = [[r[key] for r in recs if key in r] for recs in seeds.values()]
            per_seed = [v for v in per_seed if v]
            if not per_seed:
                continue
            entry[key] = {"first": statistics.mean(v[0] for v in per_seed),
                          "last": statistics.mean(v[-1] for v in per_seed),
                          "all_steps": statistics.mean(statistics.mean(v) for v in per_seed)}
        z, b = entry["prpo/z/mean"]["all_steps"], entry["prpo/abs_beta/mean"]["all_steps"]
        entry["z_over_abs_beta"] = z / b if b else None
        res[method] = entry
    return res


def curves(data: dict[str, dict[int, list[dict]]], key: str) -> dict[str, list[tuple[int, float]]]:
    """method -> [(step, mean over seeds)]."""
    out = {}
    for method, seeds in data.items():
        steps = sorted({r["step"] for recs in seeds.values() for r in recs})
        out[method] = [(s, statistics.mean(r[key] for recs in seeds.values() for r in recs
                                           if r["step"] == s and key in r)) for s in steps]
    return out


def markdown(summary: dict) -> str:
    lines = ["| method | seeds | z mean (step 1 -> 20; all steps) | abs(beta) mean (step 1 -> 20; all) | "
             "z / abs(beta) | PRM score mean (step 1 -> 20) | PRM score std | train reward (step 1 -> 20) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for m, e in summary.items():
        f = lambda key: (f"{e[key]['first']:+.2f} -> {e[key]['last']:+.2f}" if key in e else "-")  # noqa: E731
        lines.append(f"| {m} | {','.join(map(str, e['seeds']))} | {f('prpo/z/mean')}; "
                     f"{e['prpo/z/mean']['all_steps']:+.2f} | {f('prpo/abs_beta/mean')}; "
                     f"{e['prpo/abs_beta/mean']['all_steps']:.2f} | "
                     f"{e['z_over_abs_beta']:+.2f} | {f('prpo/prm_score/mean')} | "
                     f"{e.get('prpo/prm_score/std', {}).get('all_steps', float('nan')):.2f} | "
                     f"{f('critic/score/mean')} |")
    return "\n".join(lines) + "\n"


def plot(data, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for ax, (key, title) in zip(axes, (("prpo/z/mean", "z (token mean)"), ("prpo/abs_beta/mean", "|beta| (mean)"),
                                       ("prpo/prm_score/mean", "PRM score (mean)"))):
        for method, pts in curves(data, key).items():
            ax.plot(*zip(*pts), marker="o", ms=2, label=method)
        ax.set(title=title, xlabel="training step")
    axes[0].axhline(0, color="grey", lw=0.5)
    axes[0].legend(fontsize=7)
    fig.suptitle("PRPO's advantage terms on the grid's batches (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="the grid's work folder (<work>/<method>_s<seed>/metrics.jsonl)")
    p.add_argument("--out", default="benchmarks/results/prpo_terms")
    args = p.parse_args(argv)
    data = collect(Path(args.work))
    if not data:
        raise SystemExit(f"no finished PRPO cell with prpo/z/mean in {args.work}")
    summary = summarise(data)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"summary": summary, "curves": {
        key: curves(data, key) for key in ("prpo/z/mean", "prpo/abs_beta/mean", "prpo/prm_score/mean")}}, indent=1))
    out.with_suffix(".md").write_text(markdown(summary))
    plot(data, out.with_suffix(".png"))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
