"""GPU set-ups that run as documented, checked from the config alone (issue 20, item 3), and the training metrics of
items 1 and 3 that the trainer reads from the batch.

* the data-parallel check uses the Ulysses size verl's ``FSDPActorConfig`` gives the engine (the reference here is
  verl's own dataclass built from the same config);
* ``prm.placement=own_pool`` with one PRM GPU and a large batch warns at start-up;
* ``prm/agreement`` counts a response as correct from the outcome score, without the KL penalty of
  ``algorithm.use_kl_in_reward``;
* ``reward/grading_timeouts`` is read from TransferQueue in both layouts verl writes reward extra info in;
* the single-node ``own_pool`` example of ``recipes/README.md`` is a split the recipes accept.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from verl_prpo import trainer as trainer_mod
from verl_prpo.trainer import (
    PRPOTrainerSync,
    own_pool_capacity_warning,
    trainer_data_parallel_size,
    validate_plugin_config,
)

REPO = Path(trainer_mod.__file__).resolve().parents[1]
CONF_DIR = REPO / "verl_prpo" / "conf"


@pytest.fixture(scope="module")
def composed():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="prpo_trainer")


def _cfg(composed, **overrides):
    cfg = copy.deepcopy(composed)
    base = {"prm.enable": True, "prm.model_path": "/models/prm", "data.train_batch_size": 128,
            "actor_rollout_ref.actor.ppo_mini_batch_size": 128, "actor_rollout_ref.rollout.n": 8,
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 4,
            "trainer.nnodes": 1, "trainer.n_gpus_per_node": 8}
    base.update(overrides)
    with open_dict(cfg):
        for key, value in base.items():
            OmegaConf.update(cfg, key, value, merge=False)
    return cfg


ACTOR_SP = "actor_rollout_ref.actor.ulysses_sequence_parallel_size"
FSDP_SP = "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size"


# ---------------------------------------------------------------------------------------------- data parallel size
@pytest.mark.parametrize("actor_sp, fsdp_sp", [(1, 1), (2, 1), (1, 4), (2, 4), (4, 2), (8, 1)])
def test_data_parallel_size_is_the_one_verl_computes(composed, actor_sp, fsdp_sp):
    from verl.utils.config import omega_conf_to_dataclass

    cfg = _cfg(composed, **{ACTOR_SP: actor_sp, FSDP_SP: fsdp_sp})
    verl_actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)  # verl's own resolution of the two keys
    verl_sp = verl_actor.engine.ulysses_sequence_parallel_size
    assert trainer_data_parallel_size(cfg) == 8 // verl_sp


def test_sequence_parallel_configs_that_verl_accepts_start(composed, monkeypatch):
    """8 GPUs with Ulysses 2 (the deprecated actor-level key, fsdp_config left at 1): data-parallel size 4. A mini
    batch of 12 x 1 responses divides 4 but not 8, so the old check (which read fsdp_config's 1 first) refused it."""
    built = []
    monkeypatch.setattr(trainer_mod.PPOTrainerSync, "__init__", lambda self, config: built.append(config))
    ok = {ACTOR_SP: 2, "actor_rollout_ref.actor.ppo_mini_batch_size": 12, "actor_rollout_ref.rollout.n": 1,
          "actor_rollout_ref.actor.use_remove_padding": True}
    PRPOTrainerSync(_cfg(composed, **ok))
    PRPOTrainerSync(_cfg(composed, **{**ok, ACTOR_SP: 1, FSDP_SP: 2}))  # the current key
    assert len(built) == 2
    # what verl would refuse is still refused at start-up: 10 responses over 4 data-parallel ranks
    with pytest.raises(ValueError, match="data-parallel size 4"):
        PRPOTrainerSync(_cfg(composed, **{**ok, "actor_rollout_ref.actor.ppo_mini_batch_size": 10}))
    # the actor-level key wins over fsdp_config when both are set (verl copies it over): 8 / 2 = 4, not 8 / 4
    assert trainer_data_parallel_size(_cfg(composed, **{ACTOR_SP: 2, FSDP_SP: 4})) == 4


# ---------------------------------------------------------------------------------------------- own_pool warning
def test_own_pool_with_one_gpu_for_a_large_batch_warns_at_start(composed, caplog):
    cfg = _cfg(composed, **{"prm.placement": "own_pool", "prm.n_gpus_per_node": 1,
                            "trainer.n_gpus_per_node": 4, "actor_rollout_ref.actor.ppo_mini_batch_size": 128})
    with caplog.at_level(logging.WARNING, logger="verl_prpo.trainer"):
        validate_plugin_config(cfg)
    msgs = [r.getMessage() for r in caplog.records if "own_pool" in r.getMessage()]
    assert len(msgs) == 1
    assert "ONE PRM GPU" in msgs[0] and "1024 responses" in msgs[0] and "4 GPU(s) wait" in msgs[0]


@pytest.mark.parametrize("overrides", [
    {"prm.placement": "colocate"},
    {"prm.placement": "own_pool", "prm.n_gpus_per_node": 2},
    {"prm.placement": "own_pool", "prm.nnodes": 2},
    {"prm.placement": "own_pool", "data.train_batch_size": 16, "actor_rollout_ref.rollout.n": 8},  # 128 responses
])
def test_no_warning_where_the_prm_is_not_a_bottleneck(composed, overrides):
    cfg = _cfg(composed, **overrides)
    assert own_pool_capacity_warning(cfg, validate_plugin_config(cfg)["prm"]) is None


def test_recipes_readme_single_node_own_pool_example_is_accepted(composed, monkeypatch):
    """Every ``PRM_PLACEMENT=own_pool PRM_GPUS=<k>`` example of recipes/README.md leaves the trainer a GPU count
    that the PRPO recipes' 128 x 8 responses divide (the plugin's own check), on one 8-GPU machine."""
    text = (REPO / "recipes" / "README.md").read_text()
    examples = [int(k) for k in re.findall(r"PRM_PLACEMENT=own_pool PRM_GPUS=(\d+)", text)]
    assert examples, "the README no longer has a single-node own_pool example"
    monkeypatch.setattr(trainer_mod.PPOTrainerSync, "__init__", lambda self, config: None)
    for k in examples:
        PRPOTrainerSync(_cfg(composed, **{"trainer.n_gpus_per_node": 8 - k, "prm.placement": "own_pool",
                                          "prm.n_gpus_per_node": k}))


# ---------------------------------------------------------------------------------------------- prm/agreement
class _RecordingScorer:
    def __init__(self):
        self.correct = None

    def score(self, batch, data, segment_ids, correct=None, response_mask=None):
        from verl_prpo.prm.scoring import prm_metrics

        self.correct = correct.clone()
        mask = response_mask if response_mask is not None else data.batch["response_mask"]
        # a PRM that says "good" (0.9) exactly on the responses whose outcome score is positive
        good = (data.batch["token_level_scores"].sum(-1) > 0).float()
        scores = (0.1 + 0.8 * good)[:, None] * mask.float()
        steps = segment_ids.long().masked_fill(~mask.bool(), -1)  # no merged segments
        return scores, steps, prm_metrics(scores, mask, None, correct)


def test_agreement_uses_the_outcome_without_the_kl_penalty():
    from verl import DataProto

    t = PRPOTrainerSync.__new__(PRPOTrainerSync)
    t.config = OmegaConf.create({
        "algorithm": {"adv_estimator": "prpo", "use_kl_in_reward": True, "kl_penalty": "kl",
                      "norm_adv_by_std_in_grpo": True, "rollout_correction": None,
                      "prpo": {"segmentation": "entropy", "k": 2, "m": 2, "step_len": 4, "seed": 0, "mu": 0.5,
                               "sigma": math.sqrt(1.0 / 12.0), "normalization": "fixed", "outcome_shift": True,
                               "beta_norm": "none", "eps": 1e-6}},
        "actor_rollout_ref": {"rollout": {"n": 2}, "actor": {"use_kl_loss": False, "kl_loss_coef": 0.0}},
        "prm": {"enable": False, "scores_from_batch": True},
    })
    t.adv_name = "prpo"
    t.plugin_config = validate_plugin_config(t.config)
    t.prm_scorer = _RecordingScorer()
    t._prm_layout = {}
    t._newline_mask = None
    t.global_steps = 1
    B, L = 4, 8
    mask = torch.ones(B, L, dtype=torch.int64)
    scores = torch.zeros(B, L)
    scores[:, -1] = torch.tensor([1.0, -1.0, 1.0, -1.0])  # outcome: responses 0 and 2 are right
    kl = torch.full((B, L), 0.2)  # KL in reward: every row sum drops by 1.6, so no reward sum stays positive
    data = DataProto.from_dict(tensors={
        "response_mask": mask, "token_level_scores": scores, "token_level_rewards": scores - kl,
        "entropy": torch.rand(B, L, generator=torch.Generator().manual_seed(0)),
        "responses": torch.randint(5, 100, (B, L))})
    metrics: dict = {}
    t._estimator_inputs(None, data, metrics)
    assert t.prm_scorer.correct.tolist() == [True, False, True, False]
    assert metrics["prm/agreement"] == 1.0  # with the KL-penalised sums it would be 0.5


# ---------------------------------------------------------------------------------------------- reward/grading_timeouts
@pytest.fixture(scope="module")
def tq_cluster():
    ray = pytest.importorskip("ray")
    tq = pytest.importorskip("transfer_queue")
    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}})
        started = True
    tq.init(OmegaConf.create({"controller": {"polling_mode": False},
                              "backend": {"storage_backend": "SimpleStorage",
                                          "SimpleStorage": {"num_data_storage_units": 1, "total_storage_size": None}}}))
    try:
        yield tq
    finally:
        tq.close()
        if started:
            ray.shutdown()


