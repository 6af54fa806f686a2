"""Turn math datasets into verl's RL parquet format.

One row per problem, the schema ``verl.utils.dataset.rl_dataset.RLHFDataset`` reads::

    data_source   str                      the dataset name below ("math500", "gsm8k", ...)
    prompt        list[{role, content}]    chat messages from a template (verl_prpo.data.templates)
    ability       str                      "math"
    reward_model  {style: "rule", ground_truth: str}
    extra_info    {split: str, index: int, question: str, answer: str, dataset: str, id: str}

``extra_info`` has the same fields for every dataset so that several parquet files can be concatenated by
``RLHFDataset`` (``datasets.concatenate_datasets`` needs identical features). ``index`` is the row's position in
the output file, ``id`` the source's own identifier (``unique_id``/``id``/``idx``, else the source row number).

Ground truths (``reward_model.ground_truth``), per dataset:

* MATH-style (math, math500, minerva_math): the ``answer`` field when present, else the last ``\\boxed{}`` of
  ``solution``;
* gsm8k: what follows ``####`` in ``answer``, commas removed;
* aime24, aime25, amc23: the ``answer`` field; integral numbers are written as integers (``27.0`` -> ``27``,
  ``"025"`` -> ``25``);
* olympiadbench: the ``final_answer`` list, ``$`` removed from each element, elements joined with ``", "``;
* numina_math_1_5: the ``answer`` field; rows whose answer is empty, ``proof`` or ``notfound`` are skipped
  (NuminaMath-1.5 marks proof problems that way; they have nothing to check).

The training split of ``math`` must not contain MATH500 problems: they are removed by problem text (whitespace
normalised) using a MATH500 file (``exclude_files``; found automatically next to the source as
``../eval/math500.jsonl`` or ``math500.jsonl``), and preparing ``math`` without one is an error.

Sources: a local ``.jsonl``/``.json``/``.parquet`` file, or a Hugging Face dataset name loaded with
``datasets.load_dataset`` (no network here: the error says to pass a local file).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from verl_prpo.data.templates import build_prompt, get_template
from verl_prpo.math_grading import extract_gsm8k_answer, last_boxed

logger = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "DataPrepError",
    "clean_ground_truth",
    "load_records",
    "prepare",
    "prepare_to_parquet",
    "write_parquet",
]


class DataPrepError(ValueError):
    """A dataset cannot be prepared (unknown name, unreadable source, missing fields)."""


# ---------------------------------------------------------------------------------------------------------------
# answers
# ---------------------------------------------------------------------------------------------------------------


def clean_ground_truth(value: Any) -> str | None:
    """Canonical string for a ground-truth answer: numbers without ``.0``, integers without leading zeros,
    an answer entirely wrapped in ``$...$`` unwrapped, whitespace stripped. ``None`` for empty values."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:  # NaN
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    s = str(value).strip()
    if len(s) >= 2 and s.startswith("$") and s.endswith("$") and "$" not in s[1:-1]:
        s = s[1:-1].strip()
    m = re.fullmatch(r"(-?)0*(\d+)(?:\.0+)?", s)
    if m:
        s = (m.group(1) + m.group(2)) if m.group(2) != "0" else "0"
    return s or None


def _answer_boxed_solution(rec: dict) -> str | None:
    ans = rec.get("answer")
    if ans is not None and str(ans).strip():
        return clean_ground_truth(ans)
    sol = _require(rec, ("solution",), "solution")
    return clean_ground_truth(last_boxed(str(sol)))


def _answer_field(rec: dict) -> str | None:
    return clean_ground_truth(_require(rec, ("answer",), "answer"))


def _answer_gsm8k(rec: dict) -> str | None:
    return clean_ground_truth(extract_gsm8k_answer(str(_require(rec, ("answer",), "answer"))))


def _answer_olympiad(rec: dict) -> str | None:
    fa = _require(rec, ("final_answer",), "final_answer")
    if isinstance(fa, str):
        try:
            parsed = json.loads(fa)
            fa = parsed if isinstance(parsed, list) else [fa]
        except json.JSONDecodeError:
            fa = [fa]
    parts = [str(x).replace("$", "").strip() for x in list(fa)]
    parts = [p for p in parts if p]
    return ", ".join(parts) or None


_NUMINA_SKIP = {"", "proof", "notfound", "none"}


def _answer_numina(rec: dict) -> str | None:
    ans = rec.get("answer")
    if ans is None or str(ans).strip().lower() in _NUMINA_SKIP:
        return None
    return clean_ground_truth(ans)


