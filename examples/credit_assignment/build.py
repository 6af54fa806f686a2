"""Build the testbed's assets once and cache them: tokenizer, SFT policy, trained PRM, verl parquet data.

* **Tokenizer**: byte-level BPE in which every digit is its own token and ``"\\n\\n"`` is one token (so the
  ``newline`` segmentation cuts at step boundaries), with the Qwen chat tokens and the ``<extra_0>`` separator.
* **Policy**: a small Qwen2 causal LM trained from scratch on solutions of the noisy solver
  (:func:`examples.credit_assignment.task.noisy_solution`), so it starts at a moderate sampled accuracy with step-local
  mistakes to fix.
* **PRM**: a Qwen2 token-classification model (TRL's PRM layout, read by the plugin's ``token_classification``
  adapter) trained on step labels (:func:`examples.credit_assignment.task.step_labels`) of noisy and corrupted solutions.
  Its inputs are built by the adapter's own ``build_inputs``, so training and scoring see the same tokens.
* **Data**: RL prompts (train) and held-out problems (eval) in verl's RL parquet; the eval questions never occur
  in SFT, PRM or RL training.

Everything is saved with ``save_pretrained`` (safetensors) under one folder with a ``testbed.json`` manifest
(settings, measured figures, build environment).

**Pinned testbeds.** A from-scratch build lands where float rounding (CPU, thread count, library versions) takes it,
so each version is built once and committed as a small artefact, ``testbed_artifacts/v<version>/`` at the repository
root (not installed by pip), with ``SHA256SUMS``. ``build_testbed(out)`` copies it into ``out`` (default
``$VERL_PRPO_CACHE/testbed``) after verifying every checksum, and trains from scratch only with ``rebuild=True``
(``--rebuild``) or for settings no artefact has. Command line: ``python -m examples.credit_assignment.build [--out DIR]
[--rebuild] [--pin]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from examples.credit_assignment import task

logger = logging.getLogger(__name__)

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
STEP_TAG = "<extra_0>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# one pre-token per digit, per word (with its leading space), per run of symbols, per run of newlines
PRE_TOKEN_PATTERN = r"\d|[\r\n]+| ?[A-Za-z]+| ?[^\sA-Za-z\d]+|\s+"
DATA_SOURCE = "verl_prpo/chain_arithmetic"
DEFAULT_DIR = Path(os.environ.get("VERL_PRPO_CACHE", Path.home() / ".cache" / "verl_prpo")) / "testbed"
ARTIFACTS_ENV = "VERL_PRPO_TESTBED_ARTIFACTS"
CHECKSUMS = "SHA256SUMS"
PINNED_PARTS = ("tokenizer", "policy", "prm", "data")  # with testbed.json: what a pinned testbed holds
REQUIRED_FILES = ("tokenizer/tokenizer.json", "policy/config.json", "policy/model.safetensors", "prm/config.json",
                  "prm/model.safetensors", "data/train.parquet", "data/eval.parquet", "data/eval.jsonl")


@dataclass(frozen=True)
class TestbedSettings:
    """Everything that determines the assets (the cache key)."""

    seed: int = 0
    p_err: float = 0.25  # noisy solver: probability that a step's result is wrong
    n_rl_train: int = 2000  # RL prompts
    n_eval: int = 200  # held-out problems
    policy_hidden: int = 96
    policy_layers: int = 3
    # head size hidden / heads = 32: vLLM's CPU attention accepts 32, 64, 80, 96, 112, 128 (version 2's 4 heads of 24
    # were refused). One KV head (K and V 96 x 32 per layer) keeps the size of version 2's 2 x 24 (361k parameters
    # against 370k); the attention computes the same 96 query dimensions.
    policy_heads: int = 3
    policy_kv_heads: int = 1
    # 800 steps left the policy short of convergence, where float rounding (CPU, thread count) moved it between
    # 0.18 and 0.33 sampled / 0.44 and 0.83 greedy accuracy; 1600 land at 0.30-0.41 / 0.96-0.97 (seeds 0-1, 1-2 threads)
    sft_steps: int = 1600
    prm_steps: int = 1600
    batch_size: int = 64
    lr: float = 3e-3
    prm_lr: float = 3e-4  # from the 1600-step policy's body: 0.931 held-out step accuracy (1e-3: 0.872, 3e-3: 0.898)
    max_response_length: int = 64
    version: int = 3  # 2: sft_steps 800 -> 1600, prm_lr 1e-3 -> 3e-4; 3: 3 heads of 32 (1 KV head), was 4 of 24 (2 KV)


@dataclass
class Testbed:
    root: Path
    settings: TestbedSettings
    manifest: dict = field(default_factory=dict)

    policy_dir = property(lambda self: self.root / "policy")
    prm_dir = property(lambda self: self.root / "prm")
    train_parquet = property(lambda self: self.root / "data" / "train.parquet")
    eval_parquet = property(lambda self: self.root / "data" / "eval.parquet")
    eval_jsonl = property(lambda self: self.root / "data" / "eval.jsonl")
    origin = property(lambda self: self.manifest.get("origin"))  # "pinned" (a verified copy) or "built" (here)

    def eval_problems(self) -> list[task.Problem]:
        rows = [json.loads(line) for line in self.eval_jsonl.read_text().splitlines() if line.strip()]
        return [task.Problem(r["start"], tuple((o, b) for o, b in r["ops"])) for r in rows]


# ---------------------------------------------------------------------------------------------------- tokenizer
def _corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = ["The answer is \\boxed{0}", "user", "assistant", "system"]
    for _ in range(3000):
        p = task.sample_problem(rng)
        texts += [p.question, task.corrupt_solution(p, rng, 0.3)]
    return texts


def build_tokenizer(out_dir: Path, seed: int = 0):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRE_TOKEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[PAD_TOKEN, IM_START, IM_END, STEP_TAG],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token=IM_END, bos_token=None,
                                   unk_token=None, additional_special_tokens=[IM_START, STEP_TAG])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def _qwen2_config(tokenizer, s: TestbedSettings, **extra):
    from transformers import Qwen2Config

    if s.policy_hidden % s.policy_heads or s.policy_heads % s.policy_kv_heads:
        raise ValueError(f"policy_hidden ({s.policy_hidden}) must be a multiple of policy_heads ({s.policy_heads}) and "
                         f"policy_heads a multiple of policy_kv_heads ({s.policy_kv_heads})")
    return Qwen2Config(vocab_size=(len(tokenizer) + 63) // 64 * 64, hidden_size=s.policy_hidden,
                       intermediate_size=s.policy_hidden * 3, num_hidden_layers=s.policy_layers,
                       num_attention_heads=s.policy_heads, num_key_value_heads=s.policy_kv_heads,
                       max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=True,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                       bos_token_id=tokenizer.pad_token_id, **extra)


def _lr_at(step: int, total: int, lr: float) -> float:
    warm = max(1, total // 20)
    if step < warm:
        return lr * (step + 1) / warm
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def progress(message: str) -> None:
    """A build progress line: logged, and printed to stderr when the caller configured no logging (the quickstart's
    first use would otherwise train for many minutes in silence)."""
    logger.info(message)
    if not logging.getLogger().handlers and not logger.handlers:
        print(message, file=sys.stderr, flush=True)


def _fit(model, next_loss, *, steps: int, lr: float, name: str, log_every: int) -> None:
    """The training loop of the SFT policy and of the PRM: AdamW (weight decay 0.01, betas 0.9/0.98), linear
    warm-up then cosine decay (``_lr_at``), gradient norm clipped at 1. ``next_loss()`` builds a fresh batch and
    returns its loss. Reports progress (step, loss, elapsed and estimated remaining time) every ``log_every`` steps
    (``progress``)."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    model.train()
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr)
        loss = next_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % log_every == 0 or step == steps - 1:
            elapsed = time.time() - t0
            left = elapsed / (step + 1) * (steps - step - 1)
            progress(f"{name}: step {step + 1}/{steps}, loss {loss.item():.4f}, {elapsed / 60:.1f} min elapsed, "
                     f"about {left / 60:.1f} min left")
    model.eval()


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------- policy
prompt_ids = task.prompt_ids  # the prompt is the task's (kept here for older imports)


