"""scripts/results_grid.py: claims with verdicts from a results file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

spec = importlib.util.spec_from_file_location("results_grid", Path(__file__).resolve().parents[2] / "scripts" /
                                              "results_grid.py")
rg = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rg)


def _run(method, seed, c0, c1):
    return {"method": method, "seed": seed, "eval": [{"correct_counts": list(c0)}, {"correct_counts": list(c1)}]}


def test_claims_table_verdicts_and_missing_cells(tmp_path):
    base = np.array([1, 2, 0, 3] * 50)
    runs = []
    for s in (0, 1, 2):
        runs.append(_run("grpo", s, base, base + 1))  # +25 points every seed
        runs.append(_run("prpo", s, base, base))  # no change
    res = {"runs": runs, "evaluation": {"k": 4}, "missing": ["pure_s0"]}
    table = rg.claims_table(res)
    prpo_vs_grpo = [ln for ln in table.splitlines() if ln.startswith("| PRPO beats GRPO")][0]
    assert "-25.0" in prpo_vs_grpo and "**contradicted**" in prpo_vs_grpo
    assert "not measured yet" in [ln for ln in table.splitlines() if "PURE (min-form) beats PRPO" in ln][0]
    doc = tmp_path / "R.md"
    doc.write_text(f"# top\n{rg.BEGIN}\nold\n{rg.END}\ntail\n")
    text = doc.read_text()
    new = rg.block(res, "| table |\n")
    assert "| table |" in new
    # missing cells are the grid's (every method but the post-hoc ones, seeds 0-2), not the last invocation's
    missing = rg.missing_cells(res)
    assert "pure_s0" in missing and "grpo_s0" not in missing and "prpo_s2" not in missing
    assert not any(c.startswith("prpo_newline_relative_norm") for c in missing)
    assert f"Missing cells ({len(missing)}): " in new
    assert text.index(rg.BEGIN) < text.index(rg.END)


def test_post_hoc_comparisons_get_their_own_table_after_the_claims():
    base = np.array([1, 2, 0, 3] * 50)
    runs = [_run(m, s, base, base + d) for s in (0, 1, 2) for m, d in (("grpo", 0), ("prpo_newline", 1))]
    new = rg.block({"runs": runs, "evaluation": {"k": 4}, "missing": []}, "| table |\n")
    pre, post = new.split("**Comparisons added after seeing results**")
    assert "| PRPO beats GRPO (PRPO paper) |" in pre and "paragraph segments beats GRPO" not in pre
    line = [ln for ln in post.splitlines() if ln.startswith("| PRPO with paragraph segments beats GRPO")][0]
    assert "+25.0" in line and "**supported**" in line
