"""The estimator layer (config, ops, segmentation, estimators) imports and computes with only torch and numpy.

A subprocess blocks ``verl`` (and verl's own dependencies omegaconf, hydra, ray, pandas) with a ``sys.meta_path``
finder, stubs the ``verl_prpo`` package (its ``__init__`` registers everything in verl) and runs the estimators
against numbers computed here from the spec.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "verl_prpo"

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys, types
    BLOCKED = ("verl", "omegaconf", "hydra", "ray", "pandas")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked for this test: {name}")
            return None

    sys.meta_path.insert(0, Block())
    pkg = types.ModuleType("verl_prpo")
    pkg.__path__ = [sys.argv[1]]  # the package's modules, without its __init__
    sys.modules["verl_prpo"] = pkg

    import numpy as np
    import torch
    from verl_prpo import config, ops, segmentation
    from verl_prpo import estimators as E

    assert not any(m.split(".")[0] in BLOCKED for m in sys.modules), sorted(sys.modules)
    mask = torch.ones(2, 30, dtype=torch.long)
    ent = torch.zeros(2, 30)
    ent[:, 12] = 3.0
    seg = segmentation.segment("entropy", mask, entropy=ent, k=1, m=10)
    assert seg.spans(0) == [(0, 12), (12, 30)]
    p = segmentation.broadcast_segment_scores(torch.tensor([[1.0, 0.5], [0.5, 0.5]]), seg.segment_ids)
    rewards = torch.zeros(2, 30)
    rewards[0, -1] = 1.0
    uids = np.array(["a", "a"], dtype=object)
    adv, _ = E.compute_prpo_advantage(rewards, mask, uids, {"prpo": {"sigma": 0.5}}, prm_scores=p)
    # beta = R - mean R = +-0.5; z = (p - 0.5) / 0.5
    assert torch.allclose(adv[0, :12], torch.full((12,), 1.5)) and torch.allclose(adv[1], torch.full((30,), -0.5))
    adv, _ = E.compute_pure_advantage(rewards, mask, uids, {"pure": {"weighting": "none", "whiten": False,
                                      "mask_separator": False, "baseline": "step"}},
                                      prm_scores=p, segment_ids=seg.segment_ids)
    # resp 0: r = [1, 0], q = [0.5, 0], PR = 0.5; resp 1: PR = 0; b_0 = 0, b_1 = 0.25; v = +-1
    assert abs(float(adv[0, 0]) - 1.5) < 1e-6 and abs(float(adv[0, 12]) - 1.0) < 1e-6, adv[0]
    assert abs(float(adv[1, 0]) - (-1.0 - 0.25 * 2)) < 1e-6, adv[1]
    a_out, beta = ops.outcome_advantage(rewards, mask, uids)
    assert torch.allclose(beta, torch.tensor([0.5, -0.5]))
    assert config.from_algorithm_config(None, "pure").temperature == 0.1
    print("ok")
    """
)


def test_estimator_layer_without_verl():
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(PKG)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().endswith("ok")
