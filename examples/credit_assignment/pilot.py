"""In-process GRPO on the testbed policy, without verl: a seconds-per-step pilot for sizing the grid's budget.

    python -m examples.credit_assignment.pilot --prompts 16 --n 16 --lr 5e-5 --steps 20 --seed 0

The grid's cells go through verl's ``main_ppo`` (minutes of start-up, ~10 s and more per step on 2 cores). Before
spending that on every method, this loop answers "does GRPO learn at this budget at all?" in a minute or two: the
same SFT policy, the same RL prompts and grader, the same held-out evaluation (:mod:`examples.credit_assignment.evaluate`),
and GRPO as verl computes it for an on-policy step:

* ``n`` samples per prompt at temperature 1 (Hugging Face ``generate``, full vocabulary);
* reward +1 if the last ``\\boxed{}`` equals the answer, else -1 (the ``prpo`` reward manager's scale);
* ``A_i = (R_i - mean_g R) / (std_g R + eps)`` over the prompt's group (unbiased std, as verl);
* loss ``-sum_t A_i log pi(y_t) / #tokens`` over a mini-batch (verl's ``token-mean``; the PPO ratio is 1 on-policy,
  so clipping never acts on the first update and barely on the next), ``updates`` mini-batches per step;
* AdamW (weight decay 0.01, verl's actor default), gradient norm clipped at 1.

It prints one JSON line per evaluation. What it is not: verl (no PPO clipping across updates, no bf16 compute, no
old/new policy split). A budget at which this pilot does not learn will not learn in the grid either.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from examples.credit_assignment import task
from examples.credit_assignment.evaluate import left_pad, response_valid_mask  # noqa: F401  (re-exported for tests)


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's advantage of each sample: (R - group mean) / (group std + eps). ``rewards``: [G, n] -> [G, n]."""
    if rewards.shape[1] < 2:
        raise ValueError("GRPO needs at least 2 samples per prompt")
    return (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + eps)


def policy_gradient_loss(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, responses: torch.Tensor,
                         valid: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """``-sum A_i log pi(y_it) / #valid tokens`` (token-mean). ``prompt_*``: [B, P] left-padded; ``responses``,
    ``valid``: [B, T]; ``advantages``: [B]."""
    ids = torch.cat([prompt_ids, responses], 1)
    att = torch.cat([prompt_mask, valid.long()], 1)
    position_ids = (att.cumsum(1) - 1).clamp(min=0)  # what generate used for the left-padded rows
    logits = model(input_ids=ids, attention_mask=att, position_ids=position_ids).logits
    p = prompt_ids.shape[1]
    logp = torch.log_softmax(logits[:, p - 1:-1].float(), -1).gather(-1, responses[..., None]).squeeze(-1)
    m = valid.float()
    return -(advantages[:, None] * logp * m).sum() / m.sum().clamp(min=1.0)


def main(argv: list[str] | None = None) -> int:
    from examples.credit_assignment.build import DEFAULT_DIR, build_testbed, prompt_ids
    from examples.credit_assignment.evaluate import evaluate_policy, load_policy

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=16, help="prompts per step")
    ap.add_argument("--n", type=int, default=16, help="samples per prompt")
    ap.add_argument("--updates", type=int, default=2, help="mini-batches (optimizer steps) per step")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--k", type=int, default=4, help="held-out samples per problem")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--testbed", default=None)
    a = ap.parse_args(argv)
    if a.prompts % a.updates:
        ap.error("--prompts must be a multiple of --updates")

    torch.manual_seed(a.seed)
    tb = build_testbed(a.testbed or DEFAULT_DIR)
    model, tok = load_policy(tb.policy_dir)
    import pandas as pd

    train = pd.read_parquet(tb.train_parquet)
    questions = [p[0]["content"] for p in train["prompt"]]
    answers = [str(r["ground_truth"]) for r in train["reward_model"]]
    order = list(range(len(questions)))
    random.Random(a.seed).shuffle(order)
    if a.steps * a.prompts > len(order):
        ap.error(f"{a.steps} steps x {a.prompts} prompts exceed the {len(order)} RL prompts")
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    max_new = tb.settings.max_response_length

    def evaluate(step: int) -> None:
        ev = evaluate_policy(model, tok, tb.eval_problems(), k=a.k, seed=10_000 * a.seed + step, max_new_tokens=max_new)
        print(json.dumps({"step": step, **{k: round(v, 4) for k, v in ev.items()}}), flush=True)

    evaluate(0)
    for step in range(1, a.steps + 1):
        t0 = time.time()
        batch = order[(step - 1) * a.prompts: step * a.prompts]
        p_ids, p_att = left_pad([prompt_ids(tok, questions[i]) for i in batch for _ in range(a.n)], tok.pad_token_id)
        model.eval()
        with torch.no_grad():
            out = model.generate(input_ids=p_ids, attention_mask=p_att, max_new_tokens=max_new, do_sample=True,
                                 temperature=1.0, top_k=0, top_p=1.0, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
        responses = out[:, p_ids.shape[1]:]
        valid = response_valid_mask(responses, tok.eos_token_id)
        texts = [tok.decode(r[v], skip_special_tokens=True) for r, v in zip(responses, valid)]
        rewards = torch.tensor([1.0 if (task.boxed_answer(t) or "").strip() == answers[batch[j // a.n]] else -1.0
                                for j, t in enumerate(texts)]).view(a.prompts, a.n)
        adv = group_advantages(rewards).reshape(-1)
        model.train()
        rows = a.prompts * a.n // a.updates
        for u in range(a.updates):
            sl = slice(u * rows, (u + 1) * rows)
            loss = policy_gradient_loss(model, p_ids[sl], p_att[sl], responses[sl], valid[sl], adv[sl])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        print(json.dumps({"train_step": step, "reward": round(float(rewards.mean()), 4),
                          "s": round(time.time() - t0, 2)}), flush=True)
        if step % a.eval_every == 0 or step == a.steps:
            evaluate(step)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
