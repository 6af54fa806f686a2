"""End-to-end evaluation with a tiny random Qwen2 (HF fallback), and the report arithmetic with scripted answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from verl_prpo.data import prepare, write_parquet
from verl_prpo.evaluation.cli import main as cli_main
from verl_prpo.evaluation.evaluate import EvalSettings, load_problems, run_evaluation
from verl_prpo.evaluation.generate import Generation, SamplingSettings

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _tiny_tokenizer(path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(
        ["What is 1+1? The answer is \\boxed{2}.", "Please reason step by step.", "0123456789 + - = { }"],
        trainer=trainer,
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    fast.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    fast.save_pretrained(path)
    return fast


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = tmp_path_factory.mktemp("tiny_qwen2")
    tok = _tiny_tokenizer(path)
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.pad_token_id,
    )
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory):
    if not DATA.is_dir():
        pytest.skip(f"{DATA} not present")
    out = tmp_path_factory.mktemp("evaldata")
    files = []
    for name, rel in (("math500", "eval/math500.jsonl"), ("amc23", "eval/amc23.jsonl")):
        rows = prepare(name, DATA / rel, limit=3, progress=False)
        files.append(str(write_parquet(rows, out / f"{name}.parquet")))
    return files


def test_cli_end_to_end_hf_fallback(tiny_model, eval_files, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = cli_main([
        "--model", str(tiny_model), "--data", *eval_files, "--n", "2", "--k", "1", "2", "--temperature", "1.0",
        "--top-p", "0.95", "--max-new-tokens", "8", "--greedy", "--backend", "hf", "--seed", "3",
        "--batch-size", "2", "--out-dir", str(out), "--no-progress",
    ])
    assert rc == 0
    report = json.loads((out / "results.json").read_text())
    s = report["settings"]
    assert s["model"] == str(tiny_model)
    assert (s["n"], s["ks"], s["temperature"], s["top_p"], s["max_new_tokens"], s["seed"]) == (2, [1, 2], 1.0, 0.95, 8, 3)
    assert s["greedy"] is True and s["backend"] == "hf" and s["backend_used"] == "hf"
    assert [d["path"] for d in s["data_files"]] == eval_files
    assert [d["rows"] for d in s["data_files"]] == [3, 3]
    assert all(len(d["sha256"]) == 64 for d in s["data_files"])
    assert s["versions"]["transformers"] and s["versions"]["math_verify"]

    assert set(report["datasets"]) == {"math500", "amc23"}
    for m in report["datasets"].values():
        assert m["num_problems"] == 3
        for key in ("avg@2", "pass@1", "pass@2", "maj@1", "maj@2", "greedy pass@1", "answer_found"):
            assert 0.0 <= m[key] <= 1.0
        assert 0 < m["mean_response_tokens"] <= 8
        assert m["pass@1"] == pytest.approx(m["avg@2"])
    avg = report["average"]
    assert avg["pass@2"] == pytest.approx((report["datasets"]["math500"]["pass@2"] + report["datasets"]["amc23"]["pass@2"]) / 2)

    md = (out / "results.md").read_text()
    assert str(tiny_model) in md and "| math500 | 3 |" in md and "**average**" in md
    for col in ("avg@2", "pass@1", "pass@2", "maj@2", "greedy pass@1"):
        assert col in md
    assert "temperature = 1.0" in md and "top_p = 0.95" in md and "max new tokens = 8" in md and "seed = 3" in md

    samples = [json.loads(line) for line in (out / "samples" / "math500.jsonl").read_text().splitlines()]
    assert len(samples) == 3
    assert all(len(r["responses"]) == 2 and len(r["correct"]) == 2 and "greedy_response" in r for r in samples)
    assert samples[0]["ground_truth"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert "| math500 |" in capsys.readouterr().out


def test_hf_generation_is_seeded_and_greedy_is_deterministic(tiny_model, eval_files):
    from verl_prpo.evaluation.generate import Generator

    gen = Generator(str(tiny_model), "hf", batch_size=3)
    prompts = [p["prompt"] for p in load_problems(eval_files[0])]
    s = SamplingSettings(n=2, temperature=1.0, top_p=1.0, max_new_tokens=6, seed=11)
    a, b = gen.generate(prompts, s, progress=False), gen.generate(prompts, s, progress=False)
    assert a.texts == b.texts and len(a.texts) == 3 and all(len(t) == 2 for t in a.texts)
    g = SamplingSettings(n=3, temperature=0.0, max_new_tokens=6)
    ga = gen.generate(prompts, g, progress=False)
    assert all(len(set(t)) == 1 and len(t) == 3 for t in ga.texts)  # one greedy answer, repeated n times
    # left padding in batches: batched greedy answers equal one-by-one greedy answers
    gen1 = Generator(str(tiny_model), "hf", batch_size=1)
    assert gen1.generate(prompts, g, progress=False).texts == ga.texts


class ScriptedGenerator:
    """Returns fixed responses (per prompt position) so the report arithmetic can be checked exactly."""

    backend = "scripted"

    def __init__(self, sampled, greedy):
        self.sampled, self.greedy = sampled, greedy

    def generate(self, prompts, settings, progress=True):
        src = self.greedy if settings.temperature == 0 else self.sampled
        texts = [src[i] for i in range(len(prompts))]
        return Generation(texts=texts, num_tokens=[[5] * len(t) for t in texts],
                          truncated=[[False] * len(t) for t in texts])


def test_report_arithmetic_with_scripted_answers(eval_files, tmp_path):
    # math500 rows 0-2 have answers (3, pi/2), p - q, 14/3 (checked below)
    probs = load_problems(eval_files[0])
    gts = [p["ground_truth"] for p in probs]
    assert gts[1] == "p - q"
    sampled = [
        ["\\boxed{(3, \\frac{\\pi}{2})}", "\\boxed{1}", "\\boxed{1}", "no answer"],  # c=1; majority "1" wrong
        ["\\boxed{p-q}"] * 4,  # c=4
        ["\\boxed{2}", "\\boxed{3}", "\\boxed{2}", "\\boxed{3}"],  # c=0
    ]
    greedy = [["\\boxed{0}"], ["\\boxed{p - q}"], ["\\boxed{\\frac{28}{6}}"]]
    settings = EvalSettings(model="scripted", data_files=[eval_files[0]], n=4, ks=[1, 2, 4], greedy=True)
    report = run_evaluation(settings, tmp_path / "o", generator=ScriptedGenerator(sampled, greedy))
    m = report["datasets"]["math500"]
    assert gts[2] == "\\frac{14}{3}"
    assert m["avg@4"] == pytest.approx((1 / 4 + 1 + 0) / 3)
    assert m["pass@1"] == pytest.approx(m["avg@4"])
    assert m["pass@2"] == pytest.approx(((1 - 3 / 6) + 1 + 0) / 3)  # n=4,c=1,k=2: 1 - C(3,2)/C(4,2)
    assert m["pass@4"] == pytest.approx(2 / 3)
    assert m["maj@1"] == pytest.approx(2 / 3)  # first samples: right, right, wrong
    assert m["maj@4"] == pytest.approx(1 / 3)  # majorities: "1" (wrong), "p-q" (right), tie 2/3 -> "2" (wrong)
    assert m["greedy pass@1"] == pytest.approx(2 / 3)
    assert m["answer_found"] == pytest.approx((3 / 4 + 1 + 1) / 3)
    assert report["settings"]["backend_used"] == "scripted"


def test_settings_validation(eval_files, tmp_path, capsys):
    assert cli_main(["--model", "x", "--data", *eval_files, "--n", "2", "--k", "4", "--out-dir", str(tmp_path)]) == 2
    assert "1 <= k <= n" in capsys.readouterr().err
    assert cli_main(["--model", "x", "--data", str(tmp_path / "missing.parquet"), "--n", "1",
                     "--out-dir", str(tmp_path), "--backend", "hf"]) == 2
    assert "not found" in capsys.readouterr().err


def test_vllm_path_with_a_stand_in_module(tiny_model, eval_files, monkeypatch, tmp_path):
    """vLLM is not installable here: check our calls against a stand-in with vLLM's interface (LLM, SamplingParams,
    RequestOutput.outputs[j].text / token_ids / finish_reason)."""
    import sys
    import types

    calls = {}

    class SamplingParams:
        def __init__(self, **kw):
            calls["sampling"] = kw
            self.n = kw["n"]

    class LLM:
        def __init__(self, **kw):
            calls["llm"] = kw

        def generate(self, prompts, params):
            calls["prompts"] = prompts
            out = []
            for i, _ in enumerate(prompts):
                comps = [types.SimpleNamespace(text=f"\\boxed{{{i + j}}}", token_ids=[1, 2, 3], finish_reason="stop")
                         for j in range(params.n)]
                out.append(types.SimpleNamespace(outputs=comps))
            return out

    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams, fake.__version__ = LLM, SamplingParams, "0.0-standin"
    monkeypatch.setitem(sys.modules, "vllm", fake)

    settings = EvalSettings(model=str(tiny_model), data_files=[eval_files[1]], n=2, ks=[1, 2], temperature=0.6,
                            top_p=0.9, max_new_tokens=16, seed=5, backend="vllm")
    report = run_evaluation(settings, tmp_path / "v", progress=False)
    assert report["settings"]["backend_used"] == "vllm"
    assert calls["llm"]["model"] == str(tiny_model) and calls["llm"]["seed"] == 5
    assert calls["sampling"] == {"n": 2, "temperature": 0.6, "top_p": 0.9, "top_k": -1, "repetition_penalty": 1.0,
                                 "max_tokens": 16, "seed": 5}
    assert all(isinstance(p["prompt_token_ids"], list) and p["prompt_token_ids"] for p in calls["prompts"])
    # amc23 rows 0-2 have answers 27, 36, 45: the stand-in answers 0..3 are all wrong, but found
    m = report["datasets"]["amc23"]
    assert m["answer_found"] == 1.0 and m["pass@2"] == 0.0 and m["mean_response_tokens"] == 3.0