@pytest.mark.ray
def test_grading_timeouts_metric_from_both_layouts(tq_cluster):
    from tensordict import TensorDict
    from transfer_queue import KVBatchMeta  # noqa: F401
    from verl.utils import tensordict_utils as tu

    from verl_prpo.reward_manager import grading_timeout_metrics

    tq = tq_cluster
    flags = [0.0, 1.0, 0.0, 1.0, 1.0]
    n = len(flags)
    base = {"responses": torch.nested.as_nested_tensor([torch.arange(3 + i) for i in range(n)], layout=torch.jagged)}
    # 1. reward computed by the trainer's reward loop: each extra-info key is a field of its own (numpy array)
    keys = [f"a{i}_0_0" for i in range(n)]
    meta = tq.kv_batch_put(keys=keys, partition_id="train", fields=TensorDict(base, batch_size=[n]))
    tq.kv_batch_put(keys=keys, partition_id="train",
                    fields=tu.get_tensordict({"grading_timeout": np.array(flags)}))
    try:
        assert grading_timeout_metrics(meta) == {"reward/grading_timeouts": 3.0}
    finally:
        tq.kv_clear(keys=keys, partition_id="train")
    # 2. reward computed in the agent loop: reward_extra_info inside each sample's extra_fields
    keys = [f"b{i}_0_0" for i in range(n)]
    rows = [{"responses": torch.arange(3 + i),
             "extra_fields": {"reward_extra_info": {"acc": 0.0, "grading_timeout": f}, "min_global_steps": 1}}
            for i, f in enumerate(flags)]
    meta = tq.kv_batch_put(keys=keys, partition_id="train", fields=tu.list_of_dict_to_tensordict(rows))
    try:
        assert grading_timeout_metrics(meta) == {"reward/grading_timeouts": 3.0}
    finally:
        tq.kv_clear(keys=keys, partition_id="train")
    # 3. neither (another reward manager): no metric
    keys = [f"c{i}_0_0" for i in range(n)]
    meta = tq.kv_batch_put(keys=keys, partition_id="train", fields=TensorDict(base, batch_size=[n]))
    try:
        assert grading_timeout_metrics(meta) == {}
    finally:
        tq.kv_clear(keys=keys, partition_id="train")


