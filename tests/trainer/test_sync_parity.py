"""``prpo_sync`` must drive verl exactly as ``sync`` does (issue 9, item 1).

verl 0.9.1's ``PPOTrainer`` compares ``self.trainer_mode`` with the string ``"sync"`` in several places
(``trainer_base.py``: replay buffer class, exact refill of the dataloader, TransferQueue checkpoint on save and
load, re-issue of in-flight prompts on resume, prompt storage on submit). These tests build a stock ``sync``
trainer and a ``prpo_sync`` trainer from the same composed Hydra config (no cluster: the TransferQueue client, the
actor worker group and the agent loop are recording fakes) and compare what verl derives from the mode.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from verl.trainer.ppo.v1 import trainer_base
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
from verl.trainer.ppo.v1.trainer_base import get_trainer_cls
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from verl_prpo import trainer as trainer_mod
from verl_prpo.trainer import PRPOTrainerSync

CONF_DIR = Path(trainer_mod.__file__).resolve().parent / "conf"
ESTIMATORS = ["grpo", "prpo", "prm_avg", "prl", "spro"]


@pytest.fixture(scope="module")
def composed():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="prpo_trainer")


def _cfg(composed, mode: str, adv: str, **overrides):
    cfg = copy.deepcopy(composed)
    with open_dict(cfg):
        cfg.trainer.v1.trainer_mode = mode
        cfg.algorithm.adv_estimator = adv
        cfg.prm.scores_from_batch = True
        cfg.data.train_batch_size = 8
        cfg.data.dataloader_num_workers = 0
        for key, value in overrides.items():
            OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def _build(composed, mode: str, adv: str, **overrides):
    """The trainer class verl's main_ppo would pick for ``mode``, constructed (no workers, no Ray)."""
    cfg = _cfg(composed, mode, adv, **overrides)
    return get_trainer_cls(cfg.trainer.v1.trainer_mode)(cfg)


class FakeTQ:
    """Records the TransferQueue client calls verl's trainer makes."""

    def __init__(self, inflight=()):
        self.calls: list[tuple[str, dict]] = []
        self.inflight = list(inflight)

    def save_checkpoint(self, path, metadata=None):
        self.calls.append(("save_checkpoint", {"path": path}))

    def load_checkpoint(self, path):
        self.calls.append(("load_checkpoint", {"path": path}))

    def kv_list(self, partition_id):
        self.calls.append(("kv_list", {}))
        return {partition_id: {k: {"is_prompt": True, "status": "pending"} for k in self.inflight}}

    def kv_batch_put(self, keys, partition_id, tags=None, fields=None):
        self.calls.append(("kv_batch_put", {"keys": list(keys), "fields": fields}))

    def kv_batch_get(self, keys, partition_id, select_fields=None):  # pragma: no cover - reached only when async
        self.calls.append(("kv_batch_get", {}))
        raise AssertionError("sync mode must not re-read in-flight prompts")

    def kv_clear(self, keys, partition_id):  # pragma: no cover
        self.calls.append(("kv_clear", {}))


class FakeWG:
    def __init__(self):
        self.calls = []

    def save_checkpoint(self, *a, **k):
        self.calls.append("save")

    def load_checkpoint(self, *a, **k):
        self.calls.append("load")


class FakeLoader:
    def state_dict(self):
        return {"step": 1}

    def load_state_dict(self, state):
        self.loaded = state


class FakeAgentLoop:
    def __init__(self):
        self.batches = []

    def generate_sequences(self, batch):
        self.batches.append(batch)