def _question_olympiad(rec: dict) -> str:
    q = str(_require(rec, ("question", "problem"), "question"))
    ctx = rec.get("context")
    if ctx is not None and str(ctx).strip() and str(ctx).strip() != "None":
        q = f"{str(ctx).strip()}\n\n{q}"
    return q


class _Missing(DataPrepError):
    pass


def _require(rec: dict, names: Iterable[str], what: str):
    for n in names:
        if n in rec and rec[n] is not None:
            return rec[n]
    raise _Missing(f"missing field {what!r} (looked for {list(names)}); the row has fields {sorted(rec)}")


# ---------------------------------------------------------------------------------------------------------------
# dataset registry
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    question_fields: tuple[str, ...]
    answer_fn: Callable[[dict], str | None]
    default_split: str
    hf_name: str | None = None  # default hub dataset when no --source is given (not reachable offline)
    hf_config: str | None = None
    id_fields: tuple[str, ...] = ("unique_id", "id", "idx")
    question_fn: Callable[[dict], str] | None = None
    skip_missing_answer: bool = False  # rows whose answer_fn returns None are dropped instead of an error
    exclude_math500: bool = False
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def question(self, rec: dict) -> str:
        if self.question_fn is not None:
            return self.question_fn(rec)
        return str(_require(rec, self.question_fields, "question"))


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec("math", ("problem",), _answer_boxed_solution, "train",
                    hf_name="DigitalLearningGmbH/MATH-lighteval", exclude_math500=True,
                    notes="MATH train prompts; MATH500 problems removed"),
        DatasetSpec("gsm8k", ("question",), _answer_gsm8k, "test", hf_name="openai/gsm8k", hf_config="main"),
        DatasetSpec("math500", ("problem",), _answer_boxed_solution, "test", hf_name="HuggingFaceH4/MATH-500"),
        DatasetSpec("aime24", ("problem", "question"), _answer_field, "test", hf_name="HuggingFaceH4/aime_2024"),
        DatasetSpec("aime25", ("problem", "question"), _answer_field, "test"),
        DatasetSpec("amc23", ("problem", "question"), _answer_field, "test"),
        DatasetSpec("minerva_math", ("problem",), _answer_boxed_solution, "test"),
        DatasetSpec("olympiadbench", ("question", "problem"), _answer_olympiad, "test",
                    question_fn=_question_olympiad),
        DatasetSpec("numina_math_1_5", ("problem",), _answer_numina, "train", hf_name="AI-MO/NuminaMath-1.5",
                    skip_missing_answer=True, notes="hub only; proof / notfound answers skipped"),
    )
}


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataPrepError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}") from None


# ---------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------


