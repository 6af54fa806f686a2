"""verl-prpo: process-reward reinforcement learning for verl.

Importing this package registers, in verl's own registries:

* advantage estimators ``prpo``, ``prl``, ``spro``, ``prm_avg`` (``verl_prpo.estimators``);
* the V1 trainer mode ``prpo_sync`` (``verl_prpo.trainer``);
* the reward-loop manager ``prpo`` (``verl_prpo.reward_manager``);
* the CPU platform, engine and rollout backend (``verl_prpo.cpu``).

verl imports it automatically in every process through the ``verl.plugins`` entry point.
"""

__version__ = "0.1.0"

from verl_prpo import registration as _registration  # noqa: E402

_registration.register_all()
