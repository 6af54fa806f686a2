"""Evaluate a Hugging Face model directory on prepared math parquet files.

Example (the PRL protocol: 8 samples at T = 1.0, avg@8 and pass@8; plus PRPO's greedy pass@1)::

    python -m verl_prpo.evaluation.cli --model /path/to/hf_model \\
        --data data/prepared/math500.parquet data/prepared/aime24.parquet \\
        --n 8 --k 1 8 --temperature 1.0 --top-p 1.0 --max-new-tokens 2048 --greedy \\
        --backend auto --out-dir eval_out

Writes ``eval_out/results.json``, ``eval_out/results.md`` and ``eval_out/samples/<dataset>.jsonl``. A verl
checkpoint must first be merged into a Hugging Face directory (``scripts/merge_checkpoint.sh``, which runs
``python -m verl.model_merger merge --backend fsdp --local_dir <ckpt>/actor --target_dir <hf_dir>``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from verl_prpo.evaluation.evaluate import EvalSettings, render_markdown, run_evaluation


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m verl_prpo.evaluation.cli", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="Hugging Face model directory (merged verl checkpoint)")
    p.add_argument("--data", nargs="+", required=True, help="prepared parquet files (verl_prpo.data.cli)")
    p.add_argument("--n", type=int, default=8, help="samples per problem (0: greedy only)")
    p.add_argument("--k", type=int, nargs="+", default=None, help="k values for pass@k and maj@k (default: 1 and n)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: greedy)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--greedy", action="store_true", help="also report greedy (temperature 0) pass@1")
    p.add_argument("--backend", choices=["auto", "vllm", "hf"], default="auto")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (hf backend)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems of each file")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default="auto")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM tensor parallelism")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="vLLM")
    p.add_argument("--max-model-len", type=int, default=None, help="vLLM context length")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ks = args.k if args.k is not None else sorted({1, args.n} - {0})
    settings = EvalSettings(
        model=args.model, data_files=list(args.data), n=args.n, ks=list(ks), temperature=args.temperature,
        top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed, greedy=args.greedy,
        backend=args.backend, batch_size=args.batch_size, limit=args.limit, dtype=args.dtype,
        tensor_parallel_size=args.tensor_parallel_size, gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len,
    )
    try:
        settings.validate()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = run_evaluation(settings, args.out_dir, progress=not args.no_progress)
    print(render_markdown(report))
    print(f"wrote {args.out_dir}/results.json and results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
