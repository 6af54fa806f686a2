"""Process group for CPU mode.

verl's workers create their process group with the backend string ``f"cpu:gloo,{device}:{backend}"``
(``verl.utils.distributed.initialize_global_process_group_ray``), which torch rejects when the device is ``cpu``
itself ("Duplicate device type cpu"). verl skips that call when a process group already exists, so in CPU mode the
plugin creates the gloo group itself, as soon as a worker-group process imports verl: verl's ``RayWorkerGroup``
puts ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in every worker's environment, and all ranks of
a group start together, so the rendezvous completes.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

logger = logging.getLogger(__name__)

#: seconds a rank waits for the others at the rendezvous
RENDEZVOUS_TIMEOUT_S = int(os.environ.get("VERL_PRPO_CPU_PG_TIMEOUT", "1800"))


def in_worker_group_process() -> bool:
    env = os.environ
    return env.get("WG_BACKEND") == "ray" and all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def ensure_cpu_process_group() -> bool:
    """Create the default gloo process group in a verl worker-group process; returns True if it created one."""
    import torch.distributed as dist

    if not in_worker_group_process() or not dist.is_available() or dist.is_initialized():
        return False
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    addr = os.environ["MASTER_ADDR"].strip("[]")
    dist.init_process_group(
        backend="gloo",
        init_method=f"tcp://{addr}:{os.environ['MASTER_PORT']}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=RENDEZVOUS_TIMEOUT_S),
    )
    logger.info("verl_prpo CPU mode: gloo process group rank %d/%d", rank, world)
    return True
