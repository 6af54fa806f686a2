"""A verl worker group that runs the PRM.

verl 0.9.1 has no per-step reward-model path (its reward models are HTTP servers returning one scalar), so the
PRM gets its own worker group: ``PRMWorker`` is a ``verl.single_controller.base.Worker`` driven by a
``RayWorkerGroup``; ``compute_prm_scores`` is registered with ``Dispatch.DP_COMPUTE_PROTO`` so the controller's
``DataProto`` is split across the ranks and the results are concatenated back.

Placement, sharding and dtype (decided in ``init_model``; ``plan_placement`` is the rule):

* CUDA available: the PRM computes in ``prm.dtype`` (bf16 by default) on the worker's GPU; weights are loaded in
  that dtype even when they first land in host memory (offload, sharding). ``prm.sharding=auto`` keeps one full
  copy per GPU when the weights take at most ``prm.replica_memory_fraction`` of the GPU's memory, and otherwise
  shards with FSDP2 *within each node* (HSDP: gathers stay on the node's interconnect, nodes hold replicas).
  A sharded PRM is materialised from a single host copy on rank 0 (the other ranks build it on the ``meta``
  device and receive their shards), so no rank holds a full float32 host copy.
  ``prm.param_offload`` keeps the weights in pinned host memory between scoring calls (unsharded: the frozen
  parameters are copied to the GPU per call and dropped afterwards; sharded: FSDP2's ``CPUOffloadPolicy`` with
  pinned memory). After every scoring call the PRM's GPU memory is released: a sharded model is resharded (FSDP2
  keeps the root's parameters gathered after a forward otherwise) and the CUDA cache is emptied.
  Because FSDP gathers parameters collectively, the ranks agree on the number of forwards of every call
  (an all-reduce MAX); a rank with fewer packed batches runs one-token dummy forwards. A rank whose scoring fails
  completes the agreed forwards, then every rank raises (an all-reduced error flag): no rank raises alone while
  the others wait in a collective.
* CPU only: plain float32, no offload; every rank holds a full copy (the tiny test PRMs). ``fsdp="always"``
  shards on CPU too (gloo), which exercises the sharded code path in tests.

Input ``DataProto``: batch ``responses`` (B, L) long, ``response_mask`` (B, L), ``prm_segment_ids`` (B, L) long
(-1 outside the mask), non-tensor ``question`` (B,) object array of str; optional ``meta_info["prior_mean"]``
(the fallback score of segments beyond ``prm.max_length``, default 0.5) and ``meta_info["stop_token_ids"]`` (ids
that end a response besides the policy tokenizer's own: the generation config's EOS).
Output ``DataProto``: batch ``prm_scores`` (B, L) float32, ``prm_step_ids`` (B, L) long (the PRM step of every
valid token, merged segments sharing their step's id) and per-row counters ``prm_num_segments`` (steps scored),
``prm_truncated_segments``, ``prm_truncated_question``, ``prm_tokens``, ``prm_special_tokens_removed``,
``prm_run_on_tokens``, ``prm_merged_segments``, ``prm_empty_response`` (B,) long (``prm.scoring.SegmentTexts``). Per-rank model-call counts go
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

#: fault injection for the failure-path test: the PRM rank with this number raises in ``compute_prm_scores``, as a
#: rank that rejects its rows does, while the others stay healthy (tests/system/test_world_size_2.py)
FAULT_ENV = "VERL_PRPO_PRM_FAIL_RANK"

#: per-row counters returned next to ``prm_scores``
ROW_STAT_KEYS = ("prm_num_segments", "prm_truncated_segments", "prm_truncated_question", "prm_tokens",
                 "prm_special_tokens_removed", "prm_run_on_tokens", "prm_merged_segments", "prm_empty_response")


def plan_placement(*, sharding: str, use_cuda: bool, world_size: int, ranks_per_node: int, param_bytes: int,
                   device_memory_bytes: int | None, replica_memory_fraction: float) -> dict[str, Any]:
    """Where the PRM's weights live: one full copy per rank, or FSDP2 shards within each node.

    ``sharding``: ``auto`` | ``replicate`` | ``shard`` (``prm.sharding``; the worker's ``fsdp`` argument maps
    ``never``/``always`` onto the last two). ``auto`` shards only on CUDA, with more than one rank per node, when
    ``param_bytes > replica_memory_fraction * device_memory_bytes``.
    Returns ``{"sharded": bool, "shard_group_size": int, "replicas": int, "reason": str}``.
    """
    if world_size % ranks_per_node:
        raise ValueError(f"PRM worker group: {world_size} ranks are not a whole number of nodes of {ranks_per_node}")
    if sharding == "replicate" or world_size == 1 and sharding != "shard":
        return {"sharded": False, "shard_group_size": 1, "replicas": world_size, "reason": "one full copy per rank"}
    if sharding == "auto":
        if not use_cuda:
            return {"sharded": False, "shard_group_size": 1, "replicas": world_size, "reason": "CPU: full copies"}
        budget = replica_memory_fraction * float(device_memory_bytes or 0)
        if param_bytes <= budget or ranks_per_node == 1:
            why = "fits" if param_bytes <= budget else "one rank per node (sharding would cross nodes)"
            return {"sharded": False, "shard_group_size": 1, "replicas": world_size,
                    "reason": f"{param_bytes / 2**30:.1f} GiB of weights, budget {budget / 2**30:.1f} GiB: {why}"}
    elif sharding != "shard":
        raise ValueError(f"prm.sharding must be auto, replicate or shard, got {sharding!r}")
    return {"sharded": True, "shard_group_size": ranks_per_node, "replicas": world_size // ranks_per_node,
            "reason": f"sharded within each node over {ranks_per_node} ranks"}


def _is_pinned(t: torch.Tensor) -> bool:
    try:
        return bool(t.is_pinned())
    except RuntimeError:  # no accelerator runtime
        return False


_FSDP_TO_SHARDING = {"never": "replicate", "always": "shard"}


def scores_to_proto(scores: torch.Tensor, stats: dict[str, Any]) -> DataProto:
    """``score_batch``'s ``(prm_scores, stats)`` as the output ``DataProto`` of ``compute_prm_scores`` (module
    docstring): the scores, the per-row counters ``ROW_STAT_KEYS`` and the model-call counts in ``meta_info``.
    Shared by ``PRMWorker`` and the vLLM backend's group (``verl_prpo.prm.vllm_backend``)."""
    per = stats["per_response"]
    tensors = {
        "prm_scores": scores,
        "prm_step_ids": stats["step_ids"],
        "prm_num_segments": torch.tensor(per["num_segments"], dtype=torch.long),
        "prm_truncated_segments": torch.tensor(per["truncated_segments"], dtype=torch.long),
        "prm_truncated_question": torch.tensor(per["truncated_questions"], dtype=torch.long),
        "prm_tokens": torch.tensor(per["prm_tokens"], dtype=torch.long),
        "prm_special_tokens_removed": torch.tensor(per["special_tokens_removed"], dtype=torch.long),
        "prm_run_on_tokens": torch.tensor(per["run_on_tokens"], dtype=torch.long),
        "prm_merged_segments": torch.tensor(per["merged_segments"], dtype=torch.long),
        "prm_empty_response": torch.tensor(per["empty_responses"], dtype=torch.long),
    }
    metrics = {"prm_model_calls": stats["model_calls"], "prm_dummy_model_calls": stats["dummy_model_calls"]}
    return DataProto.from_dict(tensors=tensors, meta_info={"metrics": metrics})


