"""The ``prpo`` outcome reward manager, driven the way verl's reward loop drives it.

verl's agent loop (``verl/experimental/agent_loop/agent_loop.py::_compute_score``) builds, per trajectory, a
``DataProto`` with ``prompts``, ``responses``, ``input_ids``, ``attention_mask`` and ``position_ids`` and with
every dataset column as ``np.array([value] * n)`` (``reward_model`` is an object array of dicts); the reward loop
worker then calls ``run_single(data[i:i+1])``.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from verl import DataProto

import verl_prpo  # noqa: F401  (registers everything)
from verl_prpo.reward_manager import PRPORewardManager


def _train_tokenizer(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["The answer is \\boxed{42}.", "So $x = \\frac{1}{2}$.", "0123456789"], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    fast.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    fast.save_pretrained(tmp_path / "tok")
    return AutoTokenizer.from_pretrained(tmp_path / "tok")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return _train_tokenizer(tmp_path_factory.mktemp("tok"))


def _config(**reward_kwargs):
    cfg = {"reward": {"reward_manager": {"source": "register", "name": "prpo"}}}
    if reward_kwargs:
        cfg["reward"]["reward_kwargs"] = reward_kwargs
    return OmegaConf.create(cfg)


def _data(tokenizer, response: str, ground_truth, *, pad_to: int | None = None, eos: bool = True) -> DataProto:
    """One trajectory as verl's agent loop builds it (optionally right-padded, as in a padded batch)."""
    prompt_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 6*7?"}], add_generation_prompt=True, tokenize=True
    )
    if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "input_ids"):
        prompt_ids = prompt_ids["input_ids"]
    resp_ids = tokenizer.encode(response, add_special_tokens=False)
    if eos:
        resp_ids = resp_ids + [tokenizer.eos_token_id]
    valid = len(resp_ids)
    if pad_to is not None and pad_to > valid:
        resp_ids = resp_ids + [tokenizer.pad_token_id] * (pad_to - valid)
    prompts = torch.tensor(prompt_ids, dtype=torch.int64)
    responses = torch.tensor(resp_ids, dtype=torch.int64)
    input_ids = torch.cat([prompts, responses])
    attention_mask = torch.ones_like(input_ids)
    attention_mask[len(prompts) + valid :] = 0
    position_ids = torch.cumsum(attention_mask, 0) - 1
    row = {
        "data_source": "math500",
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {"split": "test", "index": 0, "question": "What is 6*7?"},
        "raw_prompt": [{"role": "user", "content": "What is 6*7?"}],
        "index": 0,
    }
    non_tensor = {k: np.array([v]) for k, v in row.items() if k != "raw_prompt"}
    non_tensor["raw_prompt"] = np.empty(1, dtype=object)
    non_tensor["raw_prompt"][0] = row["raw_prompt"]
    return DataProto.from_dict(
        tensors={
            "prompts": prompts[None],
            "responses": responses[None],
            "input_ids": input_ids[None],
            "attention_mask": attention_mask[None],
            "position_ids": position_ids[None],
        },
        non_tensors=non_tensor,
    )


def _run(manager, data):
    return asyncio.run(manager.run_single(data))


def test_registered_under_prpo():
    from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
    from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER

    assert REWARD_MANAGER["prpo"] is PRPORewardManager
    assert get_reward_manager_cls("prpo") is PRPORewardManager


def test_resolved_from_config_by_verl(tokenizer):
    """verl's own path: Hydra overrides on ppo_trainer -> reward.reward_manager.name -> class -> instance."""
    from hydra import compose, initialize_config_module
    from verl.trainer.ppo.reward import load_reward_manager, resolve_reward_manager_cls

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        cfg = compose(
            config_name="ppo_trainer",
            overrides=["reward.reward_manager.name=prpo", "+reward.reward_kwargs.correct_score=2.0"],
        )
    assert resolve_reward_manager_cls(cfg) is PRPORewardManager
    mgr = load_reward_manager(cfg, tokenizer, reward_router_address=None, reward_model_tokenizer=None)
    assert isinstance(mgr, PRPORewardManager)
    assert mgr.correct_score == 2.0 and mgr.incorrect_score == -1.0 and mgr.no_answer_score == -1.0
    assert _run(mgr, _data(tokenizer, "\\boxed{42}", "42"))["reward_score"] == 2.0


