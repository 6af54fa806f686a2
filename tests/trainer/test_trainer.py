"""The ``prpo_sync`` V1 trainer mode: advantage stage against a real local TransferQueue, start-up validation,
Hydra configs and registration (in this process, a fresh interpreter and a fresh Ray worker).

The advantage tests put a rollout batch into TransferQueue the way verl's agent loop does (jagged nested tensors of
response length, ``uid`` as a non-tensor field, keys ``{uid}_{session_id}_{index}``), run
``PRPOTrainerSync._compute_advantage`` on a trainer built with ``__new__`` (as verl's own V1 CPU tests do), read the
advantages back from TransferQueue and compare them with the estimator called directly on padded tensors.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from verl.trainer.ppo import core_algos
from verl.trainer.ppo.v1.trainer_base import get_trainer_cls
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from verl_prpo import trainer as trainer_mod
from verl_prpo.registration import ESTIMATOR_NAMES
from verl_prpo.segmentation import segment
from verl_prpo.trainer import (
    PRM_SCORES_KEY,
    PRPOTrainerSync,
    ensure_reference_policy,
    validate_plugin_config,
)

CONF_DIR = Path(trainer_mod.__file__).resolve().parent / "conf"
PYTHON = sys.executable
PARTITION = "train"
GLOBAL_STEPS = 1

# (uid, response length, outcome reward): 2 groups of 3, interleaved (shuffled), ragged, one response of length 1
ROWS = [
    ("u1", 9, 1.0),
    ("u0", 5, 0.0),
    ("u0", 12, 1.0),
    ("u1", 1, 0.0),
    ("u0", 7, 1.0),
    ("u1", 10, 1.0),
]
LMAX = max(n for _, n, _ in ROWS)

# ----------------------------------------------------------------------------------------------------------------
# the rollout batch
# ----------------------------------------------------------------------------------------------------------------


def _make_rows(seed: int = 0) -> list[dict]:
    """One dict per response with response-length tensors, like verl's agent loop output."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for session, (uid, n, reward) in enumerate(ROWS):
        rm = torch.zeros(n)
        rm[-1] = reward  # outcome reward at the last token
        old = -torch.rand(n, generator=g) * 2.0
        rows.append({
            "uid": uid,
            "session": session,
            "response_mask": torch.ones(n, dtype=torch.int64),
            "rm_scores": rm,
            "old_log_probs": old,
            "ref_log_prob": old - 0.3 * torch.randn(n, generator=g),
            "entropy": torch.rand(n, generator=g) * 3.0,
            "responses": torch.randint(5, 1000, (n,), generator=g, dtype=torch.int64),
            PRM_SCORES_KEY: torch.rand(n, generator=g),
        })
    return rows


def _padded(rows: list[dict], field: str) -> torch.Tensor:
    """Zero-padded (B, LMAX) tensor of one field, built here independently of TransferQueue/tensordict."""
    first = rows[0][field]
    out = torch.zeros((len(rows), LMAX), dtype=first.dtype)
    for i, r in enumerate(rows):
        out[i, : r[field].numel()] = r[field]
    return out


def _put_batch(tq, rows: list[dict], prefix: str, with_prm: bool = True):
    """kv_batch_put the rows the way verl's agent loop does; return a real KVBatchMeta for them."""
    from tensordict import NonTensorStack, TensorDict
    from transfer_queue import KVBatchMeta

    fields = ["response_mask", "rm_scores", "old_log_probs", "ref_log_prob", "entropy", "responses"]
    if with_prm:
        fields.append(PRM_SCORES_KEY)
    data = {f: torch.nested.as_nested_tensor([r[f] for r in rows], layout=torch.jagged) for f in fields}
    data["uid"] = NonTensorStack(*[f"{prefix}{r['uid']}" for r in rows])
    td = TensorDict(data, batch_size=[len(rows)])
    # verl's key format {uid}_{session_id}_{index}: one agent-loop output (index 0) per session
    keys = [f"{prefix}{r['uid']}_{r['session']}_0" for r in rows]
    tags = [{"status": "success", "response_len": int(r["response_mask"].numel())} for r in rows]
    meta = tq.kv_batch_put(keys=keys, partition_id=PARTITION, fields=td, tags=tags)
    assert isinstance(meta, KVBatchMeta) and len(meta) == len(rows)
    return meta


