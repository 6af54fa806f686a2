"""The credit-assignment grid (examples/credit_assignment/grid.py): methods, the cell layout, confidence intervals."""

from __future__ import annotations

import math

from examples.credit_assignment import grid


def test_issue22_diagnostic_methods_are_prpo_with_exactly_their_overrides():
    assert grid.METHODS["prpo_newline"] == ("prpo", ["algorithm.prpo.segmentation=newline"])
    est, ov = grid.METHODS["prpo_released"]
    assert est == "prpo" and ov[0] == "algorithm.prpo.cut_rule=released"
    key, value = ov[1].split("=")
    assert key == "algorithm.prpo.sigma" and float(value) == math.sqrt(1 / 24) and len(ov) == 2
