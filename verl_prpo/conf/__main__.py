"""``python -m verl_prpo.conf`` prints the folder to pass as ``--config-path`` to ``verl.trainer.main_ppo``."""

from verl_prpo.conf import CONFIG_DIR

print(CONFIG_DIR)