def _algorithm_node(adv: str) -> dict:
    return {
        "adv_estimator": adv,
        "use_kl_in_reward": False,
        "kl_penalty": "kl",
        "gamma": 1.0,
        "lam": 1.0,
        "norm_adv_by_std_in_grpo": True,
        "rollout_correction": None,
        # small values so that these short responses get several segments / steps
        "prpo": {"segmentation": "entropy", "k": 2, "m": 2, "step_len": 4, "seed": 0, "mu": 0.5,
                 "sigma": math.sqrt(1.0 / 12.0), "normalization": "fixed", "outcome_shift": True,
                 "beta_norm": "none", "eps": 1e-6},
        "prl": {"segmentation": "fixed", "step_len": 3, "eta": 10.0, "variant": "outcome_first",
                "kl_scope": "step_end", "eps": 1e-6},
        "spro": {"beta_s": 0.5, "msa_norm": "none", "eps": 1e-6},
    }


def _make_trainer(adv: str) -> PRPOTrainerSync:
    """A trainer with only what ``_compute_advantage`` reads (no workers, no Ray actors of its own)."""
    t = PRPOTrainerSync.__new__(PRPOTrainerSync)
    t.config = OmegaConf.create({
        "algorithm": _algorithm_node(adv),
        "actor_rollout_ref": {"rollout": {"n": 3}, "actor": {"use_kl_loss": True, "kl_loss_coef": 0.0}},
        "prm": {"enable": False, "scores_from_batch": True},  # scores come from TransferQueue in these tests
    })
    t.adv_name = adv
    t.plugin_config = validate_plugin_config(t.config)
    t.prm_scorer = None
    t._newline_mask = None
    t.global_steps = GLOBAL_STEPS
    return t


def _nested_rows(x: torch.Tensor) -> list[torch.Tensor]:
    assert x.is_nested
    return list(x.unbind())


# ----------------------------------------------------------------------------------------------------------------
# fixtures: a fresh interpreter and a fresh Ray worker probe the registration while the other tests run
# ----------------------------------------------------------------------------------------------------------------

_PROBE = r"""
import json, sys
pre = sorted(m for m in sys.modules if m.startswith("verl_prpo"))
import verl  # the only import: verl loads the `verl.plugins` entry point
plugin_loaded = "verl_prpo" in sys.modules
trainer_loaded_by_import_verl = "verl_prpo.trainer" in sys.modules  # registration is lazy: not yet
from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY
from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, get_trainer_cls
from verl_prpo.registration import check_registered
check_registered()
cls = get_trainer_cls("prpo_sync")
print("PROBE=" + json.dumps({"pre": pre, "plugin_loaded": plugin_loaded,
      "trainer_loaded_by_import_verl": trainer_loaded_by_import_verl, "trainers": sorted(TRAINER_REGISTRY),
      "estimators": sorted(ADV_ESTIMATOR_REGISTRY), "cls": cls.__module__ + "." + cls.__qualname__}))
"""


def _clean_env() -> dict:
    env = dict(os.environ)
    # the entry point alone must do it: no explicit module list, default plugin policy
    env.pop("VERL_USE_EXTERNAL_MODULES", None)
    env.pop("VERL_USE_EXTERNAL_PLUGINS", None)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


