"""Tiny local assets for tests, CPU mode and the quickstart: never downloaded, always built here.

* a byte-level BPE tokenizer trained with ``tokenizers`` on the training prompts, with Qwen-style chat tokens
  and the ``<extra_0>`` step separator that Qwen2.5-Math-PRM uses;
* a random-initialised small Qwen2 causal LM (the policy);
* a random-initialised small Qwen2 token-classification model with 2 labels (the PRM);
* a small arithmetic dataset in verl's RL parquet format.

Everything is saved with ``save_pretrained`` so that the real ``from_pretrained(<directory>)`` code paths are
the ones exercised. Command line: ``python -m examples.credit_assignment.tiny_assets --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
STEP_SEPARATOR = "<extra_0>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END, STEP_SEPARATOR)
#: vLLM's CPU attention accepts head sizes 32, 64, 80, 96, 112, 128, ...; the test models use 32
VLLM_MIN_HEAD_DIM = 32

# Qwen2-style chat template (written here; the structure is the public ChatML format).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

#: data_source of the tiny dataset: a MATH-style name, so verl's default rule scorer (last \boxed{}) also grades it
TINY_DATA_SOURCE = "lighteval/MATH"

DEFAULT_CACHE_DIR = Path(os.environ.get("VERL_PRPO_CACHE", Path.home() / ".cache" / "verl_prpo")) / "tiny"


@dataclass(frozen=True)
class TinyAssets:
    root: Path
    tokenizer_dir: Path
    policy_dir: Path
    prm_dir: Path
    train_parquet: Path
    val_parquet: Path


def arithmetic_problems(n: int, seed: int = 0) -> list[dict]:
    """Small two-operand arithmetic word problems with integer answers (a stand-in for math data)."""
    rng = random.Random(seed)
    ops = [("+", lambda a, b: a + b, "the sum of"), ("-", lambda a, b: a - b, "the difference of"),
           ("*", lambda a, b: a * b, "the product of")]
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        sym, fn, words = ops[i % len(ops)]
        problem = f"What is {words} {a} and {b}? Compute ${a} {sym} {b}$."
        answer = str(fn(a, b))
        solution = f"We compute ${a} {sym} {b} = {answer}$.\n\nSo the answer is $\\boxed{{{answer}}}$."
        rows.append({"problem": problem, "answer": answer, "solution": solution})
    return rows


def _corpus(rows: list[dict]) -> list[str]:
    lines = [BOXED_INSTRUCTION, "Let's think step by step.\n\nFirst,", "\n\n", "The answer is \\boxed{}."]
    for r in rows:
        lines.extend([r["problem"], r["solution"]])
    lines.extend(str(i) for i in range(0, 401))
    return lines


def build_tokenizer(out_dir: Path, corpus: list[str], vocab_size: int = 512):
    """Train a byte-level BPE tokenizer on ``corpus`` and save it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=IM_END,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[IM_START, STEP_SEPARATOR],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def _qwen2_config(tokenizer, *, hidden_size: int, num_layers: int, max_positions: int, **extra):
    from transformers import Qwen2Config

    vocab = len(tokenizer)
    vocab = (vocab + 63) // 64 * 64  # padded like real checkpoints; ids >= len(tokenizer) are never sampled often
    return Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        # head size 32: the smallest vLLM's CPU attention kernels accept (they refuse 16 and 24)
        num_attention_heads=hidden_size // VLLM_MIN_HEAD_DIM,
        num_key_value_heads=max(1, hidden_size // VLLM_MIN_HEAD_DIM // 2),
        max_position_embeddings=max_positions,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.pad_token_id,
        **extra,
    )


def build_policy(out_dir: Path, tokenizer, *, hidden_size: int = 64, num_layers: int = 2, seed: int = 0):
    """A random-initialised small Qwen2 causal LM saved with its tokenizer and a generation config."""
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = _qwen2_config(tokenizer, hidden_size=hidden_size, num_layers=num_layers, max_positions=4096)
    model = Qwen2ForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model


def build_prm(out_dir: Path, tokenizer, *, hidden_size: int = 64, num_layers: int = 2, seed: int = 1):
    """A random-initialised 2-label Qwen2 token-classification PRM, saved with its tokenizer.

    ``step_separator`` is recorded in the config so the generic adapter knows where to read scores.
    """
    import torch
    from transformers import Qwen2ForTokenClassification

    torch.manual_seed(seed)
    config = _qwen2_config(
        tokenizer, hidden_size=hidden_size, num_layers=num_layers, max_positions=4096,
        num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
    )
    config.step_separator = STEP_SEPARATOR
    model = Qwen2ForTokenClassification(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model


def write_rl_parquet(rows: list[dict], path: Path, *, data_source: str, split: str) -> Path:
    """Write problems as verl RL parquet (prompt messages, data_source, reward_model.ground_truth, extra_info)."""
    import pandas as pd

    records = []
    for i, r in enumerate(rows):
        records.append({
            "data_source": data_source,
            "prompt": [{"role": "user", "content": f"{r['problem']}\n{BOXED_INSTRUCTION}"}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": r["answer"]},
            "extra_info": {"split": split, "index": i, "question": r["problem"]},
        })
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame.from_records(records).to_parquet(path)
    return path


def build_tiny_assets(out: Path | str = DEFAULT_CACHE_DIR, *, n_train: int = 256, n_val: int = 16,
                      vocab_size: int = 512, hidden_size: int = 64, num_layers: int = 2, seed: int = 0,
                      force: bool = False) -> TinyAssets:
    """Build (or reuse) every tiny asset under ``out``; returns their paths."""
    root = Path(out).expanduser().resolve()
    assets = TinyAssets(root, root / "tokenizer", root / "policy", root / "prm",
                        root / "data" / "train.parquet", root / "data" / "val.parquet")
    marker = root / "assets.json"
    settings = {"n_train": n_train, "n_val": n_val, "vocab_size": vocab_size, "hidden_size": hidden_size,
                "num_layers": num_layers, "seed": seed, "version": 3}  # 3: head size 32
    if not force and marker.exists() and json.loads(marker.read_text()) == settings:
        return assets
    rows = arithmetic_problems(n_train + n_val, seed=seed)
    tokenizer = build_tokenizer(assets.tokenizer_dir, _corpus(rows), vocab_size=vocab_size)
    build_policy(assets.policy_dir, tokenizer, hidden_size=hidden_size, num_layers=num_layers, seed=seed)
    build_prm(assets.prm_dir, tokenizer, hidden_size=hidden_size, num_layers=num_layers, seed=seed + 1)
    write_rl_parquet(rows[:n_train], assets.train_parquet, data_source=TINY_DATA_SOURCE, split="train")
    write_rl_parquet(rows[n_train:], assets.val_parquet, data_source=TINY_DATA_SOURCE, split="test")
    marker.write_text(json.dumps(settings))
    logger.info("tiny assets written to %s", root)
    return assets


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DEFAULT_CACHE_DIR))
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--n-val", type=int, default=16)
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    a = build_tiny_assets(args.out, n_train=args.n_train, n_val=args.n_val, force=args.force)
    print(json.dumps({k: str(v) for k, v in a.__dict__.items()}, indent=1))


if __name__ == "__main__":
    main()
