"""Qwen2.5-Math-PRM loaded natively, without its hub remote code (issue 9, item 3).

The tiny checkpoint here has exactly the real layout: ``config.json`` with ``model_type: qwen2``,
``architectures: ["Qwen2ForProcessRewardModel"]`` and an ``auto_map`` pointing at ``configuration_qwen2_rm`` /
``modeling_qwen2_rm``; weights ``model.*``, ``score.0.*``, ``score.2.*`` and a stray ``lm_head.weight``. The two
remote-code files raise on import, so any code path that follows ``auto_map`` fails the test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from examples.credit_assignment.tiny_assets import BOXED_INSTRUCTION, build_tokenizer
from verl_prpo.prm import PRMConfig, QwenMathPRMAdapter, load_prm

QUESTION = "What is 6 times 7?"
SEGMENTS = ["We compute $6 * 7 = 42$.", "\n\nSo the answer is $\\boxed{42}$."]
REMOTE_MODULES = ("configuration_qwen2_rm", "modeling_qwen2_rm")


def _write_checkpoint(out: Path, *, drop: tuple[str, ...] = ()) -> dict:
    """Write the tiny checkpoint; return the in-memory modules it was written from (the reference)."""
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2Model

    tok = build_tokenizer(out, [BOXED_INSTRUCTION, QUESTION, *SEGMENTS] + [str(i) for i in range(60)],
                          vocab_size=300)
    torch.manual_seed(0)
    h = 32
    cfg = Qwen2Config(vocab_size=(len(tok) + 63) // 64 * 64, hidden_size=h, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id)
    body = Qwen2Model(cfg).eval()
    score0, score2 = torch.nn.Linear(h, h), torch.nn.Linear(h, 2)
    with torch.no_grad():  # a visible spread of probabilities
        score2.weight.mul_(20.0)
    lm_head = torch.nn.Linear(h, cfg.vocab_size, bias=False)
    tensors = {f"model.{k}": v.contiguous() for k, v in body.state_dict().items()}
    tensors.update({"score.0.weight": score0.weight, "score.0.bias": score0.bias,
                    "score.2.weight": score2.weight, "score.2.bias": score2.bias,
                    "lm_head.weight": lm_head.weight})
    tensors = {k: v.detach().clone().contiguous() for k, v in tensors.items() if not k.startswith(drop)}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    conf = cfg.to_dict()
    conf.update(model_type="qwen2", architectures=["Qwen2ForProcessRewardModel"], torch_dtype="float32",
                auto_map={"AutoConfig": "configuration_qwen2_rm.Qwen2RMConfig",
                          "AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"})
    conf.pop("dtype", None)
    (out / "config.json").write_text(json.dumps(conf, indent=1))
    for name in REMOTE_MODULES:
        (out / f"{name}.py").write_text(f'raise RuntimeError("remote code {name} must never be imported")\n')
    return {"body": body, "score0": score0, "score2": score2, "tokenizer": tok}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("qwen_prm")
    return out, _write_checkpoint(out)


def _reference(ref: dict, input_ids: list[int], positions: list[int]) -> list[float]:
    """softmax(W_2 ReLU(W_0 h + b_0) + b_2)[1] at the <extra_0> positions, from the modules that wrote the file."""
    with torch.no_grad():
        hid = ref["body"](input_ids=torch.tensor([input_ids])).last_hidden_state[0]
        logits = ref["score2"](torch.relu(ref["score0"](hid)))
    return torch.softmax(logits[positions], dim=-1)[:, 1].tolist()


def test_trust_remote_code_is_off_by_default():
    from omegaconf import OmegaConf

    from verl_prpo import trainer as trainer_mod

    assert PRMConfig().trust_remote_code is False
    base = OmegaConf.load(Path(trainer_mod.__file__).parent / "conf" / "prpo_base.yaml")
    assert base.prm.trust_remote_code is False


@pytest.mark.parametrize("trust_remote_code", [False, True])
def test_native_qwen_prm_matches_the_architecture_without_remote_code(ckpt, trust_remote_code):
    from verl_prpo.prm.qwen_prm_model import Qwen2ForProcessRewardModel

    path, ref = ckpt
    ad = load_prm(PRMConfig(enable=True, model_path=str(path), trust_remote_code=trust_remote_code), "cpu")
    assert not any(m in sys.modules for m in REMOTE_MODULES)
    assert not any(m.endswith(REMOTE_MODULES) for m in sys.modules)
    assert isinstance(ad, QwenMathPRMAdapter) and type(ad.model) is Qwen2ForProcessRewardModel
    assert ad.step_separator == "<extra_0>"
    assert ad.separator_id == ref["tokenizer"].convert_tokens_to_ids("<extra_0>")
    assert next(ad.model.parameters()).dtype == torch.float32  # CPU
    x = ad.build_inputs(QUESTION, SEGMENTS)
    got = ad.score([QUESTION], [SEGMENTS])[0]
    want = _reference(ref, x.input_ids, x.score_positions)
    assert len(got) == 2 and got == pytest.approx(want, abs=1e-5)
    assert max(got) - min(got) > 1e-3  # the head's weights were really loaded (not a fresh init)


def test_missing_head_weights_are_an_error(tmp_path):
    _write_checkpoint(tmp_path, drop=("score.2.",))
    with pytest.raises(ValueError, match=r"score\.2\."):
        load_prm(PRMConfig(enable=True, model_path=str(tmp_path)), "cpu")


def test_other_remote_code_models_need_trust_remote_code(ckpt, tmp_path):
    """A checkpoint whose class this package does not implement is refused unless the user opts in."""
    import shutil

    path, _ = ckpt
    for f in path.iterdir():
        shutil.copy(f, tmp_path / f.name)
    conf = json.loads((tmp_path / "config.json").read_text())
    conf["architectures"] = ["SomeOtherPRM"]
    conf["auto_map"] = {"AutoModel": "modeling_qwen2_rm.SomeOtherPRM"}
    (tmp_path / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError, match=r"prm\.trust_remote_code=true"):
        load_prm(PRMConfig(enable=True, model_path=str(tmp_path), adapter="qwen_math_prm"), "cpu")