def train_policy(out_dir: Path, tokenizer, s: TestbedSettings, exclude: set[str], log_every: int = 160):
    """SFT from scratch on noisy-solver solutions (loss on response tokens; fresh problems every batch)."""
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    torch.manual_seed(s.seed)
    rng = random.Random(s.seed + 11)
    model = Qwen2ForCausalLM(_qwen2_config(tokenizer, s))

    def sft_loss():
        seqs, starts = [], []
        while len(seqs) < s.batch_size:
            p = task.sample_problem(rng)
            if p.question in exclude:
                continue
            q = prompt_ids(tokenizer, p.question)
            a = tokenizer(task.noisy_solution(p, rng, s.p_err), add_special_tokens=False)["input_ids"]
            seqs.append(q + a + [tokenizer.eos_token_id])
            starts.append(len(q))
        L = max(map(len, seqs))
        ids = torch.full((len(seqs), L), tokenizer.pad_token_id)
        labels = torch.full((len(seqs), L), -100)
        att = torch.zeros((len(seqs), L), dtype=torch.long)
        for i, (x, st) in enumerate(zip(seqs, starts)):
            ids[i, : len(x)] = torch.tensor(x)
            labels[i, st: len(x)] = torch.tensor(x[st:])
            att[i, : len(x)] = 1
        return model(input_ids=ids, attention_mask=att, labels=labels).loss

    t0 = time.time()
    _fit(model, sft_loss, steps=s.sft_steps, lr=s.lr, name="policy SFT", log_every=log_every)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model, time.time() - t0


