"""GPU check: PRM scoring throughput at Qwen2.5-Math-PRM-7B's shape, the FLOP bound, and the estimators on CUDA.

Needs only ``torch`` and ``transformers`` (no verl, Ray or vLLM, no network): copy the repository (or just
``verl_prpo/`` and this file) to a bare GPU machine and run

    python benchmarks/gpu_check.py                      # full check, < 8 minutes on one H100/H200
    python benchmarks/gpu_check.py --tiny --responses 8  # seconds, also on CPU (tests/benchmarks/test_gpu_check.py)

What it prints:

1. PRM scoring throughput (tokens/s) of a randomly initialised model of Qwen2.5-Math-PRM-7B's exact shape
   (``Qwen2Model`` hidden 3584, intermediate 18944, 28 layers, 28 heads, 4 KV heads, vocab 152064, score head
   ``Linear(h, h) -> ReLU -> Linear(h, 2)``) in bf16, on a paper-sized batch (1024 responses, ~200 question +
   ~1000 response tokens, ragged, 6 steps each), through the plugin's own forward path
   (``PRMAdapter.score_inputs``: length-sorted token-budget batches, the forward layout of ``forward_mode``, one
   device-to-host copy). The PRM inputs are random token ids with a separator after each step, as the adapter
   builds them; tokenisation is not timed (no tokenizer without network; on CPU it is small, see
   ``benchmarks/bench_cpu_step.py``).
2. The projected PRM seconds per training step (one GPU, and data-parallel over ``--gpus``), and the PRM share
   of a paper-sized step (the paper's GRPO step: ``--grpo-step-s``, 46.8 s).
3. The FLOP bound: ``2 x non-embedding parameters x tokens`` at ``--peak-tflops`` (H200/H100 dense bf16: 989),
   the achieved TFLOP/s and its fraction of the peak.
4. The plugin's estimators on device tensors at 1024 x 4096 against the CPU result (time, max abs diff). They
   are imported from ``verl_prpo.estimators``; if that import fails the section says why and the rest stands.

The last line is ``GPU_CHECK=<json>`` with every figure. If the full batch would take longer than
``--max-seconds``, the timed pass scores a prefix of the (shuffled) batch and the projection is extrapolated
(said so in the output).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
import traceback

import torch

# the repository root, so that ``verl_prpo`` imports from a plain copy without installation
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Qwen/Qwen2.5-Math-PRM-7B config.json values
QWEN25_MATH_PRM_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                          num_key_value_heads=4, vocab_size=152064, max_position_embeddings=4096,
                          rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=1024, max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=10000.0,
            tie_word_embeddings=False)
#: ``<extra_0>``'s id in the Qwen2.5-Math-PRM tokenizer (any id works for a random model)
SEPARATOR_ID = 151651


class ScoreHeadPRM(torch.nn.Module):
    """Qwen2.5-Math-PRM's architecture: ``Qwen2Model`` + ``score = Linear(h, h) -> ReLU -> Linear(h, 2)``.

    Used when ``verl_prpo.prm.qwen_prm_model`` (the plugin's native loader of that architecture) is not there.
    """

    def __init__(self, config) -> None:
        super().__init__()
        from transformers import Qwen2Model

        self.config = config
        self.model = Qwen2Model(config)
        h = config.hidden_size
        self.score = torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.ReLU(), torch.nn.Linear(h, 2))

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, **kwargs):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=use_cache).last_hidden_state
        return self.score(hidden)


def build_model(shape: dict, device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, str]:
    from transformers import Qwen2Config

    config = Qwen2Config(**shape, num_labels=2)
    config._attn_implementation = "sdpa"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in dtype: no float32 copy of 7B parameters
    try:
        with torch.device(device):
            try:
                from verl_prpo.prm.qwen_prm_model import Qwen2ForProcessRewardModel

                model = Qwen2ForProcessRewardModel._from_config(config, dtype=dtype, attn_implementation="sdpa")
                source = "verl_prpo.prm.qwen_prm_model.Qwen2ForProcessRewardModel"
            except ImportError:
                model = ScoreHeadPRM(config)
                source = "gpu_check.ScoreHeadPRM (Qwen2Model + score MLP)"
    finally:
        torch.set_default_dtype(previous)
    model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return model, source


class _Tokenizer:
    """What ``PRMAdapter.__init__`` reads from a tokenizer (the inputs are built here, not tokenised)."""

    bos_token_id = None

    def __init__(self, vocab: int) -> None:
        self.pad_token_id = 151643 % vocab  # Qwen2's <|endoftext|>
        self.eos_token_id = 151645 % vocab


def make_inputs(n: int, question: int, response: int, steps: int, vocab: int, seed: int):
    """``PRMInputs`` of n responses: ~question + ~response tokens (uniform +-25 % / +-50 %), a separator after each
    of ``steps`` steps (its score position), a 20-token template around them."""
    from verl_prpo.prm.adapters import PRMInputs

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q = rng.randint(int(question * 0.75), int(question * 1.25))
        r = rng.randint(int(response * 0.5), int(response * 1.5))
        cuts = sorted(rng.sample(range(1, r), steps - 1)) + [r] if steps > 1 else [r]
        ids = [rng.randrange(vocab) for _ in range(12 + q + 4)]  # template head, question, template mid
        positions, prev = [], 0
        for c in cuts:
            ids.extend(rng.randrange(vocab) for _ in range(c - prev))
            ids.append(SEPARATOR_ID % vocab)
            positions.append(len(ids) - 1)
            prev = c
        ids.extend(rng.randrange(vocab) for _ in range(4))  # template tail
        out.append(PRMInputs(ids, positions, steps, q, 0))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prm_section(args, device: torch.device, dtype: torch.dtype) -> dict:
    from verl_prpo.prm.adapters import PRMAdapter

    shape = TINY if args.tiny else QWEN25_MATH_PRM_7B
    t0 = time.perf_counter()
    model, source = build_model(shape, device, dtype)
    sync(device)
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    embed = shape["vocab_size"] * shape["hidden_size"]
    non_embedding = params - embed
    print(f"PRM: {source}, {params / 1e9:.3f} B parameters ({non_embedding / 1e9:.3f} B without the embedding), "
          f"{dtype}, built in {build_s:.1f} s", flush=True)

    adapter = PRMAdapter(model, _Tokenizer(shape["vocab_size"]), step_separator="<extra_0>", max_length=args.max_length,
                         max_tokens_per_batch=args.max_tokens_per_batch, device=device, expected_num_labels=2,
                         forward_mode=args.forward_mode)
    inputs = make_inputs(args.responses, args.question_tokens, args.response_tokens, args.steps,
                         shape["vocab_size"], args.seed)
    total_tokens = sum(len(x.input_ids) for x in inputs)

    # correctness first: the batched path against one plain forward per response (4 responses)
    few = inputs[:4]
    scores, _ = adapter.score_inputs(few)
    worst = 0.0
    with torch.inference_mode():
        for x, got in zip(few, scores):
            logits = adapter._forward(torch.tensor([x.input_ids], device=device))[0]
            want = torch.softmax(logits[x.score_positions].float(), -1)[:, 1].cpu().tolist()
            worst = max(worst, max(abs(a - b) for a, b in zip(got, want)))
    finite = all(0.0 <= v <= 1.0 for s in scores for v in s)
    print(f"  check: batched scores vs one plain forward per response: max |diff| {worst:.2e} "
          f"(bf16 batch-shape noise is ~1e-2), all in [0, 1]: {finite}", flush=True)

    # warm-up (kernels, allocator), then a probe to size the timed pass
    warm = inputs[: max(1, min(len(inputs), 2 * max(1, args.max_tokens_per_batch // 1300)))]
    adapter.score_inputs(warm)
    sync(device)
    t0 = time.perf_counter()
    adapter.score_inputs(warm)
    sync(device)
    probe_s = time.perf_counter() - t0
    probe_tokens = sum(len(x.input_ids) for x in warm)
    estimate = probe_s * total_tokens / probe_tokens
    timed = inputs
    if estimate > args.max_seconds:
        keep = max(len(warm), int(len(inputs) * args.max_seconds / estimate))
        timed = inputs[:keep]
        print(f"  full batch estimated at {estimate:.0f} s > --max-seconds {args.max_seconds:.0f}: timing "
              f"{keep} of {len(inputs)} responses and extrapolating", flush=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    scores, stats = adapter.score_inputs(timed)
    sync(device)
    seconds = time.perf_counter() - t0
    timed_tokens = stats["prm_tokens"]
    tok_s = timed_tokens / seconds
    full_s = total_tokens / tok_s
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")

    flops = 2.0 * non_embedding * total_tokens
    bound_s = flops / (args.peak_tflops * 1e12)
    achieved = flops / full_s / 1e12
    per_gpu_s = full_s / args.gpus
    share = per_gpu_s / (args.grpo_step_s + per_gpu_s)
    print(f"  batch: {len(inputs)} responses, {total_tokens:,} PRM tokens ({total_tokens / len(inputs):.0f} per "
          f"response), {args.steps} steps each; budget {args.max_tokens_per_batch} tokens per forward, layout "
          f"{stats['forward_mode']}, {stats['model_calls']} forwards, padded/real tokens "
          f"{stats['padded_tokens'] / timed_tokens:.3f}; peak memory {peak_mem:.1f} GiB")
    print(f"  throughput: {tok_s:,.0f} PRM tokens/s ({len(timed)} responses in {seconds:.1f} s)")
    print(f"  projected PRM seconds per training step ({len(inputs)} responses): {full_s:.1f} s on one "
          f"{device.type} device, {per_gpu_s:.1f} s data-parallel over {args.gpus}; PRM share of a paper-sized "
          f"step with a {args.grpo_step_s:.1f} s GRPO step: +{100 * per_gpu_s / args.grpo_step_s:.1f} % "
          f"({100 * share:.1f} % of the PRPO step)")
    print(f"  FLOP bound: 2 x {non_embedding / 1e9:.3f} B x {total_tokens:,} tokens = {flops:.3e} FLOP; at the "
          f"assumed peak {args.peak_tflops:.0f} TFLOP/s (dense bf16) = {bound_s:.1f} s; achieved "
          f"{achieved:.1f} TFLOP/s = {100 * achieved / args.peak_tflops:.1f} % of peak "
          f"({full_s / bound_s:.2f}x the bound)", flush=True)
    del model, adapter
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"prm_source": source, "params": params, "non_embedding_params": non_embedding,
            "responses": len(inputs), "prm_tokens": total_tokens, "timed_responses": len(timed),
            "forward_mode": stats["forward_mode"], "forwards": stats["model_calls"],
            "padded_over_real": stats["padded_tokens"] / timed_tokens, "seconds_timed": seconds,
            "tokens_per_s": tok_s, "step_prm_s_one_device": full_s, "step_prm_s_per_gpu": per_gpu_s,
            "gpus": args.gpus, "grpo_step_s": args.grpo_step_s, "prm_share_of_prpo_step": share,
            "flop": flops, "peak_tflops": args.peak_tflops, "flop_bound_s": bound_s, "achieved_tflops": achieved,
            "extrapolated": len(timed) < len(inputs), "check_max_abs_diff": worst, "scores_in_range": finite,
            "peak_memory_gib": peak_mem, "build_s": build_s}


def _estimator_batch(rows: int, cols: int, group: int, seed: int = 0) -> dict:
    import numpy as np

    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, cols + 1, (rows,), generator=gen)
    mask = (torch.arange(cols)[None, :] < lengths[:, None]).long()
    rewards = torch.zeros(rows, cols)
    rewards[torch.arange(rows), lengths - 1] = torch.randint(0, 2, (rows,), generator=gen).float()
    uids = np.array([f"q{i // group}" for i in range(rows)], dtype=object)
    uids = uids[np.random.default_rng(seed).permutation(rows)]
    return {"token_level_rewards": rewards, "response_mask": mask, "index": uids,
            "entropy": torch.rand(rows, cols, generator=gen) * 3,
            "old_log_probs": -torch.rand(rows, cols, generator=gen) * 2,
            "ref_log_prob": -torch.rand(rows, cols, generator=gen) * 2,
            "segment_scores": torch.rand(rows, 6, generator=gen)}


def estimator_section(args, device: torch.device) -> dict:
    try:
        from verl_prpo import estimators as E
        from verl_prpo.segmentation import broadcast_segment_scores, segment
    except Exception as exc:  # noqa: BLE001 - reported, the PRM figures stand on their own
        msg = f"{type(exc).__name__}: {exc}"
        print(f"estimators: SKIPPED, `from verl_prpo import estimators` failed ({msg}); the estimators need "
              "the verl_prpo.estimators package importable without verl", flush=True)
        return {"status": "import failed", "error": msg}

    def to(b, dev):
        return {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in b.items()}

    def prpo(b):
        seg = segment("entropy", b["response_mask"], entropy=b["entropy"], k=5, m=10)
        prm = broadcast_segment_scores(b["segment_scores"], seg.segment_ids)
        return E.compute_prpo_advantage(b["token_level_rewards"], b["response_mask"], b["index"], None,
                                        prm_scores=prm, segment_ids=seg.segment_ids)[0]

    def prm_avg(b):
        seg = segment("entropy", b["response_mask"], entropy=b["entropy"], k=5, m=10)
        prm = broadcast_segment_scores(b["segment_scores"], seg.segment_ids)
        return E.compute_prm_avg_advantage(b["token_level_rewards"], b["response_mask"], b["index"], None,
                                           prm_scores=prm)[0]

    def prl(b):
        return E.compute_prl_advantage(b["token_level_rewards"], b["response_mask"], b["index"], None,
                                       old_log_probs=b["old_log_probs"], ref_log_prob=b["ref_log_prob"])[0]

    def spro(b):
        return E.compute_spro_advantage(b["token_level_rewards"], b["response_mask"], b["index"], None,
                                        old_log_probs=b["old_log_probs"], ref_log_prob=b["ref_log_prob"])[0]

    runs = {"prpo": prpo, "prm_avg": prm_avg, "prl": prl, "spro": spro}
    cpu_b = _estimator_batch(args.est_rows, args.est_cols, 8)
    dev_b = to(cpu_b, device)
    print(f"estimators at {args.est_rows} x {args.est_cols} (groups of 8), {device} vs cpu, median of "
          f"{args.est_repeats}:", flush=True)
    out: dict = {"status": "ok", "rows": args.est_rows, "cols": args.est_cols, "device": str(device)}

    def timed(fn, b, dev):
        fn(b)
        sync(dev)
        ts = []
        for _ in range(args.est_repeats):
            t0 = time.perf_counter()
            res = fn(b)
            sync(dev)
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts), res

    for name, fn in runs.items():
        try:
            t_cpu, a_cpu = timed(fn, cpu_b, torch.device("cpu"))
            t_dev, a_dev = timed(fn, dev_b, device)
            if a_dev.device.type != device.type:
                raise RuntimeError(f"result on {a_dev.device}, expected {device}")
            diff = float((a_dev.float().cpu() - a_cpu.float()).abs().max())
            finite = bool(torch.isfinite(a_dev).all())
            print(f"  {name:8s} cpu {t_cpu * 1e3:9.1f} ms   {device.type} {t_dev * 1e3:8.1f} ms   "
                  f"max |diff| {diff:.2e}   finite {finite}", flush=True)
            out[name] = {"cpu_ms": t_cpu * 1e3, "device_ms": t_dev * 1e3, "max_abs_diff": diff, "finite": finite}
        except Exception as exc:  # noqa: BLE001 - one estimator failing must not hide the others
            print(f"  {name:8s} FAILED: {type(exc).__name__}: {exc}", flush=True)
            traceback.print_exc()
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="a tiny model of the same architecture (tests, CPU)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--responses", type=int, default=1024)
    p.add_argument("--question-tokens", type=int, default=200)
    p.add_argument("--response-tokens", type=int, default=1000)
    p.add_argument("--steps", type=int, default=6, help="steps (segments) per response: k + 1")
    p.add_argument("--max-tokens-per-batch", type=int, default=16384, help="prm.max_tokens_per_batch")
    p.add_argument("--max-length", type=int, default=4096, help="prm.max_length")
    p.add_argument("--forward-mode", default="auto", choices=["auto", "masked", "causal", "packed"])
    p.add_argument("--max-seconds", type=float, default=240.0, help="time budget of the timed PRM pass")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100/H200: 989)")
    p.add_argument("--gpus", type=int, default=8, help="data-parallel PRM ranks for the per-step projection")
    p.add_argument("--grpo-step-s", type=float, default=46.8, help="GRPO step time the PRM share is taken of")
    p.add_argument("--est-rows", type=int, default=1024)
    p.add_argument("--est-cols", type=int, default=4096)
    p.add_argument("--est-repeats", type=int, default=3)
    p.add_argument("--skip-prm", action="store_true")
    p.add_argument("--skip-estimators", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    t_start = time.perf_counter()
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu_check: torch {torch.__version__}, transformers {transformers.__version__}, device {device} "
          f"({name}), verl importable: {_importable('verl')}", flush=True)
    result: dict = {"device": str(device), "device_name": name, "torch": torch.__version__,
                    "transformers": transformers.__version__}
    if not args.skip_prm:
        result["prm"] = prm_section(args, device, dtype)
    if not args.skip_estimators:
        result["estimators"] = estimator_section(args, device)
    result["wall_s"] = time.perf_counter() - t_start
    print(f"gpu_check done in {result['wall_s']:.0f} s")
    print("GPU_CHECK=" + json.dumps(result, default=lambda o: None if isinstance(o, float) and math.isnan(o) else o))
    return result


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


if __name__ == "__main__":
    main()
