"""Small local PRM checkpoints for tests and benchmarks of the PRM backends (never downloaded, built here).

``build_qwen_prm_checkpoint`` writes a random checkpoint with exactly the Qwen2.5-Math-PRM layout (the architecture
vLLM serves natively as ``Qwen2ForProcessRewardModel``): ``config.json`` with ``model_type: qwen2`` and
``architectures: ["Qwen2ForProcessRewardModel"]``, weights ``model.*`` (a Qwen2 body), ``score.0.*`` (hidden x
hidden), ``score.2.*`` (2 x hidden), a stray ``lm_head.weight``, and a tokenizer with ``<extra_0>`` and a ChatML
template. Its attention head size is 32 (hidden 64, 2 heads), the smallest vLLM's CPU attention kernels accept.

The returned modules are the ones the file was written from, so a test can compute an independent reference::

    h_t = body(input_ids)_t;   p_t = softmax(score2(ReLU(score0(h_t))))[1]   at every <extra_0>
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

QWEN_PRM_ARCHITECTURE = "Qwen2ForProcessRewardModel"


def build_qwen_prm_checkpoint(out: Path | str, *, corpus: list[str] | None = None, hidden_size: int = 64,
                              num_layers: int = 2, head_dim: int = 32, head_scale: float = 4.0,
                              seed: int = 0, remote_code_stubs: bool = True) -> dict:
    """Write the checkpoint into ``out``; return ``{"body", "score0", "score2", "tokenizer", "path"}``.

    ``head_scale`` multiplies the last head layer so that the step probabilities spread visibly over (0, 1).
    ``remote_code_stubs``: an ``auto_map`` as the real checkpoint has, pointing at two modules that raise on import
    (so a loader that follows it fails).
    """
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2Model

    from examples.credit_assignment.tiny_assets import BOXED_INSTRUCTION, build_tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    words = corpus or [BOXED_INSTRUCTION, "What is 6 times 7?", "We compute $6 * 7 = 42$.",
                       "So the answer is $\\boxed{42}$.", "First add the numbers.", "Then check the result."]
    tok = build_tokenizer(out, list(words) + [str(i) for i in range(100)], vocab_size=400)
    torch.manual_seed(seed)
    heads = hidden_size // head_dim
    cfg = Qwen2Config(vocab_size=(len(tok) + 63) // 64 * 64, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                      max_position_embeddings=4096, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, rope_theta=10000.0)
    body = Qwen2Model(cfg).eval()
    score0 = torch.nn.Linear(hidden_size, hidden_size)
    score2 = torch.nn.Linear(hidden_size, 2)
    with torch.no_grad():
        score2.weight.mul_(head_scale)
    lm_head = torch.nn.Linear(hidden_size, cfg.vocab_size, bias=False)
    tensors = {f"model.{k}": v for k, v in body.state_dict().items()}
    tensors.update({"score.0.weight": score0.weight, "score.0.bias": score0.bias,
                    "score.2.weight": score2.weight, "score.2.bias": score2.bias, "lm_head.weight": lm_head.weight})
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    conf = cfg.to_dict()
    conf.update(model_type="qwen2", architectures=[QWEN_PRM_ARCHITECTURE], torch_dtype="float32")
    conf.pop("dtype", None)
    if remote_code_stubs:
        conf["auto_map"] = {"AutoConfig": "configuration_qwen2_rm.Qwen2RMConfig",
                            "AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"}
        for name in ("configuration_qwen2_rm", "modeling_qwen2_rm"):
            (out / f"{name}.py").write_text(f'raise RuntimeError("remote code {name} must never be imported")\n')
    (out / "config.json").write_text(json.dumps(conf, indent=1))
    return {"body": body, "score0": score0, "score2": score2, "tokenizer": tok, "path": out}


def qwen_prm_reference(ckpt: dict, input_ids: list[int], positions: list[int]) -> list[float]:
    """``softmax(W_2 ReLU(W_0 h + b_0) + b_2)[1]`` at ``positions``, from the modules the checkpoint was written from."""
    with torch.no_grad():
        hid = ckpt["body"](input_ids=torch.tensor([input_ids])).last_hidden_state[0]
        logits = ckpt["score2"](torch.relu(ckpt["score0"](hid)))
    return torch.softmax(logits[positions].double(), dim=-1)[:, 1].tolist()
