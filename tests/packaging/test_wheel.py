"""The wheel holds the plugin and none of the lab: what pip installs is ``verl_prpo`` (code and Hydra configs)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_holds_the_plugin_and_none_of_the_lab(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("verl_prpo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"verl_prpo", next(t for t in top if t.endswith(".dist-info"))}, top
    # the plugin: its registration entry point, the estimators, the PRM and the configs recipes compose
    assert {"verl_prpo/__init__.py", "verl_prpo/trainer.py", "verl_prpo/prm/__init__.py",
            "verl_prpo/conf/prpo_base.yaml", "verl_prpo/conf/prpo_trainer.yaml",
            "verl_prpo/conf/prpo_trainer_cpu.yaml"} <= set(names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "[verl.plugins]" in entry_points and "prpo = verl_prpo" in entry_points
    # none of the lab: testbed, grid, quickstart, tiny assets, toy reward, pinned artefacts
    lab_words = ("testbed", "grid", "quickstart", "tiny", "toy_reward", "pilot", "examples", "credit_assignment")
    assert not [n for n in names if any(w in n for w in lab_words)]
