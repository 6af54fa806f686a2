"""Dataset preparation into verl's RL parquet format (see :mod:`verl_prpo.data.prepare`).

Command line: ``python -m verl_prpo.data.cli --dataset math500 --source math500.jsonl --out math500.parquet``.
"""

from verl_prpo.data.prepare import (
    DATASETS,
    DataPrepError,
    DatasetSpec,
    clean_ground_truth,
    load_records,
    prepare,
    prepare_to_parquet,
    write_parquet,
)
from verl_prpo.data.templates import TEMPLATES, build_prompt, get_template

__all__ = [
    "DATASETS",
    "DataPrepError",
    "DatasetSpec",
    "TEMPLATES",
    "build_prompt",
    "clean_ground_truth",
    "get_template",
    "load_records",
    "prepare",
    "prepare_to_parquet",
    "write_parquet",
]
