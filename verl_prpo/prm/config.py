"""``PRMConfig``: the top-level ``prm`` node of the PRPO trainer config.

Segmentation settings are *not* here: the segmentation the PRM scores comes from ``algorithm.prpo``
(``verl_prpo/config.py``). This node only says which PRM to load, how to build its input, and where it runs.

Every error names the offending key as ``prm.<field>``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

#: the system prompt Qwen2.5-Math-PRM was trained with (ALGORITHMS.md, PRPO step 2)
DEFAULT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

#: the step separator token of the Qwen2.5-Math-PRM family
QWEN_STEP_SEPARATOR = "<extra_0>"

#: default separator of the generic token-classification adapter (the "\n\n" step split)
TOKEN_CLASSIFICATION_STEP_SEPARATOR = "\n\n"

ADAPTERS = ("auto", "qwen_math_prm", "token_classification")
PLACEMENTS = ("colocate", "own_pool")
#: how the PRM runs: Hugging Face forwards in the plugin's worker group, or a vLLM pooling model
BACKENDS = ("fsdp", "vllm")
#: default backend, chosen from measurements (docs/PERFORMANCE.md, "PRM backends")
DEFAULT_BACKEND = "fsdp"
#: engine settings the vLLM backend sets itself (from the other ``prm.*`` keys); ``prm.engine_kwargs`` may not
ENGINE_KWARGS_OWNED = ("runner", "pooler_config", "model", "tokenizer", "max_model_len", "tensor_parallel_size",
                       "dtype", "max_num_batched_tokens", "gpu_memory_utilization", "convert", "task")
DTYPES = ("bfloat16", "float16", "float32")
SHARDINGS = ("auto", "replicate", "shard")


def _err(field: str, msg: str) -> ValueError:
    return ValueError(f"prm.{field}: {msg}")


@dataclass
class PRMConfig:
    """Process reward model settings.

    Attributes:
        enable: score segments with a PRM (required by the ``prpo`` and ``prm_avg`` estimators).
        model_path: a local directory or a hub name passed to ``from_pretrained``; required when ``enable``.
        adapter: ``qwen_math_prm`` (chat template, ``<extra_0>`` after every step, 2-class head read at each
            ``<extra_0>``), ``token_classification`` (TRL PRM layout, see ``adapters.py``), or ``auto``: Qwen when
            the model config's ``architectures`` mention ``Qwen2ForProcessRewardModel``, or when its tokenizer has
            ``<extra_0>`` and a chat template; token classification otherwise.
        step_separator: None = the model config's ``step_separator`` attribute if it has one, else ``"\\n\\n"``
            (token classification) / ``"<extra_0>"`` (Qwen).
        system_prompt: system message of the Qwen chat template.
        positive_label: the column of the label softmax that is "this step is correct" (1 for Qwen).
        max_length: PRM input tokens per response; longer inputs are truncated (question first, then the last
            segments, which get the fallback score and are counted).
        max_tokens_per_batch: packing budget of one forward: batch size x longest input (padding included).
        dtype: parameter dtype on GPU. On CPU float32 is always used.
        trust_remote_code: passed to ``from_pretrained`` for checkpoints whose class this package does not
            implement (off by default). ``Qwen2ForProcessRewardModel`` (Qwen2.5-Math-PRM) is always loaded natively,
            without its hub code, whatever this says.
        placement: ``colocate`` (a worker group on the actor's resource pool) or ``own_pool`` (its own GPUs,
            ``nnodes`` x ``n_gpus_per_node``).
        nnodes, n_gpus_per_node: size of the PRM's own pool (``own_pool``).
        param_offload: keep the PRM parameters in (pinned) CPU memory between scoring calls; None = True for
            ``colocate``, False for ``own_pool``. GPU only.
        sharding: ``replicate`` (one full copy per GPU), ``shard`` (FSDP2 within each node: parameters are
            gathered only between the GPUs of one node, nodes hold replicas), or ``auto``: replicate when the
            parameters in ``prm.dtype`` take at most ``replica_memory_fraction`` of one GPU's memory, else shard.
        replica_memory_fraction: the ``auto`` threshold (0.3: a 7B PRM in bf16, 15 GB, is replicated on 80 GB
            GPUs and sharded on 40 GB GPUs).
        backend: ``fsdp`` (Hugging Face forwards in the plugin's PRM worker group, the settings above) or ``vllm``
            (the PRM served as a vLLM pooling model by verl's reward-model server replicas, see
            ``verl_prpo/prm/vllm_backend.py``; the same input text, scores read at the same positions).
        tensor_parallel_size: vLLM backend: GPUs per PRM replica (for PRMs larger than one GPU); the PRM's pool
            (the actor's for ``colocate``, ``nnodes x n_gpus_per_node`` for ``own_pool``) holds
            pool size / tensor_parallel_size replicas.
        gpu_memory_utilization: vLLM backend: share of each GPU the PRM engine may take (weights and KV cache). On
            CPU the KV cache is ``VLLM_CPU_KVCACHE_SPACE`` GiB instead.
        request_timeout_s: vLLM backend: bound on one scoring call (seconds); a PRM server that does not answer in
            time, or dies, stops the job with an error.
        engine_kwargs: vLLM backend: more vLLM engine arguments (e.g. ``{"max_num_seqs": 128}``); the settings the
            backend derives from other keys (``ENGINE_KWARGS_OWNED``) are refused.
        scores_from_batch: with ``enable=false``, take per-token scores from the batch field ``prm_scores`` that
            a custom pipeline (agent loop, reward manager) writes; without it, ``prpo``/``prm_avg`` with the PRM
            disabled is a start-up error.
    """

    enable: bool = False
    model_path: str | None = None
    adapter: str = "auto"
    step_separator: str | None = None
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    positive_label: int = 1
    max_length: int = 4096
    max_tokens_per_batch: int = 16384
    dtype: str = "bfloat16"
    trust_remote_code: bool = False
    placement: str = "colocate"
    nnodes: int = 1
    n_gpus_per_node: int = 1
    param_offload: bool | None = None
    sharding: str = "auto"
    replica_memory_fraction: float = 0.3
    scores_from_batch: bool = False
    backend: str = DEFAULT_BACKEND
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.3
    request_timeout_s: float = 600.0
    engine_kwargs: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("enable", "trust_remote_code", "scores_from_batch"):
            if not isinstance(getattr(self, name), bool):
                raise _err(name, f"expected a boolean, got {getattr(self, name)!r}")
        if self.param_offload is not None and not isinstance(self.param_offload, bool):
            raise _err("param_offload", f"expected a boolean or null, got {self.param_offload!r}")
        for name in ("positive_label", "max_length", "max_tokens_per_batch", "nnodes", "n_gpus_per_node",
                     "tensor_parallel_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise _err(name, f"expected an integer, got {value!r}")
        if self.model_path is not None and (not isinstance(self.model_path, str) or not self.model_path.strip()):
            raise _err("model_path", f"expected a non-empty path or hub name, got {self.model_path!r}")
        if self.enable and self.model_path is None:
            raise _err("model_path", "is required when prm.enable=true")
        if self.adapter not in ADAPTERS:
            raise _err("adapter", f"must be one of {ADAPTERS}, got {self.adapter!r}")
        if self.step_separator is not None and (not isinstance(self.step_separator, str) or self.step_separator == ""):
            raise _err("step_separator", f"expected a non-empty string or null, got {self.step_separator!r}")
        if not isinstance(self.system_prompt, str):
            raise _err("system_prompt", f"expected a string, got {self.system_prompt!r}")
        if self.positive_label < 0:
            raise _err("positive_label", f"must be >= 0, got {self.positive_label}")
        if self.max_length < 8:
            raise _err("max_length", f"must be >= 8, got {self.max_length}")
        if self.max_tokens_per_batch < self.max_length:
            raise _err("max_tokens_per_batch",
                       f"must be >= prm.max_length ({self.max_length}) so that one full-length input fits, "
                       f"got {self.max_tokens_per_batch}")
        if self.dtype not in DTYPES:
            raise _err("dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        if self.placement not in PLACEMENTS:
            raise _err("placement", f"must be one of {PLACEMENTS}, got {self.placement!r}")
        if self.nnodes < 1:
            raise _err("nnodes", f"must be >= 1, got {self.nnodes}")
        if self.n_gpus_per_node < 1:
            raise _err("n_gpus_per_node", f"must be >= 1, got {self.n_gpus_per_node}")
        if self.sharding not in SHARDINGS:
            raise _err("sharding", f"must be one of {SHARDINGS}, got {self.sharding!r}")
        if isinstance(self.replica_memory_fraction, bool) or not isinstance(self.replica_memory_fraction,
                                                                            (int, float)) \
                or not 0.0 < float(self.replica_memory_fraction) <= 1.0:
            raise _err("replica_memory_fraction", f"must be in (0, 1], got {self.replica_memory_fraction!r}")
        self.replica_memory_fraction = float(self.replica_memory_fraction)
        if self.param_offload is None:
            self.param_offload = self.placement == "colocate"
        self._validate_backend()

    def _validate_backend(self) -> None:
        if self.backend not in BACKENDS:
            raise _err("backend", f"must be one of {BACKENDS}, got {self.backend!r}")
        if self.tensor_parallel_size < 1:
            raise _err("tensor_parallel_size", f"must be >= 1, got {self.tensor_parallel_size}")
        if self.backend != "vllm" and self.tensor_parallel_size != 1:
            raise _err("tensor_parallel_size", f"applies to prm.backend=vllm only (prm.backend={self.backend}); "
                       f"the fsdp backend shards with prm.sharding")
        if self.backend == "vllm" and self.placement == "own_pool" \
                and (self.nnodes * self.n_gpus_per_node) % self.tensor_parallel_size:
            raise _err("tensor_parallel_size", f"{self.tensor_parallel_size} does not divide the PRM's own pool of "
                       f"prm.nnodes x prm.n_gpus_per_node = {self.nnodes * self.n_gpus_per_node} GPUs")
        for name in ("gpu_memory_utilization", "request_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise _err(name, f"expected a number, got {value!r}")
            setattr(self, name, float(value))
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise _err("gpu_memory_utilization", f"must be in (0, 1], got {self.gpu_memory_utilization}")
        if not self.request_timeout_s > 0.0:
            raise _err("request_timeout_s", f"must be > 0, got {self.request_timeout_s}")
        if self.engine_kwargs is None:
            self.engine_kwargs = {}
        if not isinstance(self.engine_kwargs, dict):
            raise _err("engine_kwargs", f"expected a mapping, got {self.engine_kwargs!r}")
        owned = sorted(set(self.engine_kwargs) & set(ENGINE_KWARGS_OWNED))
        if owned:
            raise _err(f"engine_kwargs.{owned[0]}", "is set by the vLLM backend from the other prm.* keys "
                       "(max_length, max_tokens_per_batch, dtype, tensor_parallel_size, gpu_memory_utilization, "
                       "step_separator); set those instead")

    @classmethod
    def from_config(cls, node: Any = None) -> PRMConfig:
        """Build from ``None`` (defaults), a dict, an OmegaConf node or a ``PRMConfig``; unknown keys are errors."""
        if node is None:
            return cls()
        if isinstance(node, cls):
            return dataclasses.replace(node)
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(node, DictConfig):
                node = OmegaConf.to_container(node, resolve=True)
        except ImportError:  # pragma: no cover - omegaconf ships with verl
            pass
        if not isinstance(node, dict):
            raise TypeError(f"prm: expected a mapping, got {type(node).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(node) - known)
        if unknown:
            raise ValueError(f"prm.{unknown[0]}: unknown key (known keys: {sorted(known)})")
        return cls(**node)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