@pytest.mark.parametrize(
    "response, gt, expected, found",
    [
        ("6*7 = 42, so the answer is $\\boxed{42}$.", "42", 1.0, 1.0),
        ("I think it is \\boxed{41}.", "42", -1.0, 1.0),
        ("The answer is 42.", "42", -1.0, 0.0),  # missing box
        ("First \\boxed{41}, no wait: \\boxed{42}", "42", 1.0, 1.0),  # last box counts
        ("So $x = \\boxed{\\frac{1}{2}}$", "\\frac{1}{2}", 1.0, 1.0),  # nested braces
        ("So $x = \\boxed{\\frac{1}{2}}$", "0.5", 1.0, 1.0),  # math-verify equivalence
        ("Hence \\boxed{\\{1, 2\\}}.", "\\{1,2\\}", 1.0, 1.0),  # escaped braces
        ("Truncated: \\boxed{\\frac{1}{", "\\frac{1}{2}", -1.0, 0.0),  # unclosed final box
    ],
)
def test_run_single_scores(tokenizer, response, gt, expected, found):
    mgr = PRPORewardManager(_config(), tokenizer, compute_score=None)
    out = _run(mgr, _data(tokenizer, response, gt))
    assert set(out) == {"reward_score", "reward_extra_info"}
    assert out["reward_score"] == expected
    info = out["reward_extra_info"]
    assert set(info) == {"answer_found", "correct", "acc", "grading_timeout"}
    assert info["grading_timeout"] == 0.0
    assert all(isinstance(v, float) for v in info.values())
    assert info["answer_found"] == found
    assert info["correct"] == info["acc"] == float(expected > 0)


def test_padding_is_ignored(tokenizer):
    """Only the valid response tokens (attention_mask) are decoded; pad tokens after them change nothing."""
    mgr = PRPORewardManager(_config(), tokenizer, compute_score=None)
    out = _run(mgr, _data(tokenizer, "\\boxed{42}", "42", pad_to=64))
    assert out["reward_score"] == 1.0


def test_scores_from_config_and_kwargs(tokenizer):
    mgr = PRPORewardManager(
        _config(correct_score=1.0, incorrect_score=0.0, no_answer_score=-0.5), tokenizer, compute_score=None
    )
    assert _run(mgr, _data(tokenizer, "\\boxed{42}", "42"))["reward_score"] == 1.0
    assert _run(mgr, _data(tokenizer, "\\boxed{7}", "42"))["reward_score"] == 0.0
    assert _run(mgr, _data(tokenizer, "42", "42"))["reward_score"] == -0.5
    # constructor kwargs win over the config node
    mgr = PRPORewardManager(_config(correct_score=3.0), tokenizer, compute_score=None, correct_score=5.0)
    assert _run(mgr, _data(tokenizer, "\\boxed{42}", "42"))["reward_score"] == 5.0


def test_numeric_and_list_ground_truths(tokenizer):
    mgr = PRPORewardManager(_config(), tokenizer, compute_score=None)
    assert _run(mgr, _data(tokenizer, "\\boxed{27}", 27.0))["reward_score"] == 1.0
    assert _run(mgr, _data(tokenizer, "\\boxed{B}", ["A", "B"]))["reward_score"] == 1.0


def test_batch_of_trajectories_like_reward_loop(tokenizer):
    """The reward-loop worker gathers run_single over data[i:i+1] concurrently in one event loop."""
    mgr = PRPORewardManager(_config(), tokenizer, compute_score=None)
    items = [
        _data(tokenizer, "\\boxed{42}", "42", pad_to=32),
        _data(tokenizer, "\\boxed{43}", "42", pad_to=32),
        _data(tokenizer, "no answer", "42", pad_to=32),
    ]
    batch = DataProto.concat(items)

    async def gather():
        return await asyncio.gather(*(mgr.run_single(batch[i : i + 1]) for i in range(len(batch))))

    outs = asyncio.run(gather())
    assert [o["reward_score"] for o in outs] == [1.0, -1.0, -1.0]
    assert [o["reward_extra_info"]["answer_found"] for o in outs] == [1.0, 1.0, 0.0]


def test_works_off_the_main_thread(tokenizer):
    """Ray runs async actors' event loops off the main thread: math-verify's signal timeout must not be used."""
    mgr = PRPORewardManager(_config(), tokenizer, compute_score=None)
    result = {}

    def worker():
        result["out"] = asyncio.run(mgr.run_single(_data(tokenizer, "\\boxed{\\frac{2}{4}}", "0.5")))

    t = threading.Thread(target=worker)
    t.start()
    t.join(60)
    assert result["out"]["reward_score"] == 1.0


