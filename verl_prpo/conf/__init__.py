"""Hydra configs shipped with the plugin: ``prpo_trainer`` (GPU) and ``prpo_trainer_cpu`` (CPU mode)."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