@pytest.fixture(scope="module")
def subprocess_probe(tmp_path_factory):
    """``import verl`` in a fresh interpreter, started early (it takes a while) and read by its test."""
    cwd = tmp_path_factory.mktemp("probe")  # not the repository: the installed package must be found
    proc = subprocess.Popen([PYTHON, "-c", _PROBE], cwd=cwd, env=_clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def cluster(subprocess_probe):
    """A private local Ray cluster with a real TransferQueue (SimpleStorage, one storage unit)."""
    ray = pytest.importorskip("ray")
    tq = pytest.importorskip("transfer_queue")
    started = False
    if not ray.is_initialized():
        # address="local": always a fresh private cluster, never someone else's
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}})
        started = True

    def ray_probe():
        """Runs in a fresh Ray worker: only ``import verl``, then report what is registered. (A local function:
        cloudpickle ships it by value, so the worker does not import this test module.)"""
        import sys as _sys

        pre = sorted(m for m in _sys.modules if m.startswith("verl_prpo"))
        import verl  # noqa: F401

        from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY
        from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY

        return {"pre": pre, "trainers": sorted(TRAINER_REGISTRY), "estimators": sorted(ADV_ESTIMATOR_REGISTRY)}

    # submitted now so that its `import verl` overlaps the other tests; its own runtime env gives it a worker of its
    # own, never one that imported anything before
    probe_ref = ray.remote(num_cpus=1)(ray_probe).options(
        runtime_env={"env_vars": {"PRPO_TEST_FRESH_WORKER": "1"}}).remote()
    conf = OmegaConf.create({
        "controller": {"polling_mode": False},
        "backend": {"storage_backend": "SimpleStorage",
                    "SimpleStorage": {"num_data_storage_units": 1, "total_storage_size": None}},
    })
    tq.init(conf)
    try:
        yield {"ray": ray, "tq": tq, "probe_ref": probe_ref}
    finally:
        tq.close()
        if started:
            ray.shutdown()