def _read_local(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict(orient="records")
    text = path.read_text(encoding="utf-8")
    if suffix == ".json" and text.lstrip().startswith("["):
        return list(json.loads(text))
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataPrepError(f"{path}:{lineno}: not valid JSON Lines ({exc})") from exc
    return rows


def _load_hub(name: str, config: str | None, split: str) -> list[dict]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover
        raise DataPrepError(f"`datasets` is needed to load {name!r} from the hub; or pass a local file") from exc
    try:
        ds = datasets.load_dataset(name, config, split=split) if config else datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - offline, gated, renamed ...
        raise DataPrepError(
            f"could not load {name!r} (split {split!r}) from the Hugging Face hub: {type(exc).__name__}: {exc}. "
            "If this machine has no network access, pass a local JSON Lines / parquet file with "
            "--source /path/to/file.jsonl"
        ) from exc
    return [dict(r) for r in ds]


def load_records(source: str | os.PathLike | None, spec: DatasetSpec, split: str,
                 hf_config: str | None = None) -> list[dict]:
    """Records of ``source``: a local file, else a hub dataset name (``spec.hf_name`` when ``source`` is None)."""
    if source is None:
        if spec.hf_name is None:
            raise DataPrepError(
                f"dataset {spec.name!r} has no default hub source; pass a local file with --source path.jsonl"
            )
        return _load_hub(spec.hf_name, hf_config or spec.hf_config, split)
    path = Path(source).expanduser()
    if path.exists():
        if path.is_dir():
            raise DataPrepError(f"--source {source} is a directory; pass a .jsonl, .json or .parquet file")
        return _read_local(path)
    s = str(source)
    looks_local = s.startswith((".", "/", "~")) or s.endswith((".jsonl", ".json", ".parquet")) or os.sep in s[:1]
    if looks_local or s.count("/") != 1:
        raise DataPrepError(f"source file not found: {source}")
    return _load_hub(s, hf_config or (spec.hf_config if s == spec.hf_name else None), split)


def _norm_problem(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def _find_math500(source: str | os.PathLike | None) -> list[Path]:
    if source is None or not Path(source).expanduser().exists():
        return []
    here = Path(source).expanduser().resolve().parent
    for cand in (here.parent / "eval" / "math500.jsonl", here / "math500.jsonl"):
        if cand.exists():
            return [cand]
    return []


def _problem_set(files: Iterable[str | os.PathLike]) -> set[str]:
    out = set()
    for f in files:
        path = Path(f).expanduser()
        if not path.exists():
            raise DataPrepError(f"exclusion file not found: {f}")
        for rec in _read_local(path):
            q = rec.get("problem") or rec.get("question")
            if q is None:
                prompt = rec.get("extra_info", {}) or {}
                q = prompt.get("question")
            if q is not None:
                out.add(_norm_problem(q))
    return out


# ---------------------------------------------------------------------------------------------------------------
# preparation
# ---------------------------------------------------------------------------------------------------------------


def _record_id(rec: dict, spec: DatasetSpec, position: int) -> str:
    for f in spec.id_fields:
        if rec.get(f) is not None:
            return str(rec[f])
    return str(position)


@dataclass
class PrepareStats:
    read: int = 0
    written: int = 0
    excluded_math500: int = 0
    skipped_no_answer: int = 0


def prepare(
    dataset: str,
    source: str | os.PathLike | None = None,
    *,
    template: str = "qwen_boxed",
    split: str | None = None,
    limit: int | None = None,
    exclude_files: list[str | os.PathLike] | None = None,
    allow_math500_overlap: bool = False,
    skip_invalid: bool = False,
    hf_config: str | None = None,
    progress: bool = True,
    stats: PrepareStats | None = None,
) -> list[dict]:
    """Rows in verl's RL format for ``dataset`` read from ``source`` (see the module docstring)."""
    spec = get_spec(dataset)
    get_template(template)  # fail early on an unknown template
    split = split or spec.default_split
    if limit is not None and limit < 0:
        raise DataPrepError("--limit must be >= 0")
    stats = stats if stats is not None else PrepareStats()

    records = load_records(source, spec, split, hf_config=hf_config)
    stats.read = len(records)

    excluded: set[str] = set()
    if exclude_files:
        excluded = _problem_set(exclude_files)
    elif spec.exclude_math500 and split == "train" and not allow_math500_overlap:
        found = _find_math500(source)
        if not found:
            raise DataPrepError(
                f"{dataset}: MATH500 must be excluded from the training prompts, but no MATH500 file was found next "
                "to the source; pass --exclude-file /path/to/math500.jsonl (or --allow-math500-overlap)"
            )
        excluded = _problem_set(found)

    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        def tqdm(x, **_):
            return x

    rows: list[dict] = []
    for pos, rec in enumerate(tqdm(records, desc=f"prepare {dataset}", unit="row", disable=not progress)):
        if limit is not None and len(rows) >= limit:
            break
        try:
            question = spec.question(rec)
            if excluded and _norm_problem(question) in excluded:
                stats.excluded_math500 += 1
                continue
            answer = spec.answer_fn(rec)
        except _Missing as exc:
            raise DataPrepError(f"{dataset}: source row {pos}: {exc}") from None
        if answer is None:
            if spec.skip_missing_answer or skip_invalid:
                stats.skipped_no_answer += 1
                continue
            raise DataPrepError(
                f"{dataset}: source row {pos}: no ground-truth answer could be extracted "
                f"(id {_record_id(rec, spec, pos)!r}); use --skip-invalid to drop such rows"
            )
        idx = len(rows)
        rows.append(
            {
                "data_source": spec.name,
                "prompt": build_prompt(question, template),
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": answer},
                "extra_info": {
                    "split": split,
                    "index": idx,
                    "question": question,
                    "answer": answer,
                    "dataset": spec.name,
                    "id": _record_id(rec, spec, pos),
                },
            }
        )
    stats.written = len(rows)
    if spec.exclude_math500 and excluded:
        logger.info("%s: removed %d MATH500 problems", dataset, stats.excluded_math500)
    return rows


def write_parquet(rows: list[dict], out: str | os.PathLike) -> Path:
    import pandas as pd

    if not rows:
        raise DataPrepError("no rows to write")
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame.from_records(rows).to_parquet(out, index=False)
    return out


def prepare_to_parquet(dataset: str, source, out, **kwargs) -> tuple[Path, PrepareStats]:
    stats = PrepareStats()
    rows = prepare(dataset, source, stats=stats, **kwargs)
    return write_parquet(rows, out), stats
