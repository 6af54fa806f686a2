"""A verl worker group that runs the PRM.

verl 0.9.1 has no per-step reward-model path (its reward models are HTTP servers returning one scalar), so the
PRM gets its own worker group: ``PRMWorker`` is a ``verl.single_controller.base.Worker`` driven by a
``RayWorkerGroup``; ``compute_prm_scores`` is registered with ``Dispatch.DP_COMPUTE_PROTO`` so the controller's
``DataProto`` is split across the ranks and the results are concatenated back.

Device and sharding (decided in ``init_model``):

* CUDA available: the model is loaded in ``prm.dtype`` (bf16 by default) on the worker's GPU. With more than one
  rank (``fsdp="auto"``) it is wrapped with FSDP2 ``fully_shard`` (every decoder layer, then the root) over an
  NCCL process group; ``prm.param_offload`` then uses FSDP2's ``CPUOffloadPolicy``. With one rank and
  ``param_offload`` the parameters are moved to the GPU for each scoring call and back to CPU afterwards.
  Because FSDP gathers parameters collectively, the ranks agree on the number of forwards of every call
  (an all-reduce MAX); a rank with fewer packed batches runs one-token dummy forwards.
* CPU only: plain float32, no sharding, no offload: every rank holds a full copy (the tiny test PRMs). Passing
  ``fsdp="always"`` shards on CPU too (gloo), which exercises the synchronised-forward logic in tests.

Input ``DataProto``: batch ``responses`` (B, L) long, ``response_mask`` (B, L), ``prm_segment_ids`` (B, L) long
(-1 outside the mask), non-tensor ``question`` (B,) object array of str; optional ``meta_info["prior_mean"]``
(the fallback score of segments beyond ``prm.max_length``, default 0.5).
Output ``DataProto``: batch ``prm_scores`` (B, L) float32 and per-row counters ``prm_num_segments``,
``prm_truncated_segments``, ``prm_truncated_question``, ``prm_tokens`` (B,) long. Per-rank model-call counts go
into ``meta_info["metrics"]`` (which ``DataProto.concat`` gathers into lists); nothing else rank-specific is put in
``meta_info`` because ``DataProto.concat`` asserts it is identical across ranks.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from verl.protocol import DataProto
from verl.single_controller.base import Worker
from verl.single_controller.base.decorator import Dispatch, register

from verl_prpo.prm.config import PRMConfig

logger = logging.getLogger(__name__)

#: per-row counters returned next to ``prm_scores``
ROW_STAT_KEYS = ("prm_num_segments", "prm_truncated_segments", "prm_truncated_question", "prm_tokens")


class PRMWorker(Worker):
    """Scores segmented responses with a PRM (see the module docstring)."""

    def __init__(self, prm_config: dict | PRMConfig, policy_tokenizer_path: str, fsdp: str = "auto") -> None:
        super().__init__()
        self.config = PRMConfig.from_config(prm_config)
        if self.config.model_path is None:
            raise ValueError("prm.model_path is required to start the PRM worker group")
        if fsdp not in ("auto", "never", "always"):
            raise ValueError(f"fsdp must be auto, never or always, got {fsdp!r}")
        self.policy_tokenizer_path = policy_tokenizer_path
        self.fsdp_mode = fsdp
        self.adapter = None
        self.policy_tokenizer = None
        self.sharded = False
        self.device = None

    # ------------------------------------------------------------------ setup
    def _init_process_group(self, backend: str) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend=backend, rank=self.rank, world_size=self.world_size)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self) -> dict[str, Any]:
        from transformers import AutoTokenizer

        from verl_prpo.prm.adapters import load_prm

        use_cuda = torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
        self.sharded = self.fsdp_mode == "always" or (self.fsdp_mode == "auto" and use_cuda and self.world_size > 1)
        offload = bool(self.config.param_offload) and use_cuda
        self.policy_tokenizer = AutoTokenizer.from_pretrained(self.policy_tokenizer_path,
                                                              trust_remote_code=self.config.trust_remote_code)
        # unsharded + offload: keep the weights on CPU until a scoring call
        load_device = torch.device("cpu") if (offload or self.sharded) else self.device
        adapter = load_prm(self.config, load_device)
        if self.sharded:
            self._init_process_group("nccl" if use_cuda else "gloo")
            self._shard(adapter.model, offload=offload)
        adapter.device = self.device
        self._offload = offload and not self.sharded
        self.adapter = adapter
        return self.describe()

    @register(dispatch_mode=Dispatch.ALL_TO_ALL)
    def describe(self) -> dict[str, Any]:
        """This rank's setup: device, sharding, adapter kind and separator, local parameter elements."""
        local = 0
        if self.adapter is not None:
            for p in self.adapter.model.parameters():
                local += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
        return {"rank": self.rank, "world_size": self.world_size, "device": str(self.device),
                "sharded": self.sharded, "param_offload": bool(getattr(self, "_offload", False)),
                "adapter": getattr(self.adapter, "kind", None),
                "step_separator": getattr(self.adapter, "step_separator", None), "local_param_numel": local}

    def _shard(self, model: torch.nn.Module, *, offload: bool) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(self.device.type, (self.world_size,))
        kw: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": True}
        if self.device.type == "cuda":
            dtype = next(model.parameters()).dtype
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        if offload:
            kw["offload_policy"] = CPUOffloadPolicy(pin_memory=True)
        layer_names = set(getattr(model, "_no_split_modules", None) or [])
        layers = [m for m in model.modules() if type(m).__name__ in layer_names]
        for layer in layers:
            fully_shard(layer, **kw)
        fully_shard(model, **kw)
        if not offload and self.device.type == "cuda":
            model.to(self.device)
        logger.info("PRM sharded with FSDP2 over %d ranks (%d layers, offload=%s)", self.world_size, len(layers),
                    offload)

    def _sync_num_forwards(self, n: int) -> int:
        import torch.distributed as dist

        t = torch.tensor([n], dtype=torch.long, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    # ------------------------------------------------------------------ scoring
    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def compute_prm_scores(self, data: DataProto) -> DataProto:
        from verl_prpo.prm.scoring import score_batch

        if self.adapter is None:
            raise RuntimeError("PRMWorker.init_model() must be called before compute_prm_scores")
        responses = data.batch["responses"]
        response_mask = data.batch["response_mask"]
        segment_ids = data.batch["prm_segment_ids"]
        questions = [str(q) for q in data.non_tensor_batch["question"].tolist()]
        prior_mean = float(data.meta_info.get("prior_mean", 0.5))
        if self._offload:
            self.adapter.model.to(self.device)
        try:
            scores, stats = score_batch(
                self.adapter, self.policy_tokenizer, responses, response_mask, segment_ids, questions,
                prior_mean=prior_mean, sync_num_forwards=self._sync_num_forwards if self.sharded else None,
            )
        finally:
            if self._offload:
                self.adapter.model.to("cpu")
                torch.cuda.empty_cache()
        per = stats["per_response"]
        tensors = {
            "prm_scores": scores,
            "prm_num_segments": torch.tensor(per["num_segments"], dtype=torch.long),
            "prm_truncated_segments": torch.tensor(per["truncated_segments"], dtype=torch.long),
            "prm_truncated_question": torch.tensor(per["truncated_questions"], dtype=torch.long),
            "prm_tokens": torch.tensor(per["prm_tokens"], dtype=torch.long),
        }
        metrics = {"prm_model_calls": stats["model_calls"], "prm_dummy_model_calls": stats["dummy_model_calls"]}
        return DataProto.from_dict(tensors=tensors, meta_info={"metrics": metrics})


# ---------------------------------------------------------------------------------------------------- driver side
def make_cpu_resource_pool(n_workers: int, name_prefix: str | None = None):
    """A CPU-only pool: ``n_workers`` bundles of one CPU each, no GPU (``max_colocate_count=1`` keeps it small)."""
    from verl.single_controller.ray import RayResourcePool

    return RayResourcePool(process_on_nodes=[int(n_workers)], use_gpu=False, max_colocate_count=1,
                           name_prefix=name_prefix)


def make_prm_resource_pool(prm_config: PRMConfig, name_prefix: str = "prm_pool"):
    """The PRM's own GPU pool (``placement=own_pool``): ``nnodes`` x ``n_gpus_per_node`` GPUs."""
    from verl.single_controller.ray import RayResourcePool

    cfg = PRMConfig.from_config(prm_config)
    return RayResourcePool(process_on_nodes=[cfg.n_gpus_per_node] * cfg.nnodes, use_gpu=True,
                           max_colocate_count=1, name_prefix=name_prefix)


def create_prm_worker_group(prm_config, policy_tokenizer_path: str, resource_pool, *, fsdp: str = "auto",
                            name_prefix: str | None = None, init: bool = True):
    """Create the ``PRMWorker`` group on ``resource_pool`` (and call ``init_model`` unless ``init=False``).

    ``prm_config`` may be a ``PRMConfig``, a dict or an OmegaConf node. For a colocated PRM pass the actor's pool
    (verl shares a bundle's GPU between worker groups by fractional GPU requests); for ``own_pool`` pass
    ``make_prm_resource_pool(cfg)``; without GPUs pass ``make_cpu_resource_pool(n)``.
    """
    import ray
    from verl.single_controller.ray import RayClassWithInitArgs, RayWorkerGroup
    from verl.utils.device import get_device_name

    cfg = PRMConfig.from_config(prm_config)
    cls = RayClassWithInitArgs(cls=ray.remote(PRMWorker), prm_config=cfg.to_dict(),
                               policy_tokenizer_path=str(policy_tokenizer_path), fsdp=fsdp)
    # device_name only selects profiling options and the placement-group sanity message; keep it the platform's
    wg = RayWorkerGroup(resource_pool=resource_pool, ray_cls_with_init=cls, name_prefix=name_prefix,
                        device_name=get_device_name())
    if init:
        wg.init_model()
    return wg


def compute_prm_scores_with_group(worker_group, responses: torch.Tensor, response_mask: torch.Tensor,
                                  segment_ids: torch.Tensor, questions, prior_mean: float = 0.5
                                  ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Score a batch with a ``PRMWorker`` group; returns ``(prm_scores (B, L) float32, stats)`` like ``score_batch``.

    Pads the batch to a multiple of the group's world size (repeating the last row) and removes the padding.
    """
    from verl.protocol import pad_dataproto_to_divisor, unpad_dataproto

    questions = list(questions)
    B = responses.shape[0]
    if len(questions) != B:
        raise ValueError(f"{len(questions)} questions for {B} responses")
    if B == 0:
        return torch.zeros(responses.shape, dtype=torch.float32), {
            "truncated_segments": 0, "truncated_questions": 0, "prm_tokens": 0, "segments": 0, "responses": 0,
            "model_calls": 0, "dummy_model_calls": 0, "response_tokens": 0, "tokens_per_response_token": 0.0}
    data = DataProto.from_dict(
        tensors={"responses": responses.long().cpu(), "response_mask": response_mask.cpu(),
                 "prm_segment_ids": segment_ids.long().cpu()},
        non_tensors={"question": np.array(questions, dtype=object)},
        meta_info={"prior_mean": float(prior_mean)},
    )
    padded, pad = pad_dataproto_to_divisor(data, worker_group.world_size)
    out = worker_group.compute_prm_scores(padded)
    metrics = out.meta_info.get("metrics") or {}
    calls = metrics.get("prm_model_calls", [])
    dummies = metrics.get("prm_dummy_model_calls", [])
    out = unpad_dataproto(out, pad)
    scores = out.batch["prm_scores"].to(torch.float32)
    prm_tokens = int(out.batch["prm_tokens"].sum())
    response_tokens = int(response_mask.bool().sum())
    stats = {
        "truncated_segments": int(out.batch["prm_truncated_segments"].sum()),
        "truncated_questions": int(out.batch["prm_truncated_question"].sum()),
        "prm_tokens": prm_tokens,
        "segments": int(out.batch["prm_num_segments"].sum()),
        "responses": B,
        "model_calls": int(sum(calls if isinstance(calls, list) else [calls])),
        "dummy_model_calls": int(sum(dummies if isinstance(dummies, list) else [dummies])),
        "response_tokens": response_tokens,
        "tokens_per_response_token": prm_tokens / response_tokens if response_tokens else 0.0,
    }
    return scores, stats
