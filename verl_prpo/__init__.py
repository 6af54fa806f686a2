"""verl-prpo: process-reward reinforcement learning for verl.

The plugin registers, in verl's own registries:

* the advantage estimators of ``verl_prpo.estimators`` (one module each; ``ESTIMATOR_NAMES`` lists them);
* the V1 trainer mode ``prpo_sync`` (``verl_prpo.trainer``);
* the reward-loop manager ``prpo`` (``verl_prpo.reward_manager``);
* the CPU platform, engine and rollout backend (``verl_prpo.cpu``).

verl imports it automatically in every process through the ``verl.plugins`` entry point. Importing it costs
almost nothing: each name is registered when verl imports the module that owns its registry
(``verl_prpo.registration``), so a Ray worker that never builds a trainer never loads the trainer. Without verl
installed it imports nothing else (the torch-only parts: PRM adapters, estimator math, ``benchmarks/gpu_check.py``).
"""

__version__ = "0.1.0"

from verl_prpo import registration as _registration  # noqa: E402

_registration.register_all()