class _SignalProofPool:
    """Factory of a grading pool whose workers never receive SIGALRM, so math-verify's own timeouts cannot end a
    runaway there: only the pool's kill can (see tests/test_math_grading_timeouts.py)."""

    @staticmethod
    def make(workers: int):
        import signal

        from verl_prpo.math_grading import GradingPool

        class Pool(GradingPool):
            def _start_worker(self) -> None:  # a fresh thread per worker launch
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
                super()._start_worker()

        return Pool(workers).start()


def test_runaway_answers_time_out_and_the_rest_of_the_batch_is_graded(tokenizer, monkeypatch):
    """The reward loop's way (run_single gathered in one event loop, off the main thread) with runaway answers whose
    computation only a kill can stop: they score as wrong with grading_timeout=1, the normal answers are graded
    right, and the batch ends within a bound."""
    import time

    import verl_prpo.math_grading as mg

    timeout = 2.0
    mgr = PRPORewardManager(_config(grading_timeout=timeout), tokenizer, compute_score=None)
    pool = _SignalProofPool.make(2)
    monkeypatch.setattr(mg, "_POOL", pool)
    cases = [
        ("So \\boxed{9^{9^{9^{9}}}}", "1", -1.0, 1.0),
        ("\\boxed{(10^{8})!}", "1", -1.0, 1.0),
        ("\\boxed{\\binom{10^{12}}{10^{11}}}", "1", -1.0, 1.0),
        ("So $x = \\boxed{\\frac{1}{2}}$", "0.5", 1.0, 0.0),
        ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}", 1.0, 0.0),
        ("\\boxed{43}", "42", -1.0, 0.0),
        ("\\boxed{42}", "42", 1.0, 0.0),
    ]
    batch = DataProto.concat([_data(tokenizer, r, gt, pad_to=48) for r, gt, _, _ in cases])

    async def gather():
        return await asyncio.gather(*(mgr.run_single(batch[i : i + 1]) for i in range(len(batch))))

    result = {}

    def worker():
        t0 = time.monotonic()
        result["outs"] = asyncio.run(gather())
        result["seconds"] = time.monotonic() - t0

    try:
        t = threading.Thread(target=worker)
        t.start()
        t.join(120)
        assert not t.is_alive()
        outs = result["outs"]
        assert [o["reward_score"] for o in outs] == [c[2] for c in cases]
        assert [o["reward_extra_info"]["grading_timeout"] for o in outs] == [c[3] for c in cases]
        assert all(o["reward_extra_info"]["answer_found"] == 1.0 for o in outs)
        # 3 runaways on 2 workers: at most 2 rounds of the timeout, plus worker restarts; generous bound
        assert result["seconds"] < 4 * (timeout + 3.0)
        assert pool.timeouts == 3
    finally:
        pool.close()


def test_grading_timeout_must_be_positive(tokenizer):
    for bad in (0, -1, None, "soon", float("inf")):
        with pytest.raises(ValueError, match="grading_timeout"):
            PRPORewardManager(_config(grading_timeout=bad), tokenizer, compute_score=None)


def test_grader_reads_the_response_up_to_its_first_stop_token(tokenizer):
    """A response that runs on into a new turn is cut at the first end-of-turn token: what follows (here another
    boxed answer) is not the model's answer. Trailing EOS / end-of-turn tokens change nothing."""
    mgr = PRPORewardManager(_config(), tokenizer, compute_score=None)
    run_on = "\\boxed{42}<|im_end|>\n<|im_start|>user\nAnd now? \\boxed{7}"
    assert _run(mgr, _data(tokenizer, run_on, "42", eos=False))["reward_score"] == 1.0
    assert _run(mgr, _data(tokenizer, run_on, "7", eos=False))["reward_score"] == -1.0
    assert _run(mgr, _data(tokenizer, "\\boxed{42}<|im_end|><|endoftext|>", "42", eos=False))["reward_score"] == 1.0
    assert _run(mgr, _data(tokenizer, "\\boxed{42}<|endoftext|><|im_end|>", "42", eos=False))["reward_score"] == 1.0


def test_grading_timeout_count():
    from verl_prpo.reward_manager import grading_timeout_count

    infos = [{"grading_timeout": 1.0}, {"grading_timeout": 0.0}, None, {"correct": 1.0}, {"grading_timeout": 1.0}]
    assert grading_timeout_count(infos) == 2
    assert grading_timeout_count([]) == 0
