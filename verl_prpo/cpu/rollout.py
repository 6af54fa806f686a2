"""``hf`` rollout backend: Hugging Face ``generate`` behind verl's rollout-server interface.

verl 0.9.1 generates only through server replicas (vLLM, SGLang, TensorRT-LLM). This backend provides the three
pieces verl looks up by ``actor_rollout_ref.rollout.name``:

* ``HFRolloutServer``: a Ray actor that answers ``generate(prompt_ids, sampling_params, request_id)`` with a
  ``TokenOutput`` (token ids and log-probs), as ``LLMServerClient`` expects. Concurrent requests are gathered into
  batches (left-padded ``generate``) so a group of n samples costs one batched call, not n.
* ``HFReplica``: the ``RolloutReplica`` that launches one server per replica (registered in
  ``RolloutReplicaRegistry``).
* ``HFServerAdapter``: the ``BaseRollout`` that lives in each actor worker (registered in ``_ROLLOUT_REGISTRY``) and
  receives the actor's weights through verl's naive weight sync after every update, forwarding them to the server.

It is meant for tiny models on CPU (tests, CI, the quickstart) and as a last-resort backend; GPU users use vLLM.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Generator, Optional

import ray
import torch

from transformers import LogitsProcessor, LogitsProcessorList

from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

logger = logging.getLogger(__name__)

SERVER_NAME_PREFIX = "verl_prpo_hf_rollout_server_"
#: a batch is cut once the request queue has not grown for this long (seconds) ...
BATCH_SETTLE_S = 0.03
#: ... or after this long at most
BATCH_WAIT_MAX_S = 1.0
#: bytes per weight bucket sent from the actor to the server
WEIGHT_BUCKET_BYTES = 256 << 20


def _cfg(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


@dataclass
class _Request:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    want_logprobs: bool
    seed: int
    future: asyncio.Future = field(repr=False)

    def sampling_key(self) -> tuple:
        return (self.temperature, self.top_p, self.top_k, self.want_logprobs)


def request_seed(base_seed: int, weights_version: int, prompt_ids: list[int], occurrence: int) -> int:
    """The sampling seed of the ``occurrence``-th request for ``prompt_ids`` under one weights version: a stable
    hash (not Python's salted ``hash``), so a run's samples are the same in every process and on every machine."""
    key = f"{base_seed}:{weights_version}:{occurrence}:{','.join(map(str, prompt_ids))}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)


class SeededSampling(LogitsProcessor):
    """Sampling in which each row draws from its own ``torch.Generator``: temperature, top-k and top-p, then the
    Gumbel-max trick, argmax_v (log p_v - log E_v) with E_v ~ Exp(1), an exact draw from p. ``generate`` runs greedy
    on the returned scores, so a row's tokens depend on its prompt and seed only, not on which requests share its
    batch or the order they arrived in (with the global RNG, every run of the same config differed).

    scores: (B, V) logits of the next token; returns (B, V) with -inf outside the top-k / top-p support."""

    def __init__(self, seeds: list[int], temperature: float, top_k: int = 0, top_p: float = 1.0):
        if temperature <= 0:
            raise ValueError("SeededSampling needs temperature > 0 (greedy decoding draws nothing)")
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float() / self.temperature
        vocab = scores.shape[-1]
        if 0 < self.top_k < vocab:
            kth = scores.topk(self.top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            # keep the most likely tokens until their mass reaches top_p (at least one token)
            ranked, order = scores.sort(dim=-1, descending=True)
            p = ranked.softmax(-1)
            drop_ranked = p.cumsum(-1) - p >= self.top_p
            scores = scores.masked_fill(drop_ranked.scatter(-1, order, drop_ranked), float("-inf"))
        noise = torch.stack([torch.empty(vocab).exponential_(generator=g) for g in self.generators])
        return scores.log_softmax(-1) - noise.log()


class HFRolloutServer:
    """Ray actor holding a Hugging Face causal LM; token-in, token-out generation with dynamic batching."""

    def __init__(self, config: Any, model_config: Any, replica_rank: int = 0, num_threads: int | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.replica_rank = replica_rank
        path = _cfg(model_config, "local_path") or _cfg(model_config, "path")
        if path is None:
            raise ValueError("hf rollout: model_config has no path")
        trust = bool(_cfg(model_config, "trust_remote_code", False))
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
        self.model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32, trust_remote_code=trust)
        self.model.eval()
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.prompt_length = int(_cfg(config, "prompt_length", 512))
        self.response_length = int(_cfg(config, "response_length", 512))
        self.max_model_len = int(_cfg(config, "max_model_len", None) or (self.prompt_length + self.response_length))
        self.max_batch = int(_cfg(config, "max_num_seqs", 256) or 256)
        self.global_steps: int | None = None
        self.weights_version = 0
        # sampling seeds: verl's rollout.seed (+ the replica's rank, as verl's vLLM server does); requests for the
        # same prompt under one weights version are told apart by their arrival count (the n samples of a group
        # are exchangeable, so which request gets which draw does not matter)
        self.seed = int(_cfg(config, "seed", 42) or 0) + int(replica_rank)
        self._arrivals: dict[tuple[int, ...], int] = {}
        self._queue: list[_Request] = []
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._paused = False
        self.stats = {"requests": 0, "batches": 0, "generated_tokens": 0, "generate_seconds": 0.0}

    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for e in (gen_eos, self.tokenizer.eos_token_id):
            if e is None:
                continue
            ids.extend(e if isinstance(e, list) else [e])
        if not ids:
            raise ValueError("hf rollout: the tokenizer/model defines no EOS token")
        return sorted(set(int(i) for i in ids))

    # ---------------------------------------------------------------- generation
    async def generate(self, prompt_ids: list[int], sampling_params: dict[str, Any], request_id: str,
                       image_data: Optional[list[Any]] = None, video_data: Optional[list[Any]] = None,
                       **kwargs: Any) -> TokenOutput:
        if image_data or video_data or kwargs.get("audio_data"):
            raise NotImplementedError("hf rollout backend is text-only")
        prompt_ids = [int(t) for t in prompt_ids]
        params = dict(sampling_params)
        max_possible = self.max_model_len - len(prompt_ids)
        if max_possible < 1:
            raise ValueError(f"Prompt length ({len(prompt_ids)}) leaves no room within max_model_len {self.max_model_len}")
        max_tokens = params.pop("max_tokens", None) or params.pop("max_new_tokens", None)
        if max_tokens is None:
            max_tokens = min(self.response_length, self.prompt_length + self.response_length - len(prompt_ids))
        max_tokens = max(1, min(int(max_tokens), max_possible))
        top_k = params.get("top_k", -1)
        key = tuple(prompt_ids)
        occurrence = self._arrivals.get(key, 0)
        self._arrivals[key] = occurrence + 1
        req = _Request(
            prompt_ids=prompt_ids,
            max_tokens=max_tokens,
            temperature=float(params.get("temperature", 1.0) or 0.0),
            top_p=float(params.get("top_p", 1.0) or 1.0),
            top_k=int(top_k) if top_k is not None and int(top_k) > 0 else 0,
            want_logprobs=bool(params.get("logprobs", False)),
            seed=request_seed(self.seed, self.weights_version, prompt_ids, occurrence),
            future=asyncio.get_running_loop().create_future(),
        )
        self._ensure_loop()
        self._queue.append(req)
        self._wakeup.set()
        token_ids, log_probs = await req.future
        return TokenOutput(
            token_ids=token_ids,
            log_probs=log_probs if req.want_logprobs else None,
            stop_reason="completed",
            extra_fields={"global_steps": self.global_steps},
        )

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._wakeup = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._batch_loop())

    async def _settle(self) -> None:
        """Let concurrent callers enqueue before the batch is cut: wait until the queue has stopped growing for
        ``BATCH_SETTLE_S`` (at most ``BATCH_WAIT_MAX_S``). verl's agent loop sends a step's requests one Ray call
        at a time; cutting after a fixed 10 ms made a first batch of a few requests and a second of the rest, and
        one ``generate`` costs about the same for 5 rows as for 256 (measured: 2 ms between arrivals, 256 requests:
        2 batches, 19 s; all at once: 1 batch, 6.8 s)."""
        waited, seen = 0.0, -1
        while len(self._queue) != seen and waited < BATCH_WAIT_MAX_S:
            seen = len(self._queue)
            await asyncio.sleep(BATCH_SETTLE_S)
            waited += BATCH_SETTLE_S

    async def _batch_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            await self._settle()
            self._wakeup.clear()
            while self._queue and not self._paused:
                key = self._queue[0].sampling_key()
                batch = [r for r in self._queue if r.sampling_key() == key][: self.max_batch]
                taken = {id(r) for r in batch}
                self._queue = [r for r in self._queue if id(r) not in taken]
                try:
                    results = await asyncio.to_thread(self._generate_batch, batch)
                except Exception as exc:  # noqa: BLE001 - delivered to every waiting caller
                    for r in batch:
                        if not r.future.done():
                            r.future.set_exception(exc)
                    continue
                for r, res in zip(batch, results, strict=True):
                    if not r.future.done():
                        r.future.set_result(res)

    @torch.no_grad()
    def _generate_batch(self, batch: list[_Request]) -> list[tuple[list[int], list[float]]]:
        """Sample continuations for ``batch`` (same sampling parameters) in one left-padded ``generate`` call."""
        t0 = time.perf_counter()
        width = max(len(r.prompt_ids) for r in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            input_ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            attention[i, width - len(r.prompt_ids):] = 1
        first = batch[0]
        do_sample = first.temperature > 0
        gen_kwargs: dict[str, Any] = dict(
            max_new_tokens=max(r.max_tokens for r in batch),
            do_sample=False,  # greedy on seeded scores (SeededSampling) when sampling, on the logits otherwise
            temperature=None, top_p=None, top_k=None,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
            output_logits=True,
        )
        if do_sample:
            gen_kwargs["logits_processor"] = LogitsProcessorList(
                [SeededSampling([r.seed for r in batch], first.temperature, first.top_k, first.top_p)])
        out = self.model.generate(input_ids=input_ids, attention_mask=attention, **gen_kwargs)
        new_tokens = out.sequences[:, width:]
        # log-probs of the sampled tokens under the temperature-scaled distribution (what verl's actor computes)
        logits = torch.stack(out.logits, dim=1).float()
        if do_sample:
            logits = logits / first.temperature
        logp = torch.log_softmax(logits, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        eos = torch.tensor(self.eos_ids)
        results = []
        for i, r in enumerate(batch):
            toks = new_tokens[i, : r.max_tokens].tolist()
            # cut after the first EOS (EOS kept, as vLLM returns it)
            cut = len(toks)
            for j, t in enumerate(toks):
                if t in eos:
                    cut = j + 1
                    break
            results.append((toks[:cut], logp[i, :cut].tolist()))
            self.stats["generated_tokens"] += cut
        self.stats["requests"] += len(batch)
        self.stats["batches"] += 1
        self.stats["generate_seconds"] += time.perf_counter() - t0
        return results

    # ---------------------------------------------------------------- weights
    def load_weights(self, named_tensors: list[tuple[str, torch.Tensor]], is_last: bool = True,
                     global_steps: int | None = None) -> int:
        """Copy actor weights (HF names) into the generation model; returns the number of tensors loaded."""
        # state_dict names include tied weights (lm_head.weight) that named_parameters() deduplicates
        params = self.model.state_dict(keep_vars=True)
        unknown = [n for n, _ in named_tensors if n not in params]
        if unknown:
            raise KeyError(f"hf rollout: actor sent weights the rollout model does not have: {unknown[:5]}")
        with torch.no_grad():
            for name, tensor in named_tensors:
                target = params[name]
                if tuple(target.shape) != tuple(tensor.shape):
                    raise ValueError(f"hf rollout: shape mismatch for {name}: {tuple(tensor.shape)} vs {tuple(target.shape)}")
                target.copy_(tensor.to(target.dtype))
        if is_last:
            self.weights_version += 1
            self._arrivals.clear()
            if global_steps is not None:
                self.global_steps = global_steps
        return len(named_tensors)

    def get_state(self) -> dict[str, Any]:
        """For tests and metrics: weights version, global step and generation counters."""
        return {"weights_version": self.weights_version, "global_steps": self.global_steps, **self.stats}

    def get_param_checksum(self) -> float:
        with torch.no_grad():
            return float(sum(p.double().sum() for p in self.model.parameters()))

    # ---------------------------------------------------------------- server control (no-ops on CPU)
    async def wake_up(self, tags: list[str] | None = None):
        return None

    async def sleep(self):
        return None

    async def clear_kv_cache(self):
        return None

    async def release_kv_cache(self):
        return None

    async def resume_kv_cache(self):
        return None

    async def start_profile(self, **kwargs):
        return None

    async def stop_profile(self):
        return None

    async def set_global_steps(self, global_steps: int):
        self.global_steps = global_steps

    async def wait_for_requests_to_drain(self):
        while self._queue:
            await asyncio.sleep(0.05)

    async def abort_all_requests(self, reject_request: bool = False, **kwargs) -> dict[str, Any]:
        # Generation is not interruptible mid-batch; queued requests are finished before anything else runs.
        await self.wait_for_requests_to_drain()
        return {"aborted_count": 0, "request_ids": []}

    async def resume_generation(self):
        return None

    async def abort_request(self, request_id: str, **kwargs) -> dict[str, Any]:
        return {"aborted": False}


def server_name(replica_rank: int) -> str:
    return f"{SERVER_NAME_PREFIX}{replica_rank}"


class HFReplica(RolloutReplica):
    """One ``HFRolloutServer`` per replica; in hybrid mode it shares the node with the replica's actor workers."""

    async def launch_servers(self):
        if self.workers:
            node_id = await self.workers[0].__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
            scheduling = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
        else:
            scheduling = "DEFAULT"
        threads = os.environ.get("VERL_PRPO_HF_ROLLOUT_THREADS")
        server = ray.remote(HFRolloutServer).options(
            name=server_name(self.replica_rank),
            num_cpus=0,
            scheduling_strategy=scheduling,
            max_concurrency=self.max_concurrency,
        ).remote(self.config, self.model_config, self.replica_rank, int(threads) if threads else None)
        # fail here, at start-up, if the model cannot be loaded
        await server.get_state.remote()
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"hf-rollout-{self.replica_rank}"

    def rollout_worker_use_gpu(self) -> bool:
        return False


class HFServerAdapter(BaseRollout):
    """Rollout object inside each actor worker: forwards weights from the training engine to the HF server."""

    def __init__(self, config, model_config, device_mesh, *args, **kwargs):
        super().__init__(config, model_config, device_mesh)
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_initialized() else 0
        replica_world = (
            self.config.tensor_model_parallel_size * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // replica_world
        self.is_replica_leader = rank % replica_world == 0
        self._server = None
        self.sleep_level = 2

    def _server_handle(self):
        if self._server is None:
            self._server = ray.get_actor(server_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None

    async def update_weights(self, weights: Generator, wire_format: str = "named_tensors", **kwargs):
        if wire_format != "named_tensors":
            raise NotImplementedError(f"hf rollout supports wire_format=named_tensors only, got {wire_format}")
        global_steps = kwargs.get("global_steps")
        bucket: list[tuple[str, torch.Tensor]] = []
        size = 0
        pending = []
        # every rank iterates the generator (it may gather shards collectively); the replica leader sends
        for name, tensor in weights:
            if hasattr(tensor, "full_tensor"):
                tensor = tensor.full_tensor()
            if not self.is_replica_leader:
                continue
            t = tensor.detach().to("cpu", copy=True)
            bucket.append((name, t))
            size += t.numel() * t.element_size()
            if size >= WEIGHT_BUCKET_BYTES:
                pending.append(self._server_handle().load_weights.remote(bucket, False, None))
                bucket, size = [], 0
        if self.is_replica_leader:
            pending.append(self._server_handle().load_weights.remote(bucket, True, global_steps))
            await asyncio.gather(*pending)
