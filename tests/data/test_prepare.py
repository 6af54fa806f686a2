"""Dataset preparation: every local dataset prepares, verl's RLHFDataset loads the result, ground truths are right."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from verl_prpo.data import DATASETS, DataPrepError, build_prompt, clean_ground_truth, prepare, write_parquet
from verl_prpo.data.cli import main as cli_main
from verl_prpo.math_grading import grade

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

LOCAL = {  # dataset -> (file, split, rows)
    "math": ("train/math4500.jsonl", "train", 4500),
    "gsm8k": ("eval/gsm8k.jsonl", "test", 1319),
    "math500": ("eval/math500.jsonl", "test", 500),
    "aime24": ("eval/aime24.jsonl", "test", 30),
    "aime25": ("eval/aime25.jsonl", "test", 30),
    "amc23": ("eval/amc23.jsonl", "test", 40),
    "minerva_math": ("eval/minerva_math.jsonl", "test", 272),
    "olympiadbench": ("eval/olympiadbench.jsonl", "test", 675),
}

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"offline data folder {DATA} not present")


def _jsonl(rel):
    return [json.loads(line) for line in (DATA / rel).read_text().splitlines() if line.strip()]


def _tiny_tokenizer(path: Path):
    """A byte-level BPE trained on a few lines, wrapped as PreTrainedTokenizerFast with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [r["problem"] for r in _jsonl("eval/math500.jsonl")[:50]]
    tok.train_from_iterator(lines, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    fast.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    fast.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return _tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Every local dataset prepared in full (a few seconds)."""
    out = tmp_path_factory.mktemp("prepared")
    files = {}
    for name, (rel, split, _) in LOCAL.items():
        rows = prepare(name, DATA / rel, split=split, progress=False)
        files[name] = (write_parquet(rows, out / f"{name}.parquet"), rows)
    return files


@pytest.mark.parametrize("name", sorted(LOCAL))
def test_each_dataset_prepares_with_verl_schema(prepared, name):
    path, rows = prepared[name]
    _, split, n = LOCAL[name]
    assert len(rows) == n
    df = pd.read_parquet(path)
    assert list(df.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    assert (df["data_source"] == name).all() and (df["ability"] == "math").all()
    for r in df.head(20).itertuples():
        assert r.reward_model["style"] == "rule" and r.reward_model["ground_truth"]
        assert r.extra_info["split"] == split
        assert r.extra_info["answer"] == r.reward_model["ground_truth"]
        msgs = list(r.prompt)
        assert msgs[-1]["role"] == "user" and "\\boxed{}" in msgs[-1]["content"]
        assert r.extra_info["question"] in msgs[-1]["content"]
    assert [e["index"] for e in df["extra_info"]] == list(range(n))


def test_rlhf_dataset_loads_every_file(prepared, tokenizer, tmp_path):
    """verl's RLHFDataset reads the parquet files (all at once: identical features), applies the chat template."""
    from verl.utils.dataset.rl_dataset import RLHFDataset

    cfg = OmegaConf.create(
        {
            "prompt_key": "prompt",
            "max_prompt_length": 100000,
            "filter_overlong_prompts": True,
            "filter_overlong_prompts_workers": 1,
            "truncation": "error",
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    small = []
    for name, (path, rows) in prepared.items():
        p = tmp_path / f"{name}_small.parquet"
        write_parquet(rows[:5], p)
        small.append(str(p))
    ds = RLHFDataset(small, tokenizer, cfg)
    assert len(ds) == 5 * len(LOCAL)
    item = ds[0]
    assert item["data_source"] == "aime24" or item["data_source"] in LOCAL
    assert item["raw_prompt"][-1]["role"] == "user"
    assert item["reward_model"]["ground_truth"]
    assert item["index"] == item["extra_info"]["index"]
    # the tokenizer renders the prompt; RLHFDataset's length filter kept everything
    ids = tokenizer.apply_chat_template(item["raw_prompt"], add_generation_prompt=True, tokenize=True)
    assert len(ids) > 0


def test_rlhf_dataset_filters_by_length(prepared, tokenizer, tmp_path):
    from verl.utils.dataset.rl_dataset import RLHFDataset

    path, _ = prepared["aime25"]
    cfg = OmegaConf.create({"max_prompt_length": 5, "filter_overlong_prompts": True,
                            "filter_overlong_prompts_workers": 1, "cache_dir": str(tmp_path / "c")})
    assert len(RLHFDataset([str(path)], tokenizer, cfg)) == 0  # every prompt is longer than 5 tokens


# ---------------------------------------------------------------------------------------------------------------
# ground truths, checked against the raw files row by row
# ---------------------------------------------------------------------------------------------------------------


def _gt(rows):
    return [r["reward_model"]["ground_truth"] for r in rows]


def test_ground_truths_math500(prepared):
    raw = _jsonl("eval/math500.jsonl")
    assert _gt(prepared["math500"][1]) == [r["answer"] for r in raw]


def test_ground_truths_gsm8k(prepared):
    raw = _jsonl("eval/gsm8k.jsonl")
    gts = _gt(prepared["gsm8k"][1])
    assert gts[:3] == ["18", "3", "70000"]
    for r, g in list(zip(raw, gts))[::97]:
        assert g == r["answer"].split("####")[-1].strip().replace(",", "")
    assert all("," not in g for g in gts)


def test_ground_truths_numbers(prepared):
    aime24 = _gt(prepared["aime24"][1])
    raw = _jsonl("eval/aime24.jsonl")
    assert aime24 == [str(int(r["answer"])) for r in raw]
    assert "25" in aime24 and "025" not in aime24  # leading zeros of AIME answers dropped
    assert _gt(prepared["aime25"][1])[:2] == ["70", "588"]
    amc = _gt(prepared["amc23"][1])
    assert amc[:4] == ["27", "36", "45", "3159"] and "-1" in amc
    assert all(not g.endswith(".0") for g in amc)


def test_ground_truths_boxed_solutions(prepared):
    minerva = _gt(prepared["minerva_math"][1])
    assert minerva[0] == "1.6"
    math_train = prepared["math"][1]
    raw = _jsonl("train/math4500.jsonl")
    for r, row in list(zip(raw, math_train))[::450]:
        assert "\\boxed{" + row["reward_model"]["ground_truth"] + "}" in r["solution"]
        assert grade(r["solution"], row["reward_model"]["ground_truth"]).correct


def test_ground_truths_olympiadbench(prepared):
    gts = _gt(prepared["olympiadbench"][1])
    raw = _jsonl("eval/olympiadbench.jsonl")
    assert gts[:3] == ["2", "\\frac{1}{2 n+2}", "2^{1009}"]
    assert all("$" not in g for g in gts)
    by_raw = {json.dumps(r["final_answer"]): g for r, g in zip(raw, gts)}
    assert by_raw[json.dumps(["$69$,$84$"])] == "69,84"
    # several list elements are joined with ", "
    rows = [{"question": "q", "final_answer": ["$1$", "$2$"]}]
    assert DATASETS["olympiadbench"].answer_fn(rows[0]) == "1, 2"


def test_clean_ground_truth():
    assert clean_ground_truth(27.0) == "27"
    assert clean_ground_truth(-1.0) == "-1"
    assert clean_ground_truth(2.5) == "2.5"
    assert clean_ground_truth("025") == "25"
    assert clean_ground_truth("0") == "0"
    assert clean_ground_truth("$\\frac{1}{2}$") == "\\frac{1}{2}"
    assert clean_ground_truth("  ") is None


# ---------------------------------------------------------------------------------------------------------------
# templates, MATH500 exclusion, errors
# ---------------------------------------------------------------------------------------------------------------


def test_templates():
    q = "What is 1+1?"
    boxed = "Please reason step by step, and put your final answer within \\boxed{}."
    assert build_prompt(q, "qwen_boxed") == [{"role": "user", "content": q + "\n" + boxed}]
    assert build_prompt(q, "prpo") == [{"role": "system", "content": boxed}, {"role": "user", "content": q + "\n" + boxed}]
    assert build_prompt(q, "none") == [{"role": "user", "content": q}]
    for name in ("prl", "spro"):
        msgs = build_prompt(q, name)
        assert len(msgs) == 1 and msgs[0]["role"] == "user" and "\\boxed{}" in msgs[0]["content"]
    with pytest.raises(ValueError, match="unknown prompt template"):
        build_prompt(q, "nope")


def test_math_train_excludes_math500(tmp_path):
    m500 = _jsonl("eval/math500.jsonl")[:3]
    train = _jsonl("train/math4500.jsonl")[:2]
    src = tmp_path / "train" / "mix.jsonl"
    src.parent.mkdir()
    src.write_text("".join(json.dumps(r) + "\n" for r in m500 + train))
    # no MATH500 file next to the source: refuse
    with pytest.raises(DataPrepError, match="MATH500 must be excluded"):
        prepare("math", src, split="train", progress=False)
    rows = prepare("math", src, split="train", progress=False, exclude_files=[DATA / "eval" / "math500.jsonl"])
    assert [r["extra_info"]["question"] for r in rows] == [r["problem"] for r in train]
    # found automatically as ../eval/math500.jsonl
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "math500.jsonl").write_text((DATA / "eval" / "math500.jsonl").read_text())
    assert len(prepare("math", src, split="train", progress=False)) == 2


def test_errors(tmp_path, monkeypatch):
    with pytest.raises(DataPrepError, match="unknown dataset"):
        prepare("mathx", DATA / "eval/math500.jsonl")
    with pytest.raises(DataPrepError, match="source file not found"):
        prepare("math500", tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "solution": "s"}) + "\n")
    with pytest.raises(DataPrepError, match="missing field 'question'.*problem"):
        prepare("math500", bad, progress=False)
    nobox = tmp_path / "nobox.jsonl"
    nobox.write_text(json.dumps({"problem": "q", "solution": "no box here"}) + "\n")
    with pytest.raises(DataPrepError, match="no ground-truth answer"):
        prepare("minerva_math", nobox, progress=False)
    assert prepare("minerva_math", nobox, progress=False, skip_invalid=True) == []

    # hub path: no network here; the error must say to pass a local file
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataPrepError, match="pass a local JSON Lines"):
        prepare("numina_math_1_5", None, progress=False)
    with pytest.raises(DataPrepError, match="no default hub source"):
        prepare("amc23", None, progress=False)