class PRMWorker(Worker):
    """Scores segmented responses with a PRM (see the module docstring)."""

    def __init__(self, prm_config: dict | PRMConfig, policy_tokenizer_path: str, fsdp: str | None = None) -> None:
        super().__init__()
        self.config = PRMConfig.from_config(prm_config)
        if self.config.model_path is None:
            raise ValueError("prm.model_path is required to start the PRM worker group")
        if fsdp not in (None, "auto", "never", "always"):
            raise ValueError(f"fsdp must be auto, never or always, got {fsdp!r}")
        # fsdp (tests, callers) overrides prm.sharding
        self.sharding = self.config.sharding if fsdp is None else _FSDP_TO_SHARDING.get(fsdp, "auto")
        self.policy_tokenizer_path = policy_tokenizer_path
        self.adapter = None
        self.policy_tokenizer = None
        self.sharded = False
        self.device = None
        self.dtype = None
        self.plan: dict[str, Any] = {}
        self._offload = False
        self._host_params: list[torch.Tensor] = []
        self.memory_releases = 0
        self.host_full_copy = False  # this rank materialised the whole model in host memory

    # ------------------------------------------------------------------ setup
    def _init_process_group(self, backend: str) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend=backend, rank=self.rank, world_size=self.world_size)

    def _ranks_per_node(self) -> int:
        # verl's RayWorkerGroup sets RAY_LOCAL_WORLD_SIZE to the bundles per node of the resource pool
        n = int(os.environ.get("RAY_LOCAL_WORLD_SIZE", self.world_size) or self.world_size)
        return max(1, min(n, self.world_size))

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self) -> dict[str, Any]:
        from transformers import AutoTokenizer

        from verl_prpo.prm.adapters import (
            build_empty_model,
            compute_dtype,
            load_model,
            load_model_config,
            load_tokenizer,
            make_adapter,
            resolve_adapter_kind,
        )

        cfg = self.config
        use_cuda = torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
        self.dtype = compute_dtype(cfg.dtype, self.device)  # the compute device decides, not the load device
        self.policy_tokenizer = AutoTokenizer.from_pretrained(self.policy_tokenizer_path,
                                                              trust_remote_code=cfg.trust_remote_code)
        model_config = load_model_config(cfg)
        tokenizer = load_tokenizer(cfg, model_config)
        kind = resolve_adapter_kind(cfg, model_config, tokenizer)
        skeleton = build_empty_model(cfg, kind, model_config, self.dtype)
        param_bytes = sum(p.numel() * p.element_size() for p in skeleton.parameters())
        self.plan = plan_placement(
            sharding=self.sharding, use_cuda=use_cuda, world_size=self.world_size,
            ranks_per_node=self._ranks_per_node(), param_bytes=param_bytes,
            device_memory_bytes=torch.cuda.get_device_properties(self.device).total_memory if use_cuda else None,
            replica_memory_fraction=cfg.replica_memory_fraction)
        self.plan["param_bytes"] = int(param_bytes)
        self.sharded = self.plan["sharded"]
        offload = bool(cfg.param_offload) and use_cuda
        if self.sharded:
            self._init_process_group("nccl" if use_cuda else "gloo")
            model = self._load_sharded(cfg, kind, model_config, skeleton, offload=offload)
        else:
            del skeleton
            # offloaded: weights in host memory (in the compute dtype) until a scoring call
            model = load_model(cfg, kind, torch.device("cpu") if offload else self.device, model_config,
                               dtype=self.dtype)
            self.host_full_copy = offload or self.device.type == "cpu"
            if offload:
                self._pin_host_params(model)
        self._offload = offload and not self.sharded
        self.adapter = make_adapter(cfg, model, tokenizer, kind=kind, device=self.device, model_config=model_config)
        logger.info("PRM rank %d: %s, %s on %s (%s)", self.rank, kind, self.dtype, self.device, self.plan["reason"])
        return self.describe()

    def _pin_host_params(self, model: torch.nn.Module) -> None:
        """Unsharded offload: parameters stay in pinned host memory; buffers (rotary tables) live on the GPU."""
        self._host_params = []
        for p in model.parameters():
            p.data = p.data.pin_memory()
            self._host_params.append(p.data)
        for module in model.modules():
            for name, buf in module._buffers.items():
                if buf is not None:
                    module._buffers[name] = buf.to(self.device)

    def _params_to_device(self) -> None:
        for p, host in zip(self.adapter.model.parameters(), self._host_params):
            p.data = host.to(self.device, non_blocking=True)

    def _params_to_host(self) -> None:
        # the PRM is frozen: the host copy is still exact, nothing is copied back
        for p, host in zip(self.adapter.model.parameters(), self._host_params):
            p.data = host

    def _load_sharded(self, cfg: PRMConfig, kind: str, model_config, skeleton: torch.nn.Module, *,
                      offload: bool) -> torch.nn.Module:
        """FSDP2 model whose shards come from one host copy on rank 0 (the others start from ``skeleton``)."""
        import torch.distributed as dist
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        from verl_prpo.prm.adapters import load_model

        if self.rank == 0:
            model = load_model(cfg, kind, torch.device("cpu"), model_config, dtype=self.dtype)
            self.host_full_copy = True
            full_state = model.state_dict()
        else:
            model, full_state = skeleton, {}
        self._shard(model, offload=offload)
        if self.rank == 0:
            model.to(self.device)
        else:
            model.to_empty(device=self.device)
        set_model_state_dict(model, full_state, options=StateDictOptions(
            full_state_dict=True, broadcast_from_rank0=True, cpu_offload=offload))
        del full_state
        # non-persistent buffers (rotary tables) are not in the state dict: rank 0's are the real ones
        for _, buf in sorted(model.named_buffers(), key=lambda kv: kv[0]):
            dist.broadcast(buf, src=0)
        if offload:
            model.to("cpu")
            for module in model.modules():
                for name, buf in module._buffers.items():
                    if buf is not None:
                        module._buffers[name] = buf.to(self.device)
        return model

    @register(dispatch_mode=Dispatch.ALL_TO_ALL)
    def describe(self) -> dict[str, Any]:
        """This rank's setup: device, dtype, placement plan, adapter kind and separator, local parameter elements,
        parameters currently gathered (0 for a sharded PRM between calls), memory releases so far."""
        local, gathered, dtypes, pinned = 0, 0, set(), True
        if self.adapter is not None:
            for p in self.adapter.model.parameters():
                if hasattr(p, "to_local"):
                    t = p.to_local()
                    local += t.numel()
                else:
                    t = p
                    local += p.numel()
                    gathered += p.numel() if self.sharded else 0
                dtypes.add(str(t.dtype))
                pinned = pinned and (t.device.type != "cpu" or not self._offload or _is_pinned(t))
        return {"rank": self.rank, "world_size": self.world_size, "device": str(self.device),
                "dtype": str(self.dtype), "param_dtypes": sorted(dtypes), "sharded": self.sharded,
                "plan": dict(self.plan), "param_offload": bool(self.config.param_offload) and torch.cuda.is_available(),
                "host_params_pinned": pinned, "adapter": getattr(self.adapter, "kind", None),
                "step_separator": getattr(self.adapter, "step_separator", None), "local_param_numel": local,
                "gathered_param_numel": gathered, "memory_releases": self.memory_releases,
                "host_full_copy": self.host_full_copy}

    def _shard(self, model: torch.nn.Module, *, offload: bool) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        per_node = self.plan.get("shard_group_size", self.world_size)
        nodes = self.world_size // per_node
        if nodes > 1:  # HSDP: replicate across nodes, shard within a node
            mesh = init_device_mesh(self.device.type, (nodes, per_node), mesh_dim_names=("replicate", "shard"))
        else:
            mesh = init_device_mesh(self.device.type, (per_node,))
        kw: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": True}
        if self.device.type == "cuda":
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=self.dtype, reduce_dtype=torch.float32)
        if offload:
            kw["offload_policy"] = CPUOffloadPolicy(pin_memory=True)
        layer_names = set(getattr(model, "_no_split_modules", None) or [])
        layers = [m for m in model.modules() if type(m).__name__ in layer_names]
        for layer in layers:
            fully_shard(layer, **kw)
        fully_shard(model, **kw)
        logger.info("PRM sharded with FSDP2: %d node(s) x %d ranks (%d layers, offload=%s)", nodes, per_node,
                    len(layers), offload)

    def _release_memory(self) -> None:
        """After every scoring call: drop gathered parameters (FSDP2 keeps the root gathered after a forward) and
        return the cached blocks to the driver, so vLLM can wake up into free memory."""
        model = self.adapter.model
        if self.sharded and hasattr(model, "reshard"):
            model.reshard()
        if self._offload:
            self._params_to_host()
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.memory_releases += 1

    def _all_reduce_max(self, values: list[int]) -> list[int]:
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.long, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [int(v) for v in t.tolist()]

    def _sync_num_forwards(self, n: int) -> int:
        self._agreed_forwards = self._all_reduce_max([n])[0]
        return self._agreed_forwards

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
        stop_ids = data.meta_info.get("stop_token_ids") or None
        self._agreed_forwards = None
        calls_before = self.adapter.total_model_calls
        error: BaseException | None = None
        scores = stats = None
        if self._offload:
            self._params_to_device()
        try:
            if os.environ.get(FAULT_ENV) == str(self.rank):
                raise ValueError(f"injected PRM failure on rank {self.rank} ({FAULT_ENV}; a test of the failure path)")
            scores, stats = score_batch(
                self.adapter, self.policy_tokenizer, responses, response_mask, segment_ids, questions,
                prior_mean=prior_mean, eos_token_ids=stop_ids,
                sync_num_forwards=self._sync_num_forwards if self.sharded else None,
            )
        except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank together
            error = exc
            if self.sharded:
                self._finish_collectives(calls_before)
        finally:
            self._release_memory()
        if self.sharded:
            failed = self._all_reduce_max([int(error is not None)])[0]
            if failed and error is None:
                raise RuntimeError("PRM scoring failed on another rank of the PRM worker group (see its error); "
                                   "this rank stopped with it")
        if error is not None:
            raise error
        return scores_to_proto(scores, stats)

    def _finish_collectives(self, calls_before: int) -> None:
        """A rank that failed mid-call still joins every collective the others will run: the forward-count
        agreement (if it had not reached it) and the remaining agreed forwards (one-token dummies)."""
        if self._agreed_forwards is None:
            self._sync_num_forwards(0)
        done = self.adapter.total_model_calls - calls_before
        for _ in range(max(self._agreed_forwards - done, 0)):
            self.adapter._dummy_forward()


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


