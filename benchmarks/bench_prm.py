"""PRM scoring cost: PRM tokens per policy response token, and throughput, on CPU with a tiny local PRM.

Compares
  * ``one pass, packed``   — ours: all segments of a response in ONE forward, responses packed by a token budget;
  * ``one pass / response``— ours without packing (budget = max_length, one forward per response);
  * ``naive per segment``  — one PRM call per segment that re-feeds the question and every earlier segment
    (the prefix) each time, reading the score at the last separator.

Then, with ragged responses (lengths uniform in [len/4, len]), the cost of each forward layout
(``PRMAdapter.forward_mode``) and of what the forward no longer does, one change at a time:

  * ``before``                — as the adapter was: padded with an attention mask, HF's default KV cache on;
  * ``- KV cache``            — ``use_cache=False`` (a scoring forward never reads the cache);
  * ``- attention mask``      — ``causal``: right padding needs no mask in a causal decoder (the default now);
  * ``packed rows``           — ``packed``: no padding, restarted position ids, block-diagonal mask;
  * ``input order``           — ``causal`` without sorting responses by length (what sorting saves);
  * ``bf16``                  — ``causal`` with the PRM in bfloat16 (on CPU the loader keeps float32).

Usage: ``python benchmarks/bench_prm.py [--responses 32 --response-len 512 --segments 6 --hidden-size 64]``.
Numbers depend on the machine and its load; the token ratios do not.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
import sys

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: the lab (examples/) is not installed


import torch


def _responses(policy_tok, n: int, length: int, n_segments: int, seed: int):
    """Arithmetic solution text tokenised with the policy tokenizer, cut into equal segments, EOS at the end."""
    from examples.credit_assignment.tiny_assets import arithmetic_problems

    rng = random.Random(seed)
    rows = arithmetic_problems(n * 8 + 50, seed=seed)
    questions, responses, seg_ids = [], [], []
    for i in range(n):
        text = ""
        while len(policy_tok(text, add_special_tokens=False)["input_ids"]) < length:
            text += rng.choice(rows)["solution"] + "\n\n"
        ids = policy_tok(text, add_special_tokens=False)["input_ids"][: length - 1] + [policy_tok.eos_token_id]
        cuts = [round(j * length / n_segments) for j in range(n_segments)] + [length]
        sid = torch.empty(length, dtype=torch.long)
        for s in range(n_segments):
            sid[cuts[s]: cuts[s + 1]] = s
        questions.append(rows[i]["problem"])
        responses.append(torch.tensor(ids))
        seg_ids.append(sid)
    return questions, torch.stack(responses), torch.ones(n, length, dtype=torch.long), torch.stack(seg_ids)


def _ragged(mask: torch.Tensor, seg: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut every response to a random length in [L/4, L] (mask 0 after it), renumbering its segments 0..S-1."""
    g = torch.Generator().manual_seed(seed)
    n, length = mask.shape
    keep = torch.randint(length // 4, length + 1, (n,), generator=g)
    valid = torch.arange(length).unsqueeze(0) < keep.unsqueeze(1)
    seg = torch.where(valid, seg, torch.full_like(seg, -1))
    return valid.long(), seg


def _layouts(adapter, policy_tok, responses, mask, seg, questions, repeats: int) -> list[tuple]:
    """(name, forwards, prm tokens, padded tokens, cpu seconds, wall seconds) of each forward layout on one batch.

    Rounds interleave the layouts (so a change of machine load hits all alike); each figure is the best round.
    CPU seconds (``time.process_time`` of this process, one torch thread) are what to compare on a shared
    machine: waiting for a core does not count.
    """
    from verl_prpo.prm import score_batch

    def run(mode, *, cache=False, sort=True, dtype=torch.float32):
        adapter.forward_mode = mode
        adapter.model.to(dtype)
        adapter._inspect_model()
        extra = dict(adapter._extra_kwargs)
        if cache:
            adapter._extra_kwargs = {}  # the model's default: use_cache=True
        plan = adapter._plan
        if not sort:
            def unsorted(inputs, packed=False):
                sizes = {len(x.input_ids) for x in inputs if x is not None}
                order = [i for i, x in enumerate(inputs) if x is not None and x.num_kept > 0]
                per = max(1, adapter.max_tokens_per_batch // max(sizes))
                return [order[k: k + per] for k in range(0, len(order), per)]
            adapter._plan = unsorted
        try:
            c0, w0 = time.process_time(), time.perf_counter()
            _, st = score_batch(adapter, policy_tok, responses, mask, seg, questions)
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        finally:
            adapter._plan = plan
            adapter._extra_kwargs = extra
            adapter.forward_mode = "auto"
            adapter.model.to(torch.float32)
        return st["model_calls"], st["prm_tokens"], st["padded_tokens"], cpu, wall

    variants = {"before (mask + KV cache)": dict(mode="masked", cache=True),
                "- KV cache": dict(mode="masked"),
                "- attention mask (now)": dict(mode="causal"),
                "packed rows": dict(mode="packed"),
                "input order (no sort)": dict(mode="causal", sort=False),
                "bf16": dict(mode="causal", dtype=torch.bfloat16)}
    best: dict[str, tuple] = {}
    for r in range(repeats + 1):  # round 0 is a warm-up
        for name, kw in variants.items():
            res = run(**kw)
            if r and (name not in best or res[3] < best[name][3]):
                best[name] = res
    return [(name,) + best[name] for name in variants]


def _time(fn, repeats: int):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--responses", type=int, default=32)
    p.add_argument("--response-len", type=int, default=512)
    p.add_argument("--segments", type=int, default=6, help="segments per response (k + 1)")
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--adapter", default="auto", choices=["auto", "qwen_math_prm", "token_classification"])
    p.add_argument("--max-tokens-per-batch", type=int, default=16384)
    p.add_argument("--layout-budget", type=int, default=2048,
                   help="token budget per forward in the layout comparison (several forwards per call)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--layouts-only", action="store_true", help="only the forward-layout comparison")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default; 1 is steadier on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer

    from examples.credit_assignment.tiny_assets import build_prm, build_tiny_assets
    from verl_prpo.prm import PRMConfig, load_prm, score_batch, segment_texts

    tmp = Path(tempfile.mkdtemp(prefix="bench_prm_"))
    assets = build_tiny_assets(tmp / "tiny")
    # the tokenizer as the trainer loads it (from the policy model directory)
    policy_tok = AutoTokenizer.from_pretrained(assets.policy_dir)
    prm_dir = assets.prm_dir
    if (args.hidden_size, args.num_layers) != (64, 2):
        prm_dir = tmp / "prm_big"
        build_prm(prm_dir, policy_tok, hidden_size=args.hidden_size, num_layers=args.num_layers)
    questions, responses, mask, seg = _responses(policy_tok, args.responses, args.response_len, args.segments,
                                                 args.seed)
    response_tokens = int(mask.sum())
    max_length = 4096
    base = dict(enable=True, model_path=str(prm_dir), adapter=args.adapter, max_length=max_length)
    packed = load_prm(PRMConfig(**base, max_tokens_per_batch=max(args.max_tokens_per_batch, max_length)), "cpu")
    unpacked = load_prm(PRMConfig(**base, max_tokens_per_batch=max_length), "cpu")
    # force one response per forward: the budget equals the longest single input
    texts = segment_texts(policy_tok, responses, mask, seg)
    longest = max(len(packed.build_inputs(q, s).input_ids) for q, s in zip(questions, texts))
    unpacked.max_tokens_per_batch = longest

    if not args.layouts_only:
        rows = []
        for name, adapter in (("one pass, packed", packed), ("one pass / response", unpacked)):
            t, (_, stats) = _time(lambda a=adapter: score_batch(a, policy_tok, responses, mask, seg, questions),
                                  args.repeats)
            rows.append((name, stats["model_calls"], stats["prm_tokens"], stats["padded_tokens"], t))

        def naive():
            calls = tokens = 0
            for q, segs in zip(questions, texts):
                for s in range(1, len(segs) + 1):
                    x = packed.build_inputs(q, segs[:s])
                    packed.score([q], [segs[:s]])
                    calls += 1
                    tokens += len(x.input_ids)
            return calls, tokens

        t, (calls, tokens) = _time(naive, max(1, args.repeats - 1))
        rows.append(("naive per segment", calls, tokens, tokens, t))

        # where the PRM tokens of one response come from (means over responses)
        n = len(questions)
        template = len(packed.build_inputs("", []).input_ids)
        question = sum(len(packed._encode(q)) for q in questions) / n
        sep = len(packed._encode(packed.step_separator)) * args.segments
        total = rows[0][2] / n
        breakdown = (f"per response: {total:.0f} PRM tokens = template {template} + question {question:.0f} + "
                     f"separators {sep} + segment text {total - template - question - sep:.0f} "
                     f"(policy response tokens {response_tokens / n:.0f}, EOS excluded from the text)")

        print(f"PRM {prm_dir.name} (hidden {args.hidden_size}, {args.num_layers} layers, adapter {packed.kind}), "
              f"{args.responses} responses x {args.response_len} tokens, {args.segments} segments each, "
              f"torch threads {torch.get_num_threads()}")
        header = (f"{'method':<22}{'forwards':>9}{'PRM tok/resp tok':>18}{'padded tok/resp tok':>21}"
                  f"{'seconds':>10}{'responses/s':>13}{'PRM tokens/s':>14}{'resp tokens/s':>15}")
        print(header)
        print("-" * len(header))
        for name, calls, prm_tokens, padded, t in rows:
            print(f"{name:<22}{calls:>9}{prm_tokens / response_tokens:>18.3f}{padded / response_tokens:>21.3f}"
                  f"{t:>10.3f}{args.responses / t:>13.1f}{prm_tokens / t:>14.0f}{response_tokens / t:>15.0f}")
        print(breakdown)

    mask_r, seg_r = _ragged(mask, seg, args.seed)
    rt = int(mask_r.sum())
    budget = packed.max_tokens_per_batch
    packed.max_tokens_per_batch = max(args.layout_budget, longest)
    rows = _layouts(packed, policy_tok, responses, mask_r, seg_r, questions, args.repeats)
    packed.max_tokens_per_batch = budget
    print(f"\nforward layouts, ragged responses ({rt / args.responses:.0f} of {args.response_len} tokens on average), "
          f"budget {max(args.layout_budget, longest)} tokens per forward, best of {args.repeats} interleaved rounds:")
    header = (f"{'layout':<26}{'forwards':>9}{'padded/real tokens':>20}{'CPU s':>9}{'vs before':>11}"
              f"{'PRM tokens/CPU s':>18}{'wall s':>9}")
    print(header)
    print("-" * len(header))
    c0 = rows[0][4]
    for name, calls, prm_tokens, padded, c, w in rows:
        print(f"{name:<26}{calls:>9}{padded / prm_tokens:>20.3f}{c:>9.3f}{c / c0:>11.3f}{prm_tokens / c:>18.0f}"
              f"{w:>9.3f}")


if __name__ == "__main__":
    main()