def test_numina_rows(tmp_path):
    src = tmp_path / "numina.jsonl"
    recs = [
        {"problem": "p1", "solution": "s", "answer": "5"},
        {"problem": "p2", "solution": "s", "answer": "proof"},
        {"problem": "p3", "solution": "s", "answer": "notfound"},
        {"problem": "p4", "solution": "s", "answer": "$\\frac{1}{3}$"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    rows = prepare("numina_math_1_5", src, progress=False)
    assert _gt(rows) == ["5", "\\frac{1}{3}"]
    assert rows[0]["extra_info"]["split"] == "train"


def test_cli(tmp_path, capsys):
    out = tmp_path / "x.parquet"
    rc = cli_main(["--dataset", "math500", "--source", str(DATA / "eval/math500.jsonl"), "--template", "prpo",
                   "--out", str(out), "--limit", "7", "--split", "test"])
    assert rc == 0
    df = pd.read_parquet(out)
    assert len(df) == 7 and list(df["prompt"][0])[0]["role"] == "system"
    assert "wrote 7 rows" in capsys.readouterr().out
    assert cli_main(["--dataset", "math500", "--source", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    assert "source file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["--dataset", "nope", "--out", str(out)])
    assert "unknown dataset 'nope'" in capsys.readouterr().err


def test_prepare_data_script(tmp_path):
    script = Path(__file__).resolve().parents[2] / "scripts" / "prepare_data.sh"
    res = subprocess.run(
        ["bash", str(script), str(DATA), str(tmp_path / "out")],
        env={"PATH": "/usr/bin:/bin", "LIMIT": "3", "PYTHON": sys.executable},
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(["math_train.parquet", "gsm8k_train.parquet", "math500.parquet", "gsm8k.parquet",
                            "aime24.parquet", "aime25.parquet", "amc23.parquet", "minerva_math.parquet",
                            "olympiadbench.parquet"])