# ---------------------------------------------------------------------------------------------------- PRM
def prm_example(adapter, problem: task.Problem, solution: str):
    """PRM input ids, score positions and step labels of one solution, as the plugin's adapter builds them.

    The segments are the solution's paragraphs with their ``"\\n\\n"`` (what ``newline`` segmentation of the policy
    tokens decodes to).
    """
    steps = task.split_steps(solution)
    labels = task.step_labels(problem, steps)
    segments = [st + task.STEP_SEPARATOR for st in steps[:-1]] + [steps[-1]]
    x = adapter.build_inputs(problem.question, segments)
    return x.input_ids, x.score_positions, labels


def _prm_training_solution(p: task.Problem, rng: random.Random) -> str:
    """Mostly noisy-solver solutions with more wrong results (the errors a policy trained on that solver makes),
    some with other corruptions (miscopied operand, wrong operation, skipped step, wrong boxed value)."""
    if rng.random() < 0.8:
        return task.noisy_solution(p, rng, 0.35)
    return task.corrupt_solution(p, rng, 0.2)


def _prm_batch(adapter, rng, s: TestbedSettings, exclude: set[str], n: int):
    rows = []
    while len(rows) < n:
        p = task.sample_problem(rng)
        if p.question in exclude:
            continue
        sol = _prm_training_solution(p, rng)
        rows.append(prm_example(adapter, p, sol))
    return pad_prm_rows(adapter, rows)


def pad_prm_rows(adapter, rows: list[tuple[list[int], list[int], list]]):
    """Right-padded ``(ids, attention, labels)`` (B, L) tensors from rows of (input ids, label positions, labels);
    positions without a label get -100 (ignored by the loss)."""
    import torch

    n, L = len(rows), max(len(r[0]) for r in rows)
    ids = torch.full((n, L), adapter.pad_token_id)
    att = torch.zeros((n, L), dtype=torch.long)
    labels = torch.full((n, L), -100)
    for i, (x, pos, lab) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        att[i, : len(x)] = 1
        labels[i, pos] = torch.tensor([int(v) for v in lab])
    return ids, att, labels