def _derived(t, tmp_path: Path, monkeypatch) -> dict:
    """Everything verl 0.9.1 derives from ``trainer_mode``, observed through its own code paths."""
    out: dict = {
        "replay_buffer": type(t.replay_buffer),
        "replay_buffer.trainer_mode": t.replay_buffer.trainer_mode,
        "replay_buffer.trainer_config": OmegaConf.to_container(t.replay_buffer.trainer_config)
        if OmegaConf.is_config(t.replay_buffer.trainer_config) else t.replay_buffer.trainer_config,
        "replay_buffer.gen_batch_size": getattr(t.replay_buffer, "gen_batch_size", None),
        "parameter_sync_step": t.parameter_sync_step,
    }

    # exact refill: _init_dataloader forces data.gen_batch_size=1 unless the mode is "sync"
    monkeypatch.setattr(trainer_base, "create_rl_dataset", lambda *a, **k: list(range(32)))
    monkeypatch.setattr(trainer_base, "create_rl_sampler", lambda *a, **k: None)
    t.tokenizer = t.processor = None
    t._init_dataloader()
    out["data.gen_batch_size"] = t.config.data.get("gen_batch_size", None)
    out["train_dataloader.batch_size"] = t.train_dataloader.batch_size

    # checkpoint save: TransferQueue state is pickled into the checkpoint only for async modes
    fake = FakeTQ()
    monkeypatch.setattr(trainer_base, "tq", fake)
    with open_dict(t.config):
        t.config.trainer.default_local_dir = str(tmp_path / "ckpt")
        t.config.trainer.default_hdfs_dir = None
    t.actor_rollout_wg, t.use_critic, t.global_steps = FakeWG(), False, 3
    t.train_dataloader = FakeLoader()
    t._save_checkpoint()
    out["save: tq calls"] = [name for name, _ in fake.calls]

    # resume: TransferQueue state is loaded only for async modes (the folder exists here for both)
    step_dir = tmp_path / "ckpt" / "global_step_3"
    (step_dir / "transfer_queue").mkdir(parents=True, exist_ok=True)
    fake.calls.clear()
    with open_dict(t.config):
        t.config.trainer.resume_mode = "resume_path"
        t.config.trainer.resume_from_path = str(step_dir)
    monkeypatch.setattr(trainer_base, "_count_tq_prompt_groups", lambda partition_id="train": 0)
    t._load_checkpoint()
    out["resume: tq calls"] = [name for name, _ in fake.calls]
    out["resume: global_steps"] = t.global_steps

    # re-issue of in-flight prompts after resume: a no-op in sync mode
    fake = FakeTQ(inflight=["p0"])
    monkeypatch.setattr(trainer_base, "tq", fake)
    t.agent_loop_manager = FakeAgentLoop()
    out["reissue"] = t._reissue_inflight_prompts()
    out["reissue: tq calls"] = [name for name, _ in fake.calls]

    # prompt storage on submit: sync registers only keys and tags, async also stores the prompt tensors
    from tensordict import NonTensorStack, TensorDict

    fake = FakeTQ()
    monkeypatch.setattr(trainer_base, "tq", fake)
    batch = TensorDict({"input_ids": torch.zeros(2, 3, dtype=torch.long), "uid": NonTensorStack("a", "b")},
                       batch_size=[2])
    out["submitted"] = t._submit_batch_to_rollout(batch)
    (name, kw), = fake.calls
    out["submit: stored fields"] = None if kw["fields"] is None else sorted(kw["fields"].keys())
    return out


@pytest.mark.parametrize("adv", ESTIMATORS)
def test_prpo_sync_drives_verl_exactly_as_sync(composed, tmp_path, monkeypatch, adv):
    sync = _build(composed, "sync", adv)
    prpo = _build(composed, "prpo_sync", adv)
    assert type(sync) is PPOTrainerSync and type(prpo) is PRPOTrainerSync
    got_sync = _derived(sync, tmp_path / "sync", monkeypatch)
    got_prpo = _derived(prpo, tmp_path / "prpo", monkeypatch)
    # what stock sync derives (verl 0.9.1), spelled out so that the comparison cannot pass vacuously
    assert got_sync["replay_buffer"] is ReplayBuffer
    assert got_sync["data.gen_batch_size"] is None and got_sync["train_dataloader.batch_size"] == 8
    assert got_sync["save: tq calls"] == [] and got_sync["resume: tq calls"] == []
    assert got_sync["reissue"] == 0 and got_sync["submit: stored fields"] is None
    assert got_prpo == got_sync


def test_prpo_sync_keeps_its_name_in_the_config(composed):
    """The class is still selected as prpo_sync (main_ppo reads the config), only verl's comparisons see sync."""
    t = _build(composed, "prpo_sync", "prpo")
    assert t.config.trainer.v1.trainer_mode == "prpo_sync"
    assert t.trainer_mode == "sync"


def test_sync_dapo_exact_refill_is_unchanged(composed, tmp_path, monkeypatch):
    """Exact refill still follows verl's own switches (here sync_refill_failed_groups) in prpo_sync."""
    over = {"trainer.v1.sampler.sync_refill_failed_groups": True}
    got_sync = _derived(_build(composed, "sync", "grpo", **over), tmp_path / "s", monkeypatch)
    got_prpo = _derived(_build(composed, "prpo_sync", "grpo", **over), tmp_path / "p", monkeypatch)
    assert got_sync["data.gen_batch_size"] == 1
    assert got_prpo == got_sync


def test_poll_interval_default_is_verls_and_the_option_sets_it(composed):
    """``trainer.v1.sampler.poll_interval``: null keeps verl's 2 s; a value reaches the replay buffer."""
    stock = _build(composed, "sync", "grpo").replay_buffer.poll_interval
    assert stock == 2.0  # verl 0.9.1's hard-coded default
    assert _build(composed, "prpo_sync", "grpo").replay_buffer.poll_interval == stock
    fast = _build(composed, "prpo_sync", "grpo", **{"trainer.v1.sampler.poll_interval": 0.1})
    assert fast.replay_buffer.poll_interval == 0.1


def test_cpu_mode_config_polls_fast():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="prpo_trainer_cpu")
    assert cfg.trainer.v1.sampler.poll_interval == 0.1
    assert trainer_mod.replay_buffer_poll_interval(cfg) == 0.1


@pytest.mark.parametrize("bad", [0, -1.0, "soon", float("nan")])
def test_bad_poll_interval_fails_in_the_constructor(composed, bad):
    with pytest.raises(ValueError, match=r"trainer\.v1\.sampler\.poll_interval"):
        _build(composed, "prpo_sync", "grpo", **{"trainer.v1.sampler.poll_interval": bad})