# ---------------------------------------------------------------------------------------------- the gpu-sdpa extra
def _extras() -> dict:
    import ast

    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no extras_require")


def test_gpu_sdpa_extra_is_verls_fsdp_extra_without_flash_attn():
    """``gpu-sdpa`` must pull everything verl 0.9.1's ``vllm`` and ``fsdp`` extras pull, except flash-attn."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    def verl_extra(name: str) -> set[str]:
        out = set()
        for line in requires("verl") or []:
            req = Requirement(line)
            if req.marker is not None and req.marker.evaluate({"extra": name}):
                req.marker = None
                out.add(str(req))
        return out

    fsdp = verl_extra("fsdp")
    assert "verl[flash-attn-cu130torch211]" in fsdp  # what the `gpu` extra compiles
    expected = {r for r in fsdp if not r.startswith("verl[")} | {"verl[cupy-cu130]", "verl[vllm]"}
    expected -= {r for r in verl_extra("vllm") if not r.startswith("verl[")}  # torch & co. come with vllm
    got = set()
    for line in _extras()["gpu-sdpa"]:
        req = Requirement(line)
        if req.name == "verl":
            assert str(req.specifier) == "==0.9.1"
            got |= {f"verl[{e}]" for e in req.extras}
        else:
            got.add(str(req))
    assert got == expected
    assert not any("flash-attn" in r or "flash_attn" in r for r in got)
    assert _extras()["gpu"] == ["verl[vllm,fsdp]==0.9.1"]


class _MergingScorer:
    """A PRM pipeline that merged each response's last one-token segment (an EOS-only tail) into the step before."""

    def score(self, batch, data, segment_ids, correct=None, response_mask=None):
        mask = response_mask.bool()
        steps = segment_ids.long().clone()
        last = mask.long().sum(-1) - 1
        rows = torch.arange(steps.shape[0])
        steps[rows, last] = steps[rows, last - 1]
        steps = steps.masked_fill(~mask, -1)
        scores = torch.where(mask, 0.3 + 0.1 * steps.clamp(min=0).float(), 0.0)  # step s scores 0.3 + 0.1 s
        return scores, steps, {}


