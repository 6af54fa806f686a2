"""Prepare one dataset as a verl RL parquet file.

Examples::

    python -m verl_prpo.data.cli --dataset math500 --source DATA/eval/math500.jsonl \\
        --template qwen_boxed --out data/math500.parquet
    python -m verl_prpo.data.cli --dataset math --source DATA/train/math4500.jsonl \\
        --split train --out data/math_train.parquet          # MATH500 removed (file found in ../eval/)
    python -m verl_prpo.data.cli --dataset numina_math_1_5 --out data/numina.parquet   # hub only (needs network)
    python -m verl_prpo.data.cli --list
"""

from __future__ import annotations

import argparse
import logging
import sys

from verl_prpo.data.prepare import DATASETS, DataPrepError, PrepareStats, prepare, write_parquet
from verl_prpo.data.templates import TEMPLATES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m verl_prpo.data.cli",
        description="Prepare a math dataset as verl RL parquet (prompt, data_source, ability, reward_model, "
        "extra_info).",
    )
    p.add_argument("--dataset", help=f"one of {', '.join(sorted(DATASETS))}")
    p.add_argument("--source", default=None,
                   help="local .jsonl/.json/.parquet file, or a Hugging Face dataset name (default: the dataset's "
                        "hub name, which needs network access)")
    p.add_argument("--template", default="qwen_boxed", help=f"prompt template: {', '.join(TEMPLATES)}")
    p.add_argument("--out", help="output parquet path")
    p.add_argument("--split", default=None, help="split label (and hub split); default: train for math/numina, "
                                                  "test otherwise")
    p.add_argument("--limit", type=int, default=None, help="keep at most N rows")
    p.add_argument("--exclude-file", action="append", default=None,
                   help="JSON Lines/parquet whose problems are removed (default for math train: MATH500 found "
                        "next to the source)")
    p.add_argument("--allow-math500-overlap", action="store_true",
                   help="prepare math train without removing MATH500 (not recommended)")
    p.add_argument("--skip-invalid", action="store_true", help="drop rows whose answer cannot be extracted")
    p.add_argument("--hf-config", default=None, help="hub dataset configuration name")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list", action="store_true", help="list datasets and templates and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.list:
        print("datasets:")
        for name, spec in DATASETS.items():
            print(f"  {name:16s} default split {spec.default_split:5s} hub {spec.hf_name or '-'}  {spec.notes}")
        print("templates:")
        for name, t in TEMPLATES.items():
            print(f"  {name:12s} {t.description}")
        return 0
    if not args.dataset or not args.out:
        parser.error("--dataset and --out are required")
    if args.dataset not in DATASETS:
        parser.error(f"unknown dataset {args.dataset!r}; choose one of {', '.join(sorted(DATASETS))}")
    if args.template not in TEMPLATES:
        parser.error(f"unknown template {args.template!r}; choose one of {', '.join(TEMPLATES)}")
    stats = PrepareStats()
    try:
        rows = prepare(
            args.dataset,
            args.source,
            template=args.template,
            split=args.split,
            limit=args.limit,
            exclude_files=args.exclude_file,
            allow_math500_overlap=args.allow_math500_overlap,
            skip_invalid=args.skip_invalid,
            hf_config=args.hf_config,
            progress=not args.no_progress,
            stats=stats,
        )
        out = write_parquet(rows, args.out)
    except DataPrepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    msg = f"wrote {stats.written} rows ({args.dataset}, template {args.template}) to {out}"
    extras = []
    if stats.excluded_math500:
        extras.append(f"{stats.excluded_math500} MATH500 problems removed")
    if stats.skipped_no_answer:
        extras.append(f"{stats.skipped_no_answer} rows without an answer skipped")
    print(msg + (f" [{'; '.join(extras)}]" if extras else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