def _auc(scores: list[float], labels: list[int]) -> float:
    """Area under the ROC curve (probability a random positive outranks a random negative; ties count 1/2)."""
    pairs = sorted(zip(scores, labels))
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + j + 1) / 2  # 1-based average rank of the tie block
        rank_sum += avg_rank * sum(lab for _, lab in pairs[i:j])
        i = j
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def train_prm(out_dir: Path, tokenizer, s: TestbedSettings, exclude: set[str], eval_problems, policy_dir: Path,
              log_every: int = 160):
    """Train the PRM on step labels (body initialised from the policy at ``policy_dir``); held-out step accuracy
    and AUC on solutions of the eval problems."""
    import torch
    from transformers import Qwen2ForTokenClassification
    from transformers.utils import logging as hf_logging

    from verl_prpo.prm.adapters import TokenClassificationPRMAdapter

    torch.manual_seed(s.seed + 1)
    rng = random.Random(s.seed + 22)
    # like real PRMs (Qwen2.5-Math-PRM starts from Qwen2.5-Math-Instruct), the body starts from the SFT policy; the
    # 2-class head is new. A PRM trained from scratch barely beats the constant predictor in the same budget.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the head is new by design: transformers would print a "MISSING" load report
    try:
        model = Qwen2ForTokenClassification.from_pretrained(
            policy_dir, num_labels=2, id2label={0: "negative", 1: "positive"},
            label2id={"negative": 0, "positive": 1}, torch_dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.step_separator = STEP_TAG
    adapter = TokenClassificationPRMAdapter(model, tokenizer, step_separator=STEP_TAG, max_length=512,
                                            max_tokens_per_batch=512)

    def prm_loss():
        ids, att, labels = _prm_batch(adapter, rng, s, exclude, s.batch_size)
        logits = model(input_ids=ids, attention_mask=att).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1), ignore_index=-100)

    t0 = time.time()
    _fit(model, prm_loss, steps=s.prm_steps, lr=s.prm_lr, name="PRM", log_every=log_every)
    wall = time.time() - t0
    # held-out: solutions (noisy and corrupted) of the eval problems, scored through the adapter itself
    erng = random.Random(s.seed + 33)
    questions, segs, labels = [], [], []
    for p in eval_problems:
        for sol in (_prm_training_solution(p, erng), _prm_training_solution(p, erng)):
            steps = task.split_steps(sol)
            questions.append(p.question)
            segs.append([st + task.STEP_SEPARATOR for st in steps[:-1]] + [steps[-1]])
            labels.extend(int(v) for v in task.step_labels(p, steps))
    with torch.no_grad():
        scores = [v for row in adapter.score(questions, segs) for v in row]
    acc = sum((sc > 0.5) == bool(lab) for sc, lab in zip(scores, labels)) / len(labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model, {"step_accuracy": acc, "step_auc": _auc(scores, labels), "eval_steps": len(labels),
                   "positive_fraction": sum(labels) / len(labels), "train_s": wall}


# ---------------------------------------------------------------------------------------------------- data
def write_parquet(problems: list[task.Problem], path: Path, split: str) -> Path:
    import pandas as pd

    records = [{
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": p.question}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(p.answer)},
        "extra_info": {"split": split, "index": i, "question": p.question},
    } for i, p in enumerate(problems)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame.from_records(records).to_parquet(path)
    return path


def _policy_settings(s: TestbedSettings) -> dict:
    d = asdict(s)
    return {k: d[k] for k in ("seed", "p_err", "n_eval", "policy_hidden", "policy_layers", "policy_heads",
                              "policy_kv_heads", "sft_steps", "batch_size", "lr", "version")}


# ---------------------------------------------------------------------------------------------------- pinned artefact
class PinnedTestbedError(RuntimeError):
    """A pinned testbed artefact whose files do not match its ``SHA256SUMS``."""


def artifacts_dir() -> Path:
    """Where the pinned testbeds are: ``$VERL_PRPO_TESTBED_ARTIFACTS``, else ``testbed_artifacts/`` of the repository
    checkout this package runs from (pip does not install that folder; a non-editable install finds none)."""
    env = os.environ.get(ARTIFACTS_ENV, "").strip()
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / "testbed_artifacts"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _testbed_files(root: Path) -> list[str]:
    """The files that make a testbed (relative POSIX paths): models, tokenizer, data and the manifest; not the
    build's stage marker or training runs."""
    files = sorted(p.relative_to(root).as_posix() for part in PINNED_PARTS for p in (root / part).rglob("*")
                   if p.is_file())
    return files + ["testbed.json"]


def read_checksums(folder: Path) -> dict[str, str]:
    """``SHA256SUMS`` of ``folder`` (``sha256sum`` format: hex digest, two spaces, relative path) as {path: digest}."""
    path = folder / CHECKSUMS
    if not path.exists():
        raise PinnedTestbedError(f"pinned testbed {folder} has no {CHECKSUMS}; restore the folder from git "
                                 "(git checkout -- <folder>) or rebuild with python -m examples.credit_assignment.build --rebuild")
    sums = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or not rel:
            raise PinnedTestbedError(f"{path}, line {n}: expected '<sha256>  <path>', got {line!r}")
        sums[rel] = digest
    return sums


def checksum_mismatches(folder: Path, sums: dict[str, str]) -> list[str]:
    """One line per file of ``sums`` that is missing from ``folder`` or has another SHA-256 (empty when all match)."""
    bad = []
    for rel, want in sums.items():
        f = folder / rel
        if not f.is_file():
            bad.append(f"{rel}: missing")
        elif (got := _sha256(f)) != want:
            bad.append(f"{rel}: SHA-256 {got}, expected {want}")
    return bad


def pinned_testbed(settings: TestbedSettings, artifacts: Path | str | None = None) -> Path | None:
    """The pinned artefact folder for ``settings`` (``<artifacts>/v<version>``), checksums verified; ``None`` when
    there is none or it was built with other settings. Raises ``PinnedTestbedError`` when a file does not match."""
    root = (Path(artifacts) if artifacts is not None else artifacts_dir()) / f"v{settings.version}"
    marker = root / "testbed.json"
    if not marker.exists():
        return None
    if json.loads(marker.read_text()).get("settings") != asdict(settings):
        return None
    bad = checksum_mismatches(root, read_checksums(root))
    if bad:
        raise PinnedTestbedError(
            f"pinned testbed {root} does not match its {CHECKSUMS}:\n  " + "\n  ".join(bad) + "\nThe files were "
            "changed or damaged (a Git LFS pointer, a line-ending conversion, a partial checkout?). Restore them with "
            f"git checkout -- {root}, or build from scratch with python -m examples.credit_assignment.build --rebuild.")
    return root


def _install_pinned(src: Path, dest: Path, sums: dict[str, str]) -> None:
    """Copy the pinned files into ``dest`` (the testbed parts there are replaced; training runs are kept)."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "testbed.json").unlink(missing_ok=True)  # written last: a half-copied folder has no manifest
    (dest / "policy_stage.json").unlink(missing_ok=True)
    for part in PINNED_PARTS:
        shutil.rmtree(dest / part, ignore_errors=True)
    for rel in sorted(sums, key=lambda r: r == "testbed.json"):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, dest / rel)
    shutil.copyfile(src / CHECKSUMS, dest / CHECKSUMS)
    bad = checksum_mismatches(dest, sums)
    if bad:
        raise PinnedTestbedError(f"copy of the pinned testbed {src} into {dest} does not match:\n  " + "\n  ".join(bad))


def pin_testbed(tb: Testbed, artifacts: Path | str | None = None) -> Path:
    """Write the testbed ``tb`` as the pinned artefact ``<artifacts>/v<version>``: its files, the manifest (origin
    ``pinned``), ``SHA256SUMS`` and a README with the build command. Refuses to overwrite an existing artefact (a
    changed testbed is a new version)."""
    dest = (Path(artifacts) if artifacts is not None else artifacts_dir()) / f"v{tb.settings.version}"
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} exists: a pinned testbed is never overwritten; bump TestbedSettings.version "
                              "or remove the folder on purpose")
    if tb.manifest.get("settings") != asdict(tb.settings):
        raise ValueError(f"{tb.root} holds no built testbed with these settings")
    files = _testbed_files(tb.root)
    missing = sorted(set(REQUIRED_FILES) - set(files))
    if missing:
        raise ValueError(f"{tb.root} is not a complete testbed: {missing} missing")
    dest.mkdir(parents=True, exist_ok=True)
    for rel in files[:-1]:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tb.root / rel, dest / rel)
    manifest = {**tb.manifest, "origin": "pinned"}
    (dest / "testbed.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (dest / CHECKSUMS).write_text("".join(f"{_sha256(dest / rel)}  {rel}\n" for rel in files))
    v, pol, prm, build = tb.settings.version, manifest["policy"], manifest["prm"], manifest.get("build", {})
    command = " ".join([*(f"{key}={val}" for key, val in build.get("env", {}).items()), str(build.get("command"))])
    (dest / "README.md").write_text(
        f"# Pinned testbed, version {v}\n\n"
        "The credit-assignment testbed (`examples/credit_assignment/`) as built once, so that it is the same on every machine: "
        "`build_testbed()` copies this folder into the cache when the settings in `testbed.json` are its own, after "
        f"checking every file against `{CHECKSUMS}` (`sha256sum -c {CHECKSUMS}` here does the same check).\n\n"
        f"- policy: {pol['params']} parameters, SFT sampled accuracy {pol['sft_accuracy']:.3f} (avg@4, T = 1), "
        f"greedy {pol['sft_greedy_accuracy']:.3f} on the 200 held-out problems\n"
        f"- PRM: {prm['params']} parameters, held-out step accuracy {prm['step_accuracy']:.3f}, "
        f"AUC {prm['step_auc']:.3f}\n"
        f"- built in {manifest['build_s']:.0f} s with `{command}`, {build.get('torch_threads')} torch "
        f"thread(s), torch {build.get('torch')} (the rest under `build` in `testbed.json`)\n\n"
        "Rebuild from scratch (the figures then depend on the machine, the thread count and the library versions): "
        "`python -m examples.credit_assignment.build --rebuild --out DIR`; pin a new version (after bumping "
        "`TestbedSettings.version`): `python -m examples.credit_assignment.build --rebuild --out DIR --pin`.\n")
    bad = checksum_mismatches(dest, read_checksums(dest))
    if bad:
        raise PinnedTestbedError(f"{dest} was written but does not match its checksums:\n  " + "\n  ".join(bad))
    return dest


def _read_manifest(root: Path) -> dict | None:
    marker = root / "testbed.json"
    return json.loads(marker.read_text()) if marker.exists() else None


def build_testbed(out: Path | str = DEFAULT_DIR, settings: TestbedSettings | None = None, *, rebuild: bool = False,
                  artifacts: Path | str | None = None) -> Testbed:
    """The testbed under ``out`` for ``settings`` (default: the current version), in this order:

    1. ``rebuild``: trained from scratch (manifest origin ``built``);
    2. ``out`` holds a from-scratch build with these settings: reused as it is;
    3. a pinned artefact has these settings (``<artifacts>/v<version>``, default :func:`artifacts_dir`): its
       checksums are verified (``PinnedTestbedError`` on a mismatch) and it is copied into ``out``, unless ``out``
       already holds an identical copy (origin ``pinned``);
    4. ``out`` holds a testbed with these settings: reused;
    5. otherwise trained from scratch (about 7 min on 2 cores), with a logged warning.
    """
    s = settings or TestbedSettings()
    tb = Testbed(Path(out).expanduser().resolve(), s)
    if rebuild:
        return _build_from_scratch(tb, rebuild=True)
    cached = _read_manifest(tb.root)
    same_settings = cached is not None and cached.get("settings") == asdict(s)
    if same_settings and cached.get("origin") == "built":
        logger.info("testbed: %s is a local from-scratch build (version %d); remove it to use the pinned one",
                    tb.root, s.version)
        tb.manifest = cached
        return tb
    pinned = pinned_testbed(s, artifacts)
    if pinned is not None:
        sums = read_checksums(pinned)
        if not (same_settings and not checksum_mismatches(tb.root, sums)):
            logger.info("testbed: installing the pinned testbed %s into %s", pinned, tb.root)
            _install_pinned(pinned, tb.root, sums)
        tb.manifest = _read_manifest(tb.root)
        return tb
    if same_settings:
        tb.manifest = cached
        return tb
    logger.warning("testbed: no pinned testbed with these settings in %s; training it from scratch (about 7 min on 2 "
                   "cores; its figures depend on the machine and thread count)",
                   Path(artifacts) if artifacts is not None else artifacts_dir())
    return _build_from_scratch(tb, rebuild=False)


def _build_info() -> dict:
    """Where and with what a from-scratch build ran (the figures depend on float rounding, hence on all of it)."""
    import platform
    import subprocess
    import sys

    import tokenizers
    import torch
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"command": " ".join(["python -m examples.credit_assignment.build", *sys.argv[1:]]) if sys.argv[0].endswith(
                "build.py") else None,
            "commit": commit, "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "python": platform.python_version(),
            "machine": f"{platform.machine()} {platform.processor() or ''} ({os.cpu_count()} CPUs)".replace("  ", " "),
            "torch_threads": torch.get_num_threads(),
            "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}}


def _build_from_scratch(tb: Testbed, *, rebuild: bool) -> Testbed:
    s = tb.settings
    build_info = _build_info()  # at the start: the commit whose code trains
    marker = tb.root / "testbed.json"
    force = rebuild
    t0 = time.time()
    tb.root.mkdir(parents=True, exist_ok=True)
    eval_set = task.problems(s.n_eval, seed=s.seed + 1000)
    exclude = {p.question for p in eval_set}
    rl_train = task.problems(s.n_rl_train, seed=s.seed + 2000, exclude=exclude)
    write_parquet(rl_train, tb.train_parquet, "train")
    write_parquet(eval_set, tb.eval_parquet, "test")
    tb.eval_jsonl.write_text("".join(json.dumps({"start": p.start, "ops": list(p.ops)}) + "\n" for p in eval_set))
    tokenizer = build_tokenizer(tb.root / "tokenizer", s.seed)
    stage = tb.root / "policy_stage.json"  # a finished policy is reused when only the PRM stage must be redone
    if not force and stage.exists() and json.loads(stage.read_text()).get("settings") == _policy_settings(s):
        from transformers import Qwen2ForCausalLM

        policy = Qwen2ForCausalLM.from_pretrained(tb.policy_dir)
        sft_s = json.loads(stage.read_text())["sft_s"]
    else:
        progress(f"testbed build, stage 1/2: the policy ({s.sft_steps} SFT steps; the whole build takes about 50 "
                 "min on one core) ...")
        policy, sft_s = train_policy(tb.policy_dir, tokenizer, s, exclude)
        stage.write_text(json.dumps({"settings": _policy_settings(s), "sft_s": sft_s}))
    progress(f"testbed build, stage 2/2: the PRM ({s.prm_steps} steps) ...")
    prm, prm_stats = train_prm(tb.prm_dir, tokenizer, s, exclude, eval_set, tb.policy_dir)
    from examples.credit_assignment.evaluate import evaluate_policy

    sft_eval = evaluate_policy(policy, tokenizer, eval_set, k=4, seed=s.seed, max_new_tokens=s.max_response_length)
    tb.manifest = {
        "settings": asdict(s),
        "task": {"name": "chain_arithmetic", "ops": "2-4 of add 1-9, subtract 1-9, multiply by 2-3",
                 "values": f"0-{task.MAX_VALUE}", "noisy_solver_p_err": s.p_err,
                 "rl_train_problems": s.n_rl_train, "eval_problems": s.n_eval, "vocab": len(tokenizer)},
        "policy": {"params": _params(policy), "sft_accuracy": sft_eval["sampled_accuracy"],
                   "sft_greedy_accuracy": sft_eval["greedy_accuracy"], "sft_s": sft_s},
        "prm": {"params": _params(prm), **prm_stats},
        "build_s": time.time() - t0,
        "origin": "built",
        "build": build_info,
    }
    marker.write_text(json.dumps(tb.manifest, indent=1))
    progress(f"testbed built in {(time.time() - t0) / 60:.0f} min: {json.dumps(tb.manifest['policy'])}")
    return tb


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DEFAULT_DIR))
    p.add_argument("--rebuild", action="store_true",
                   help="train everything from scratch instead of copying the pinned testbed")
    p.add_argument("--pin", action="store_true",
                   help="then write the testbed in --out as the pinned artefact <artifacts>/v<version> (maintainers)")
    p.add_argument("--artifacts", default=None,
                   help=f"folder of the pinned testbeds (default: ${ARTIFACTS_ENV}, else the checkout's testbed_artifacts/)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    tb = build_testbed(args.out, rebuild=args.rebuild, artifacts=args.artifacts)
    if args.pin:
        logger.info("testbed: pinned as %s", pin_testbed(tb, args.artifacts))
    print(json.dumps(tb.manifest, indent=1))


if __name__ == "__main__":
    main()
