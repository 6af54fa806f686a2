"""CPU mode for verl 0.9.1: the whole training loop on a machine without a GPU.

Built only from verl's public extension points, never by editing verl:

* ``platform``: a ``cpu`` platform in ``PlatformRegistry`` (gloo, CPU device, logical Ray GPUs as device slots), selected with ``VERL_PLATFORM=cpu``;
* ``engine``: verl's FSDP/FSDP2 engine registered in ``EngineRegistry`` for device ``cpu``;
* ``rollout``: an ``hf`` rollout backend (Hugging Face ``generate`` in a Ray server actor) registered in
  ``RolloutReplicaRegistry`` and ``_ROLLOUT_REGISTRY``, fed with the actor's weights through verl's naive weight sync.

``verl_prpo/config/cpu.yaml`` holds the overrides that switch a run to CPU mode.
"""

CPU_PLATFORM_NAME = "cpu"
#: Ray resource that stands in for accelerators in CPU mode: logical GPUs declared with ``ray.init(num_gpus=N)``
CPU_RAY_RESOURCE = "GPU"
