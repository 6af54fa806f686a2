"""Sampling answers from a Hugging Face model directory: vLLM when available, else ``transformers.generate``.

vLLM is imported lazily and is never required. ``backend="auto"`` picks vLLM when it imports and a CUDA device is
present, else the Hugging Face fallback (batched, left padding, the tokenizer's chat template, CPU or GPU).

Sampling settings are passed explicitly to either backend, so the model's ``generation_config.json`` defaults
(Qwen ships ``top_k=20``, ``repetition_penalty=1.05``, ...) do **not** apply: ``top_k`` is disabled and the
repetition penalty is 1. ``temperature == 0`` means greedy decoding (one greedy answer, repeated ``n`` times if
``n > 1``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

__all__ = ["SamplingSettings", "Generation", "Generator", "vllm_available"]


@dataclass(frozen=True)
class SamplingSettings:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 2048
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass
class Generation:
    """``texts[i][j]``: sample j of prompt i; ``num_tokens`` likewise; ``truncated``: hit ``max_new_tokens``."""

    texts: list[list[str]] = field(default_factory=list)
    num_tokens: list[list[int]] = field(default_factory=list)
    truncated: list[list[bool]] = field(default_factory=list)


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError or a broken CUDA install
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The prompt text: the tokenizer's chat template with the generation prompt (plain text if it has none)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    logger.warning("tokenizer has no chat template; joining the message contents as plain text")
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


class Generator:
    """Loads a model once and samples answers for lists of chat prompts.

    Args:
        model_path: a Hugging Face model directory (a verl checkpoint must be merged first, see
            :mod:`verl_prpo.evaluation.evaluate`).
        backend: ``auto``, ``vllm`` or ``hf``.
        batch_size: prompts per ``generate`` call (HF backend; each prompt yields ``n`` sequences).
        dtype: ``auto``, ``bfloat16``, ``float16`` or ``float32``.
    """

    def __init__(
        self,
        model_path: str,
        backend: str = "auto",
        *,
        batch_size: int = 8,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        seed: int = 0,
        trust_remote_code: bool = False,
    ):
        if backend not in ("auto", "vllm", "hf"):
            raise ValueError(f"backend must be auto, vllm or hf, got {backend!r}")
        if backend == "auto":
            backend = "vllm" if vllm_available() else "hf"
        self.backend = backend
        self.model_path = str(model_path)
        self.batch_size = max(1, int(batch_size))
        self.dtype = dtype

        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=trust_remote_code)
        if backend == "vllm":
            try:
                from vllm import LLM
            except ImportError as exc:
                raise RuntimeError("backend 'vllm' requested but vllm is not installed (pip install vllm)") from exc
            kwargs = dict(
                model=self.model_path,
                seed=seed,
                tensor_parallel_size=tensor_parallel_size,
                gpu_memory_utilization=gpu_memory_utilization,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
            )
            if max_model_len is not None:
                kwargs["max_model_len"] = max_model_len
            self.llm = LLM(**kwargs)
            self.model = None
        else:
            import torch
            from transformers import AutoModelForCausalLM

            self.device = "cuda" if torch.cuda.is_available() else "cpu"
            torch_dtype = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16,
                           "float32": torch.float32}[dtype]
            if torch_dtype == "auto" and self.device == "cpu":
                torch_dtype = torch.float32
            self.model = AutoModelForCausalLM.from_pretrained(
                self.model_path, dtype=torch_dtype, trust_remote_code=trust_remote_code
            ).to(self.device)
            self.model.eval()
            self.tokenizer.padding_side = "left"
            if self.tokenizer.pad_token_id is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            self.llm = None

    # ------------------------------------------------------------------------------------------------------------

    def generate(self, prompts: list[list[dict]], settings: SamplingSettings, *, progress: bool = True) -> Generation:
        if settings.n < 1:
            raise ValueError("n must be >= 1")
        texts = [render_prompt(self.tokenizer, p) for p in prompts]
        n_real = 1 if settings.greedy else settings.n
        if settings.greedy and settings.n > 1:
            logger.info("temperature 0: one greedy answer per prompt, repeated %d times", settings.n)
        real = SamplingSettings(n_real, settings.temperature, settings.top_p, settings.max_new_tokens, settings.seed)
        if self.backend == "vllm":
            gen = self._generate_vllm(texts, real)
        else:
            gen = self._generate_hf(texts, real, progress=progress)
        if n_real != settings.n:
            gen = Generation(
                texts=[t * settings.n for t in gen.texts],
                num_tokens=[t * settings.n for t in gen.num_tokens],
                truncated=[t * settings.n for t in gen.truncated],
            )
        return gen

    def _generate_vllm(self, texts: list[str], s: SamplingSettings) -> Generation:
        from vllm import SamplingParams

        params = SamplingParams(
            n=s.n,
            temperature=0.0 if s.greedy else s.temperature,
            top_p=1.0 if s.greedy else s.top_p,
            top_k=-1,
            repetition_penalty=1.0,
            max_tokens=s.max_new_tokens,
            seed=s.seed,
        )
        token_prompts = [
            {"prompt_token_ids": self.tokenizer(t, add_special_tokens=False)["input_ids"]} for t in texts
        ]
        outputs = self.llm.generate(token_prompts, params)
        gen = Generation()
        for out in outputs:
            gen.texts.append([o.text for o in out.outputs])
            gen.num_tokens.append([len(o.token_ids) for o in out.outputs])
            gen.truncated.append([o.finish_reason == "length" for o in out.outputs])
        return gen

    def _generate_hf(self, texts: list[str], s: SamplingSettings, *, progress: bool) -> Generation:
        import torch
        from transformers import GenerationConfig, set_seed

        set_seed(s.seed)
        tok = self.tokenizer
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = tok.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        cfg = GenerationConfig(
            do_sample=not s.greedy,
            temperature=s.temperature if not s.greedy else None,
            top_p=s.top_p if not s.greedy else None,
            top_k=0 if not s.greedy else None,
            repetition_penalty=1.0,
            num_return_sequences=s.n,
            max_new_tokens=s.max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=sorted(eos_ids) if eos_ids else None,
        )
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover
            def tqdm(x, **_):
                return x

        gen = Generation()
        batches = range(0, len(texts), self.batch_size)
        for start in tqdm(batches, desc="generate (hf)", unit="batch", disable=not progress):
            chunk = texts[start : start + self.batch_size]
            enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            with torch.no_grad():
                out = self.model.generate(**enc, generation_config=cfg)
            new = out[:, enc["input_ids"].shape[1] :].cpu()
            for i in range(len(chunk)):
                texts_i, ntok_i, trunc_i = [], [], []
                for j in range(s.n):
                    seq = new[i * s.n + j].tolist()
                    # length up to and including the first EOS; padding after it is not part of the answer
                    # (a sequence without EOS ran to max_new_tokens: it is truncated)
                    length, hit_eos = len(seq), False
                    for pos, t in enumerate(seq):
                        if t in eos_ids:
                            length, hit_eos = pos + 1, True
                            break
                    texts_i.append(tok.decode(seq[:length], skip_special_tokens=True))
                    ntok_i.append(length)
                    trunc_i.append(not hit_eos)
                gen.texts.append(texts_i)
                gen.num_tokens.append(ntok_i)
                gen.truncated.append(trunc_i)
        return gen