def test_pure_counts_the_prms_steps_not_merged_segments():
    from verl import DataProto

    t = PRPOTrainerSync.__new__(PRPOTrainerSync)
    t.config = OmegaConf.create({
        "algorithm": {"adv_estimator": "pure", "use_kl_in_reward": False, "kl_penalty": "kl",
                      "norm_adv_by_std_in_grpo": True, "rollout_correction": None,
                      "pure": {"weighting": "min_form", "temperature": 0.1, "baseline": "token", "vr_coef": 1.0,
                               "mask_separator": True, "whiten": True, "segmentation": "fixed", "k": 5, "m": 10,
                               "step_len": 3, "seed": 0, "cut_rule": "greedy"}},
        "actor_rollout_ref": {"rollout": {"n": 2}, "actor": {"use_kl_loss": False, "kl_loss_coef": 0.0}},
        "prm": {"enable": False, "scores_from_batch": True},
    })
    t.adv_name = "pure"
    t.plugin_config = validate_plugin_config(t.config)
    t.prm_scorer = _MergingScorer()
    t._prm_layout, t._newline_mask, t.global_steps = {}, None, 1
    B, L = 2, 7  # fixed segments of 3 tokens: [0 0 0 1 1 1 2]; the lone last token is the merged tail
    scores = torch.zeros(B, L)
    scores[:, -1] = torch.tensor([1.0, 0.0])
    data = DataProto.from_dict(tensors={"response_mask": torch.ones(B, L, dtype=torch.int64),
                                        "token_level_scores": scores, "token_level_rewards": scores,
                                        "responses": torch.randint(5, 100, (B, L))})
    kwargs = t._estimator_inputs(None, data, {})
    assert kwargs["segment_ids"].tolist() == [[0, 0, 0, 1, 1, 1, 1]] * 2  # the PRM's two steps, not three segments
    fn = t.estimator.fn
    metrics: dict = {}
    fn(token_level_rewards=scores, response_mask=data.batch["response_mask"], index=np.array(["a", "a"], dtype=object),
       config=t.config.algorithm, metrics=metrics, **kwargs)
    assert metrics["pure/steps_per_response/mean"] == 2.0
    # soft minimum over the two steps r = 2p - 1 = (-0.4, -0.2): the tail no longer counts step 1 a second time
    r = torch.tensor([-0.4, -0.2])
    w = torch.softmax(-r / 0.1, 0)
    assert metrics["pure/soft_min_reward/mean"] == pytest.approx(float((w * r).sum()), abs=1e-6)