@pytest.fixture(scope="module")
def composed():
    """The plugin's real Hydra configs, composed once (deep-copied by the tests that change them)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return {"prpo_trainer": compose(config_name="prpo_trainer"),
                "prpo_trainer_cpu": compose(config_name="prpo_trainer_cpu")}


def _config(composed, name="prpo_trainer", **overrides):
    cfg = copy.deepcopy(composed[name])
    with open_dict(cfg):
        for key, value in overrides.items():
            OmegaConf.update(cfg, key, value, merge=False)
    return cfg


# ----------------------------------------------------------------------------------------------------------------
# 1. the advantage stage against TransferQueue
# ----------------------------------------------------------------------------------------------------------------

EXPECTED_METRICS = {
    "prpo": ["prpo/segments_per_response/mean", "prpo/segment_length/mean", "prpo/prm_score/mean", "prpo/z/mean"],
    "prm_avg": ["prm_avg/prm_mean/mean", "prm_avg/empty_responses"],
    "prl": ["prl/process_term/mean", "prl/steps_per_response/mean"],
    "spro": ["spro/msa/mean", "spro/cpr/mean"],
}


def _expected_segment_ids(adv: str, algo: dict, mask: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    if adv == "prl":
        # fixed steps: position t is in step t // step_len, computed by hand
        pos = torch.arange(LMAX).expand(len(ROWS), LMAX)
        return torch.where(mask.bool(), pos // algo["prl"]["step_len"], torch.full_like(pos, -1))
    p = algo["prpo"]
    return segment(p["segmentation"], mask, entropy=entropy, k=p["k"], m=p["m"], step_len=p["step_len"],
                   seed=p["seed"] + GLOBAL_STEPS).segment_ids


@pytest.mark.ray
@pytest.mark.parametrize("adv", ["prpo", "prm_avg", "prl", "spro"])
def test_process_estimator_reads_inputs_from_tq_and_writes_advantages(cluster, monkeypatch, adv):
    tq = cluster["tq"]
    rows = _make_rows(seed=len(adv))
    prefix = f"{adv}-"
    meta = _put_batch(tq, rows, prefix)
    trainer = _make_trainer(adv)
    algo = _algorithm_node(adv)

    original = core_algos.ADV_ESTIMATOR_REGISTRY[adv]
    calls = []

    def spy(**kwargs):
        calls.append({k: (v.clone() if isinstance(v, torch.Tensor) else copy.copy(v)) for k, v in kwargs.items()})
        return original(**kwargs)

    monkeypatch.setitem(core_algos.ADV_ESTIMATOR_REGISTRY, adv, spy)
    metrics: dict = {}
    try:
        trainer._compute_advantage(meta, metrics)
        out = tq.kv_batch_get(keys=meta.keys, partition_id=PARTITION, select_fields=["advantages", "returns"])
    finally:
        tq.kv_clear(keys=meta.keys, partition_id=PARTITION)

    # --- what the estimator received
    assert len(calls) == 1
    got = calls[0]
    lens = [r["response_mask"].numel() for r in rows]
    assert list(got["index"]) == [f"{prefix}{r['uid']}" for r in rows]
    assert got["config"].adv_estimator == adv
    for name in ("token_level_rewards", "response_mask", "entropy", "old_log_probs", "ref_log_prob"):
        assert name in got, f"{adv} did not receive {name}"
        assert got[name].shape == (len(rows), LMAX), name
    src = {"token_level_rewards": "rm_scores", "response_mask": "response_mask", "entropy": "entropy",
           "old_log_probs": "old_log_probs", "ref_log_prob": "ref_log_prob"}
    if adv in ("prpo", "prm_avg"):
        assert "prm_scores" in got and "segment_ids" in got
        src["prm_scores"] = PRM_SCORES_KEY
    elif adv == "prl":
        assert "segment_ids" in got and "prm_scores" not in got
    else:
        assert "segment_ids" not in got and "prm_scores" not in got
    for name, field in src.items():
        for i, r in enumerate(rows):
            torch.testing.assert_close(got[name][i, : lens[i]], r[field].to(got[name].dtype), msg=f"{name} row {i}")
    mask = _padded(rows, "response_mask")
    torch.testing.assert_close(got["response_mask"].long(), mask)

    # segmentation: the trainer's, -1 outside the mask, >= 0 inside, as computed from the same inputs
    entropy = _padded(rows, "entropy")
    if "segment_ids" in got:
        seg = got["segment_ids"]
        assert bool((seg[mask == 0] == -1).all()) and bool((seg[mask == 1] >= 0).all())
        assert int(seg.max()) >= 1, "expected several segments on a 12-token response"
        torch.testing.assert_close(seg, _expected_segment_ids(adv, algo, mask, entropy))

    # --- the advantages written back to TQ equal the estimator on independently padded inputs
    cfg = OmegaConf.create(algo)
    kwargs = {"entropy": entropy, "old_log_probs": _padded(rows, "old_log_probs"),
              "ref_log_prob": _padded(rows, "ref_log_prob")}
    if adv in ("prpo", "prm_avg"):
        kwargs["prm_scores"] = _padded(rows, PRM_SCORES_KEY)
    if "segment_ids" in got:
        kwargs["segment_ids"] = _expected_segment_ids(adv, algo, mask, entropy)
    ref_metrics: dict = {}
    index = np.array([f"{prefix}{r['uid']}" for r in rows], dtype=object)
    exp_adv, exp_ret = original(token_level_rewards=_padded(rows, "rm_scores"), response_mask=mask, index=index,
                                config=cfg, metrics=ref_metrics, **kwargs)
    adv_rows, ret_rows = _nested_rows(out["advantages"]), _nested_rows(out["returns"])
    assert [a.numel() for a in adv_rows] == lens
    for i in range(len(rows)):
        torch.testing.assert_close(adv_rows[i], exp_adv[i, : lens[i]].to(adv_rows[i].dtype), msg=f"adv row {i}")
        torch.testing.assert_close(ret_rows[i], exp_ret[i, : lens[i]].to(ret_rows[i].dtype), msg=f"ret row {i}")
    assert any(float(a.abs().max()) > 0 for a in adv_rows), "degenerate test: all advantages are 0"

    # --- the estimator's metrics reach verl's metrics dict, finite, same values as the direct call
    for key in EXPECTED_METRICS[adv] + ["adv/mean", "adv/std"]:
        assert key in metrics, f"{key} missing from {sorted(metrics)}"
        assert math.isfinite(metrics[key]), (key, metrics[key])
        assert metrics[key] == pytest.approx(ref_metrics[key], rel=1e-6, abs=1e-9), key


@pytest.mark.ray
def test_kl_in_reward_is_applied_before_the_estimator_and_written_back(cluster, monkeypatch):
    """Upstream's KL-in-reward step on the process path: the estimator gets the penalised rewards, and
    token_level_rewards goes back to TransferQueue next to the advantages (as upstream writes it)."""
    tq = cluster["tq"]
    rows = _make_rows(seed=11)
    meta = _put_batch(tq, rows, "klr-")
    trainer = _make_trainer("spro")
    trainer.config.algorithm.use_kl_in_reward = True
    trainer.kl_ctrl_in_reward = core_algos.FixedKLController(kl_coef=0.1)
    received = []
    original = core_algos.ADV_ESTIMATOR_REGISTRY["spro"]

    def spy(**kwargs):
        received.append(kwargs["token_level_rewards"].clone())
        return original(**kwargs)

    monkeypatch.setitem(core_algos.ADV_ESTIMATOR_REGISTRY, "spro", spy)
    metrics: dict = {}
    try:
        trainer._compute_advantage(meta, metrics)
        out = tq.kv_batch_get(keys=meta.keys, partition_id=PARTITION,
                              select_fields=["advantages", "token_level_rewards"])
    finally:
        tq.kv_clear(keys=meta.keys, partition_id=PARTITION)

    mask = _padded(rows, "response_mask").float()
    old, ref = _padded(rows, "old_log_probs"), _padded(rows, "ref_log_prob")
    expected_rewards = _padded(rows, "rm_scores") - 0.1 * (old - ref) * mask  # kl_penalty="kl": old - ref
    torch.testing.assert_close(received[0], expected_rewards)
    for i, r in enumerate(rows):
        n = r["response_mask"].numel()
        torch.testing.assert_close(out["token_level_rewards"].unbind()[i], expected_rewards[i, :n])
    assert metrics["actor/reward_kl_penalty_coeff"] == 0.1 and math.isfinite(metrics["actor/reward_kl_penalty"])
    exp_adv, _ = original(token_level_rewards=expected_rewards, response_mask=mask,
                          index=np.array([f"klr-{r['uid']}" for r in rows], dtype=object),
                          config=trainer.config.algorithm, old_log_probs=old, ref_log_prob=ref)
    for i, a in enumerate(out["advantages"].unbind()):
        torch.testing.assert_close(a, exp_adv[i, : a.numel()])


@pytest.mark.ray
def test_grpo_goes_through_upstream(cluster, monkeypatch):
    """A stock estimator is not touched by prpo_sync: upstream's path computes (and writes) plain GRPO."""
    tq = cluster["tq"]
    rows = _make_rows(seed=7)
    meta = _put_batch(tq, rows, "grpo-", with_prm=False)
    trainer = _make_trainer("grpo")

    def no_plugin_inputs(*a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("prpo_sync's estimator inputs were built for grpo")

    monkeypatch.setattr(trainer, "_estimator_inputs", no_plugin_inputs)
    upstream_calls = []
    original_grpo = core_algos.compute_grpo_outcome_advantage

    def grpo_spy(**kwargs):
        upstream_calls.append(sorted(kwargs))
        return original_grpo(**kwargs)

    monkeypatch.setattr(core_algos, "compute_grpo_outcome_advantage", grpo_spy)
    metrics: dict = {}
    try:
        trainer._compute_advantage(meta, metrics)
        out = tq.kv_batch_get(keys=meta.keys, partition_id=PARTITION, select_fields=["advantages", "returns"])
    finally:
        tq.kv_clear(keys=meta.keys, partition_id=PARTITION)

    assert upstream_calls == [["index", "norm_adv_by_std_in_grpo", "response_mask", "token_level_rewards"]]
    index = np.array([f"grpo-{r['uid']}" for r in rows], dtype=object)
    exp, _ = original_grpo(token_level_rewards=_padded(rows, "rm_scores"), response_mask=_padded(rows, "response_mask"),
                           index=index, norm_adv_by_std_in_grpo=True)
    adv_rows = _nested_rows(out["advantages"])
    for i, r in enumerate(rows):
        torch.testing.assert_close(adv_rows[i], exp[i, : r["response_mask"].numel()].to(adv_rows[i].dtype))
    assert any(float(a.abs().max()) > 0 for a in adv_rows)
    assert not any(k.startswith(("prpo/", "prl/", "spro/", "prm_avg/")) for k in metrics)


@pytest.mark.ray
def test_prpo_without_prm_scores_and_prm_disabled_is_a_clear_error(cluster):
    tq = cluster["tq"]
    rows = _make_rows(seed=3)
    meta = _put_batch(tq, rows, "noprm-", with_prm=False)
    trainer = _make_trainer("prpo")
    try:
        with pytest.raises(ValueError, match=r"prm\.enable") as err:
            trainer._compute_advantage(meta, {})
        assert PRM_SCORES_KEY in str(err.value)
        # nothing was written back
        listed = tq.kv_list(partition_id=PARTITION).get(PARTITION, {})
        assert all(k in listed for k in meta.keys)
        back = tq.kv_batch_get(keys=meta.keys, partition_id=PARTITION, select_fields=["advantages", "response_mask"])
        assert "advantages" not in back.keys()
    finally:
        tq.kv_clear(keys=meta.keys, partition_id=PARTITION)


# ----------------------------------------------------------------------------------------------------------------
# 2. start-up validation and the Hydra configs
# ----------------------------------------------------------------------------------------------------------------


def test_prpo_trainer_yaml_composes(composed):
    cfg = composed["prpo_trainer"]
    assert cfg.algorithm.adv_estimator == "prpo"
    assert cfg.algorithm.prpo.k == 5
    assert cfg.trainer.v1.trainer_mode == "prpo_sync"
    assert cfg.prm.enable is False
    # verl's ppo_trainer is underneath
    assert "actor_rollout_ref" in cfg and "rollout_correction" in cfg.algorithm
    # prpo with the PRM off and no batch scores cannot train: a start-up error that says what to set
    with pytest.raises(ValueError, match="prm.enable=true"):
        validate_plugin_config(cfg)
    typed = validate_plugin_config(_config(composed, **{"prm.scores_from_batch": True}))
    assert typed["estimator"].k == 5 and typed["prm"].enable is False


def test_prpo_trainer_cpu_yaml_composes(composed):
    cfg = composed["prpo_trainer_cpu"]
    assert cfg.trainer.device == "cpu"
    # verl's own vLLM rollout, with what CPU vLLM refuses turned off, and the KV cache sized in GiB
    rollout = cfg.actor_rollout_ref.rollout
    assert rollout.name == "vllm" and rollout.enable_sleep_mode is False and rollout.enforce_eager is True
    assert cfg.ray_kwargs.ray_init.runtime_env.env_vars.VLLM_CPU_KVCACHE_SPACE == "1"
    assert cfg.trainer.v1.trainer_mode == "prpo_sync"
    assert cfg.algorithm.prpo.k == 5
    validate_plugin_config(_config(composed, "prpo_trainer_cpu", **{"prm.enable": True, "prm.model_path": "/x"}))


@pytest.mark.parametrize("adv", ["prpo", "prm_avg", "prl", "spro", "grpo"])
def test_defaults_validate(composed, adv):
    typed = validate_plugin_config(_config(composed, **{"algorithm.adv_estimator": adv, "prm.scores_from_batch": True}))
    expected = {"prpo": "PRPOConfig", "prm_avg": "PRPOConfig", "prl": "PRLConfig", "spro": "SPROConfig", "grpo": None}
    assert (type(typed["estimator"]).__name__ if typed["estimator"] is not None else None) == expected[adv]


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"algorithm.adv_estimator": "prpo", "algorithm.prpo.k": 0}, "algorithm.prpo.k"),
        ({"algorithm.adv_estimator": "prm_avg", "algorithm.prpo.sigma": 0.0}, "algorithm.prpo.sigma"),
        ({"algorithm.adv_estimator": "prpo", "algorithm.prpo.segmentation": "sentences"},
         "algorithm.prpo.segmentation"),
        ({"algorithm.adv_estimator": "prl", "algorithm.prl.eta": -1}, "algorithm.prl.eta"),
        ({"algorithm.adv_estimator": "prl", "algorithm.prl.kl_scop": "step_end"}, "algorithm.prl.kl_scop"),
        ({"algorithm.adv_estimator": "spro", "algorithm.spro.beta_s": 0}, "algorithm.spro.beta_s"),
        ({"algorithm.adv_estimator": "prpo", "prm.enable": True}, "prm.model_path"),
        ({"algorithm.adv_estimator": "grpo", "prm.enable": True}, "prm.model_path"),
    ],
)
def test_bad_values_fail_at_start_naming_the_key(composed, overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        validate_plugin_config(_config(composed, **overrides))


def test_bad_value_fails_in_the_constructor_before_verl_builds_anything(composed, monkeypatch):
    built = []
    monkeypatch.setattr(PPOTrainerSync, "__init__", lambda self, config: built.append(config))
    with pytest.raises(ValueError, match=r"algorithm\.prpo\.k"):
        PRPOTrainerSync(_config(composed, **{"algorithm.prpo.k": 0}))
    assert built == []


@pytest.mark.parametrize("adv", ["prl", "spro"])
def test_ensure_reference_policy_turns_on_a_zero_kl_loss(composed, adv):
    cfg = _config(composed, **{"algorithm.adv_estimator": adv, "actor_rollout_ref.actor.use_kl_loss": False,
                               "algorithm.use_kl_in_reward": False})
    assert OmegaConf.is_struct(cfg)
    assert ensure_reference_policy(cfg) is True
    assert cfg.actor_rollout_ref.actor.use_kl_loss is True
    assert cfg.actor_rollout_ref.actor.kl_loss_coef == 0.0
    assert OmegaConf.is_struct(cfg)  # struct mode is restored


@pytest.mark.parametrize(
    "overrides",
    [
        {"actor_rollout_ref.actor.use_kl_loss": True, "actor_rollout_ref.actor.kl_loss_coef": 0.02},
        {"actor_rollout_ref.actor.use_kl_loss": False, "actor_rollout_ref.actor.kl_loss_coef": 0.02,
         "algorithm.use_kl_in_reward": True},
    ],
)
def test_ensure_reference_policy_leaves_an_existing_reference_alone(composed, overrides):
    cfg = _config(composed, **{"algorithm.adv_estimator": "prl", **overrides})
    before = OmegaConf.to_container(cfg.actor_rollout_ref.actor)
    assert ensure_reference_policy(cfg) is False
    assert OmegaConf.to_container(cfg.actor_rollout_ref.actor) == before
    assert cfg.actor_rollout_ref.actor.kl_loss_coef == 0.02


@pytest.mark.parametrize("adv, changed", [("prl", True), ("spro", True), ("prpo", False), ("grpo", False)])
def test_constructor_makes_the_reference_policy_only_for_prl_and_spro(composed, monkeypatch, adv, changed):
    built = []
    monkeypatch.setattr(PPOTrainerSync, "__init__", lambda self, config: built.append(config))
    cfg = _config(composed, **{"algorithm.adv_estimator": adv, "actor_rollout_ref.actor.use_kl_loss": False,
                               "actor_rollout_ref.actor.kl_loss_coef": 0.001, "prm.scores_from_batch": True})
    t = PRPOTrainerSync(cfg)
    assert built == [cfg]  # validation ran first, then verl's constructor with the (adjusted) config
    assert t.adv_name == adv and t.prm_scorer is None
    assert cfg.actor_rollout_ref.actor.use_kl_loss is changed
    assert cfg.actor_rollout_ref.actor.kl_loss_coef == (0.0 if changed else 0.001)


# ----------------------------------------------------------------------------------------------------------------
# 3. registration
# ----------------------------------------------------------------------------------------------------------------


def test_trainer_mode_is_registered():
    assert get_trainer_cls("prpo_sync") is PRPOTrainerSync
    assert issubclass(PRPOTrainerSync, PPOTrainerSync)
    for name in ESTIMATOR_NAMES:
        assert name in core_algos.ADV_ESTIMATOR_REGISTRY


def test_import_verl_alone_registers_everything_in_a_fresh_interpreter(subprocess_probe):
    out, err = subprocess_probe.communicate(timeout=180)
    assert subprocess_probe.returncode == 0, err[-3000:]
    line = [ln for ln in out.splitlines() if ln.startswith("PROBE=")]
    assert line, out[-2000:] + err[-2000:]
    probe = json.loads(line[-1][len("PROBE="):])
    assert probe["pre"] == []  # nothing of the plugin was imported before `import verl`
    assert probe["plugin_loaded"] is True
    assert probe["trainer_loaded_by_import_verl"] is False
    assert "prpo_sync" in probe["trainers"]
    assert set(ESTIMATOR_NAMES) <= set(probe["estimators"])
    assert probe["cls"] == "verl_prpo.trainer.PRPOTrainerSync"


@pytest.mark.ray
def test_import_verl_registers_everything_in_a_fresh_ray_worker(cluster):
    probe = cluster["ray"].get(cluster["probe_ref"], timeout=240)
    assert probe["pre"] == []
    assert "prpo_sync" in probe["trainers"]
    assert set(ESTIMATOR_NAMES) <= set(probe["estimators"])


def test_grpo_comparison_metric_against_verls_grpo():
    """adv/mean_abs_diff_vs_grpo is the token-mean |A - A_grpo| with verl's own GRPO as the reference."""
    from verl import DataProto
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    from verl_prpo.trainer import grpo_comparison_metrics

    B, L = 8, 6
    mask = torch.ones(B, L)
    mask[0, 3:] = 0
    rewards = torch.zeros(B, L)
    rewards[:, 2] = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0.0])
    uid = np.array(list("abbacdcd"), dtype=object)
    data = DataProto.from_dict(tensors={"response_mask": mask, "token_level_rewards": rewards},
                               non_tensors={"uid": uid})
    grpo, _ = compute_grpo_outcome_advantage(rewards, mask, uid)
    assert grpo_comparison_metrics(grpo, data)["adv/mean_abs_diff_vs_grpo"] == pytest.approx(0.0, abs=1e-6)
    shifted = grpo + 0.25 * mask
    shifted[1, 0] += 1.0  # one token moved by 1 more: mean over the 45 valid tokens
    expected = (0.25 * 45 + 1.0) / 45
    assert grpo_comparison_metrics(shifted, data)["adv/mean_abs_diff_vs_grpo"] == pytest.approx(expected, rel=1e-5)
