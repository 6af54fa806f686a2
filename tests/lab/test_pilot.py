"""The in-process GRPO pilot's pieces (``examples.credit_assignment.pilot``) on hand cases and a tiny random Qwen2."""

from __future__ import annotations

import pytest
import torch

from examples.credit_assignment.pilot import group_advantages, left_pad, policy_gradient_loss, response_valid_mask


def test_group_advantages_match_hand_values():
    r = torch.tensor([[1.0, -1.0, -1.0, -1.0], [1.0, 1.0, 1.0, 1.0]])
    # group 0: mean -0.5, unbiased std = sqrt(((1.5)^2 + 3 * 0.5^2) / 3) = 1
    got = group_advantages(r, eps=0.0 + 1e-6)
    assert torch.allclose(got[0], torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5)
    assert torch.equal(got[1], torch.zeros(4))
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.ones(3, 1))


def test_valid_mask_keeps_tokens_up_to_the_first_eos():
    eos = 2
    resp = torch.tensor([[5, 6, 2, 0, 0], [5, 2, 7, 2, 0], [5, 6, 7, 8, 9]])
    want = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(response_valid_mask(resp, eos), want)


@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    return Qwen2ForCausalLM(cfg)


def _logp(model, prompt, response):
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1]
    return torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(response)[:, None]).sum().item()


def test_loss_is_the_token_mean_of_minus_a_logp_and_ignores_left_padding(tiny_lm):
    prompts = [[3, 4, 5], [6, 7]]
    responses = torch.tensor([[8, 9, 2], [10, 2, 0]])
    valid = response_valid_mask(responses, 2)
    adv = torch.tensor([1.0, -2.0])
    p_ids, p_att = left_pad(prompts, pad_id=0)
    with torch.no_grad():
        got = policy_gradient_loss(tiny_lm, p_ids, p_att, responses, valid, adv).item()
    # unpadded, one row at a time: -(1 * logp(row 0) - 2 * logp(row 1)) / (3 + 2 tokens)
    want = -(1.0 * _logp(tiny_lm, prompts[0], [8, 9, 2]) - 2.0 * _logp(tiny_lm, prompts[1], [10, 2])) / 5
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_one_step_moves_the_log_likelihood_with_the_advantage(tiny_lm, sign):
    import copy

    model = copy.deepcopy(tiny_lm)
    prompt, response = [3, 4, 5], [8, 9, 2]
    before = _logp(model, prompt, response)
    p_ids, p_att = left_pad([prompt], 0)
    resp = torch.tensor([response])
    loss = policy_gradient_loss(model, p_ids, p_att, resp, response_valid_mask(resp, 2), torch.tensor([sign]))
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.05 * p.grad
    after = _logp(model, prompt, response)
    assert (after - before) * sign > 1e-4
