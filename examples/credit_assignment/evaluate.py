"""Held-out evaluation of a testbed policy: greedy and sampled accuracy, response length, entropy.

``evaluate_policy`` generates with Hugging Face ``generate`` (batched, left-padded) on the held-out problems:

* ``greedy_accuracy``: one greedy answer per problem;
* ``sampled_accuracy``: mean over ``k`` samples per problem at the rollout temperature (avg@k);
* ``pass_at_k``: fraction of problems with at least one correct sample among the ``k``;
* ``response_length``: mean number of generated tokens of the samples (EOS included);
* ``entropy``: mean full-vocabulary entropy of the policy at the sampled tokens' positions.

Grading is the task's own (:func:`examples.credit_assignment.task.is_correct`: the last ``\\boxed{}`` equals the answer); the
training reward is the plugin's ``prpo`` reward manager (math-verify), which agrees on this task (tested).
"""

from __future__ import annotations

from pathlib import Path

import torch

from examples.credit_assignment import task


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids and attention mask of left-padded token lists."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        att[i, width - len(r):] = 1
    return ids, att


def response_valid_mask(responses: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[B, T] bool: the response tokens up to and including the first EOS."""
    is_eos = responses == eos_id
    return (is_eos.long().cumsum(1) - is_eos.long()) == 0


def _prompts(tokenizer, problems, device):
    ids, att = left_pad([task.prompt_ids(tokenizer, p.question) for p in problems], tokenizer.pad_token_id)
    return ids.to(device), att.to(device)


@torch.no_grad()
def _generate(model, tokenizer, problems, *, do_sample: bool, temperature: float, max_new_tokens: int,
              batch_size: int = 256):
    texts, lengths, ent_sum, ent_n = [], [], 0.0, 0
    eos = tokenizer.eos_token_id
    for b in range(0, len(problems), batch_size):
        chunk = problems[b: b + batch_size]
        ids, att = _prompts(tokenizer, chunk, model.device)
        kw = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if do_sample else dict(do_sample=False)
        out = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=max_new_tokens, eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id, return_dict_in_generate=True, output_logits=True,
                             **kw)
        gen = out.sequences[:, ids.shape[1]:]
        valid = response_valid_mask(gen, eos)
        lengths += valid.sum(1).tolist()
        logits = torch.stack(out.logits, 1).float() / (temperature if do_sample else 1.0)
        logp = torch.log_softmax(logits, -1)
        ent = -(logp.exp() * logp).sum(-1)
        ent_sum += float(ent[valid].sum())
        ent_n += int(valid.sum())
        for row, v in zip(gen, valid):
            texts.append(tokenizer.decode(row[v], skip_special_tokens=True))
    return texts, lengths, ent_sum / max(ent_n, 1)


def evaluate_policy(model, tokenizer, problems: list[task.Problem], *, k: int = 4, temperature: float = 1.0,
                    max_new_tokens: int = 64, seed: int = 0, per_problem: bool = False,
                    per_sample: bool = False) -> dict:
    """Greedy and sampled held-out metrics of ``model`` (see the module docstring).

    The samples come from ``torch.manual_seed(seed)`` in a fixed order (problem-major, ``k`` per problem, batches of
    256): two policies evaluated with the same seed use the same random numbers for the same sample (common random
    numbers), so a paired difference between them has less noise than two independent evaluations. With
    ``per_problem`` the result also holds ``correct_counts`` (per problem: correct samples out of ``k``) and
    ``greedy_correct`` (per problem: 0/1), which the grid's confidence intervals resample; with ``per_sample`` also
    ``sample_correct`` (per problem, the k samples' 0/1 in sampling order).
    """
    model.eval()
    greedy, _, _ = _generate(model, tokenizer, problems, do_sample=False, temperature=1.0,
                             max_new_tokens=max_new_tokens)
    torch.manual_seed(seed)
    repeated = [p for p in problems for _ in range(k)]
    sampled, lengths, entropy = _generate(model, tokenizer, repeated, do_sample=True, temperature=temperature,
                                          max_new_tokens=max_new_tokens)
    correct = [task.is_correct(p, t) for p, t in zip(repeated, sampled)]
    counts = [sum(correct[i * k: (i + 1) * k]) for i in range(len(problems))]
    greedy_ok = [int(task.is_correct(p, t)) for p, t in zip(problems, greedy)]
    out = {
        "greedy_accuracy": sum(greedy_ok) / len(problems),
        "sampled_accuracy": sum(correct) / len(correct),
        "pass_at_k": sum(c > 0 for c in counts) / len(problems),
        "response_length": sum(lengths) / len(lengths),
        "entropy": entropy,
    }
    if per_problem:
        out.update(k=k, sampling_seed=seed, correct_counts=counts, greedy_correct=greedy_ok)
    if per_sample:
        out["sample_correct"] = [[int(c) for c in correct[i * k: (i + 1) * k]] for i in range(len(problems))]
    return out


def load_policy(policy_dir: Path | str, actor_checkpoint: Path | str | None = None):
    """The SFT policy from ``policy_dir``, or with the weights of a verl actor checkpoint (world size 1)."""
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    policy_dir = Path(policy_dir)
    model = Qwen2ForCausalLM.from_pretrained(policy_dir, torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    if actor_checkpoint is not None:
        shard = Path(actor_checkpoint) / "actor" / "model_world_size_1_rank_0.pt"
        if not shard.exists():
            raise FileNotFoundError(f"no world-size-1 actor shard at {shard}")
        sd = torch.load(shard, map_location="cpu", weights_only=False)
        sd = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).float() for k, v in sd.items()}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [m for m in missing if m != "lm_head.weight"]  # tied to the embedding
        if missing or unexpected:
            raise ValueError(f"checkpoint {shard} does not match the policy: missing {missing}, "
                             f"unexpected {unexpected}")
        model.tie_weights()
    return model, tokenizer


@torch.no_grad()
def correct_solution_logprob(model, tokenizer, problems: list[task.Problem], batch_size: int = 200) -> float:
    """Mean over problems of log pi(correct solution + EOS | prompt), teacher-forced: a low-variance measure of
    whether training moved the policy towards right steps (it rises as RL sharpens the step distributions)."""
    total, model_device = 0.0, model.device
    model.eval()
    for b in range(0, len(problems), batch_size):
        chunk = problems[b: b + batch_size]
        rows = []
        for p in chunk:
            q = task.prompt_ids(tokenizer, p.question)
            a = tokenizer(task.format_solution(p), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            rows.append((q, a))
        L = max(len(q) + len(a) for q, a in rows)
        ids = torch.full((len(rows), L), tokenizer.pad_token_id)
        att = torch.zeros((len(rows), L), dtype=torch.long)
        target = torch.zeros((len(rows), L), dtype=torch.bool)
        for i, (q, a) in enumerate(rows):
            ids[i, : len(q) + len(a)] = torch.tensor(q + a)
            att[i, : len(q) + len(a)] = 1
            target[i, len(q): len(q) + len(a)] = True
        logits = model(input_ids=ids.to(model_device), attention_mask=att.to(model_device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None].to(model_device)).squeeze(-1)
        total += float((logp * target[:, 1:].to(model_device)).sum())
    return total / len(problems)