def create_prm_worker_group(prm_config, policy_tokenizer_path: str, resource_pool, *, fsdp: str | None = None,
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
                                  segment_ids: torch.Tensor, questions, prior_mean: float = 0.5,
                                  stop_token_ids=None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Score a batch with a ``PRMWorker`` group; returns ``(prm_scores (B, L) float32, stats)`` like ``score_batch``.

    ``stop_token_ids``: ids that end a response besides the policy tokenizer's EOS and chat-turn tokens (the
    generation config's EOS ids). Pads the batch to a multiple of the group's world size (repeating the last row)
    and removes the padding.
    """
    from verl.protocol import pad_dataproto_to_divisor, unpad_dataproto

    questions = list(questions)
    B = responses.shape[0]
    if len(questions) != B:
        raise ValueError(f"{len(questions)} questions for {B} responses")
    if B == 0:
        return torch.zeros(responses.shape, dtype=torch.float32), {
            "step_ids": torch.full(responses.shape, -1, dtype=torch.long),
            "truncated_segments": 0, "truncated_questions": 0, "prm_tokens": 0, "segments": 0, "responses": 0,
            "model_calls": 0, "dummy_model_calls": 0, "response_tokens": 0, "tokens_per_response_token": 0.0,
            "special_tokens_removed": 0, "run_on_tokens": 0, "merged_segments": 0, "empty_responses": 0}
    data = DataProto.from_dict(
        tensors={"responses": responses.long().cpu(), "response_mask": response_mask.cpu(),
                 "prm_segment_ids": segment_ids.long().cpu()},
        non_tensors={"question": np.array(questions, dtype=object)},
        meta_info={"prior_mean": float(prior_mean),
                   "stop_token_ids": sorted(int(t) for t in (stop_token_ids or ()))},
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
        "step_ids": out.batch["prm_step_ids"].long(),
        "truncated_segments": int(out.batch["prm_truncated_segments"].sum()),
        "truncated_questions": int(out.batch["prm_truncated_question"].sum()),
        "prm_tokens": prm_tokens,
        "segments": int(out.batch["prm_num_segments"].sum()),
        "responses": B,
        "model_calls": int(sum(calls if isinstance(calls, list) else [calls])),
        "dummy_model_calls": int(sum(dummies if isinstance(dummies, list) else [dummies])),
        "response_tokens": response_tokens,
        "tokens_per_response_token": prm_tokens / response_tokens if response_tokens else 0.0,
        "special_tokens_removed": int(out.batch["prm_special_tokens_removed"].sum()),
        "run_on_tokens": int(out.batch["prm_run_on_tokens"].sum()),
        "merged_segments": int(out.batch["prm_merged_segments"].sum()),
        "empty_responses": int(out.batch["prm_empty_response"].sum()),
    }
    return scores, stats
