"""The plugin's advantage estimators: one module per estimator, each the formula of docs/ALGORITHMS.md in plain
vectorised torch, declared once in the registry (``registry.py``) next to its formula.

    prpo.py      PRPO            prm_avg.py   PRM-Avg (PRPO paper's baseline)
    prl.py       PRL             spro.py      SPRO             pure.py      PURE

Importing this package imports every module in this folder, so a new estimator is one module here (with
``@register_estimator``) plus its option node in ``verl_prpo/conf/prpo_base.yaml`` (docs/DESIGN.md, "Adding an
estimator"). ``verl_prpo.registration`` registers every record in verl's ``ADV_ESTIMATOR_REGISTRY`` when verl loads
its ``core_algos``. Imports without verl (torch and numpy only).
"""

from __future__ import annotations

import importlib
import pkgutil

from verl_prpo.estimators.prpo import compute_prpo_advantage
from verl_prpo.estimators.prl import compute_prl_advantage
from verl_prpo.estimators.spro import compute_spro_advantage
from verl_prpo.estimators.prm_avg import compute_prm_avg_advantage
from verl_prpo.estimators.pure import compute_pure_advantage
from verl_prpo.estimators.registry import ESTIMATORS, EstimatorSpec, estimator_names, get_estimator, register_estimator

for _module in pkgutil.iter_modules(__path__):  # estimators added as a module of their own register themselves
    importlib.import_module(f"{__name__}.{_module.name}")

#: the registered names, in registration order
ESTIMATOR_NAMES: tuple[str, ...] = tuple(ESTIMATORS)

__all__ = [
    "ESTIMATORS",
    "ESTIMATOR_NAMES",
    "EstimatorSpec",
    "register_estimator",
    "get_estimator",
    "estimator_names",
    "compute_prpo_advantage",
    "compute_prm_avg_advantage",
    "compute_prl_advantage",
    "compute_spro_advantage",
    "compute_pure_advantage",
]
