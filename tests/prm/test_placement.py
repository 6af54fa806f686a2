"""PRM placement and the trainer's world size, checked at start-up without a cluster (issue 9, items 4 and 5).

4. ``prm.placement=own_pool`` is part of verl's resource pool spec (``prm_pool``), so verl creates and checks it
   with the trainer's pools, and a cluster that cannot hold every pool (GPUs, or the 3 CPUs per GPU that verl's
   bundles reserve on the same node) fails at start-up saying what is missing (instead of waiting forever in
   ``ray.get(pg.ready())``); a real local Ray node agrees with the check about which pools fit.
5. ``ppo_mini_batch_size x rollout.n`` must be divisible by the trainer's real data-parallel size; with
   ``own_pool`` on one node the trainer keeps fewer GPUs (8 - PRM GPUs), which verl only asserts in the first
   actor update.
"""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from verl_prpo import trainer as trainer_mod
from verl_prpo.trainer import PRM_POOL, PRPOTrainerSync, check_cluster_resources, trainer_data_parallel_size

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
            "trainer.nnodes": 1, "trainer.n_gpus_per_node": 8}
    base.update(overrides)
    with open_dict(cfg):
        for key, value in base.items():
            OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def _free(monkeypatch, gpus_per_node):
    import ray

    monkeypatch.setattr(ray._private.state, "available_resources_per_node",
                        lambda: {f"node{i}": {"CPU": 64.0, "GPU": float(g)} for i, g in enumerate(gpus_per_node)})


# ---------------------------------------------------------------------------------------------------- item 4
def test_own_pool_is_in_verls_resource_pool_spec(composed, monkeypatch):
    _free(monkeypatch, [8, 8])
    t = PRPOTrainerSync(_cfg(composed, **{"prm.placement": "own_pool", "prm.n_gpus_per_node": 8}))
    t._init_resource_pool_mgr()
    spec = t.resource_pool_manager.resource_pool_spec
    assert spec[PRM_POOL] == [8] and spec["global_pool"] == [8]
    assert t.resource_pool_manager.get_n_gpus() == 16  # verl's own accounting includes the PRM


def test_colocated_prm_adds_no_pool(composed, monkeypatch):
    _free(monkeypatch, [8])
    t = PRPOTrainerSync(_cfg(composed))
    t._init_resource_pool_mgr()
    assert PRM_POOL not in t.resource_pool_manager.resource_pool_spec


def test_too_small_cluster_is_a_start_up_error_naming_the_missing_gpus(composed, monkeypatch):
    _free(monkeypatch, [8])  # one 8-GPU node for 8 trainer GPUs + 2 PRM GPUs
    t = PRPOTrainerSync(_cfg(composed, **{"prm.placement": "own_pool", "prm.n_gpus_per_node": 2}))
    with pytest.raises(ValueError, match=r"needs 10 GPUs .*has 8 free: 2 GPU\(s\) missing"):
        t._init_resource_pool_mgr()


def test_a_pool_node_larger_than_any_ray_node_is_an_error():
    # 12 GPUs free in total, but no node can hold the PRM's 8-GPU node entry next to the trainer
    with pytest.raises(ValueError, match=r"prm_pool needs 8 GPUs on one node"):
        check_cluster_resources({"global_pool": [4], PRM_POOL: [8]}, _nodes((6, 64), (6, 64)))
    check_cluster_resources({"global_pool": [8], PRM_POOL: [8]}, _nodes((8, 64), (8, 64)))  # fits: no error


def _nodes(*gpus_cpus):
    return {f"node{i}": {"GPU": float(g), "CPU": float(c)} for i, (g, c) in enumerate(gpus_cpus)}


def test_a_node_with_free_gpus_but_too_few_cpus_is_a_start_up_error():
    # verl's bundles are {GPU: 1, CPU: 3}: each one-GPU pool needs 3 CPUs beside its GPU on one node. Node 1 has a
    # GPU but only 2 CPUs left (the hang seen on a 4-CPU worker), so one of the two pools has nowhere to go
    with pytest.raises(ValueError, match=r"pool \w+ needs 1 GPUs and 3 CPUs .* fewer free CPUs .*--num-cpus"):
        check_cluster_resources({"global_pool": [1], PRM_POOL: [1]}, _nodes((1, 8), (1, 2)))
    check_cluster_resources({"global_pool": [1], PRM_POOL: [1]}, _nodes((1, 8), (1, 3)))  # 3 CPUs: fits
    # the CPUs of one node are shared by its pools: 2 + 1 GPUs need 9 CPUs there
    with pytest.raises(ValueError, match=r"needs 1 GPUs and 3 CPUs"):
        check_cluster_resources({"global_pool": [2], PRM_POOL: [1]}, _nodes((4, 8)))
    check_cluster_resources({"global_pool": [2], PRM_POOL: [1]}, _nodes((4, 9)))
    # verl's max_colocate_count sets the CPUs per bundle
    with pytest.raises(ValueError, match=r"needs 2 GPUs and 2 CPUs"):
        check_cluster_resources({"global_pool": [2]}, _nodes((2, 1)), cpus_per_device=1)


def test_the_trainer_checks_cpus_with_verls_bundle_size(composed, monkeypatch):
    import ray

    monkeypatch.setattr(ray._private.state, "available_resources_per_node",
                        lambda: {"node0": {"CPU": 64.0, "GPU": 8.0}, "node1": {"CPU": 2.0, "GPU": 1.0}})
    t = PRPOTrainerSync(_cfg(composed, **{"prm.placement": "own_pool", "prm.n_gpus_per_node": 1}))
    with pytest.raises(ValueError, match=r"prm_pool needs 1 GPUs and 3 CPUs"):
        t._init_resource_pool_mgr()


def test_prm_scorer_uses_the_pool_verl_created(monkeypatch):
    from verl_prpo.prm import trainer_glue, worker
    from verl_prpo.prm.config import PRMConfig

    used = {}
    monkeypatch.setattr(worker, "create_prm_worker_group", lambda cfg, tok, pool, **kw: used.setdefault("pool", pool))
    monkeypatch.setattr(worker, "make_prm_resource_pool", lambda cfg: pytest.fail("made a pool outside verl"))
    config = OmegaConf.create({"actor_rollout_ref": {"model": {"path": "/models/policy"}}})
    prm_pool = object()
    trainer_glue.PRMScorer.create(PRMConfig(enable=True, model_path="/m", placement="own_pool"), config,
                                  actor_pool=object(), prm_pool=prm_pool)
    assert used["pool"] is prm_pool


# ---------------------------------------------------------------------------------------------------- item 5
@pytest.mark.parametrize("trainer_gpus", [7, 6])
def test_single_node_own_pool_split_that_verl_would_reject_fails_at_construction(composed, monkeypatch,
                                                                                 trainer_gpus):
    built = []
    monkeypatch.setattr(trainer_mod.PPOTrainerSync, "__init__", lambda self, config: built.append(config))
    cfg = _cfg(composed, **{"trainer.n_gpus_per_node": trainer_gpus, "prm.placement": "own_pool",
                            "prm.n_gpus_per_node": 8 - trainer_gpus})
    with pytest.raises(ValueError, match=rf"128 x 8 = 1024 is not divisible by the trainer's data-parallel size "
                                         rf"{trainer_gpus}.*own_pool"):
        PRPOTrainerSync(cfg)
    assert built == []


def test_divisible_splits_and_sequence_parallel(composed, monkeypatch):
    monkeypatch.setattr(trainer_mod.PPOTrainerSync, "__init__", lambda self, config: None)
    PRPOTrainerSync(_cfg(composed, **{"trainer.n_gpus_per_node": 4, "prm.placement": "own_pool",
                                      "prm.n_gpus_per_node": 4}))
    sp = _cfg(composed, **{"trainer.n_gpus_per_node": 6, "actor_rollout_ref.actor.fsdp_config."
                                                          "ulysses_sequence_parallel_size": 2})
    assert trainer_data_parallel_size(sp) == 3
    with pytest.raises(ValueError, match="data-parallel size 3"):
        PRPOTrainerSync(sp)


def test_run_single_node_own_pool_default_split_divides_the_recipe_batch(tmp_path):
    """The script's default own_pool split must be one the PRPO recipes (128 prompts x 8 rollouts) accept."""
    env = {**os.environ, "GPUS_PER_NODE": "8", "PRM_PLACEMENT": "own_pool", "DRY_RUN": "1"}
    out = subprocess.run(["bash", str(REPO / "scripts" / "run_single_node.sh"),
                          str(REPO / "recipes" / "prpo" / "run_prpo_1.5b.sh"), "--dry-run"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip().splitlines()[-1]
    trainer_gpus = int(line.split("trainer.n_gpus_per_node=")[1].split()[0])
    prm_gpus = int(line.split("prm.n_gpus_per_node=")[1].split()[0])
    assert trainer_gpus + prm_gpus == 8 and 1024 % trainer_gpus == 0


_RAY_AGREES = r'''
import json, sys, time
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from verl.trainer.ppo.ray_trainer import ResourcePoolManager
from verl_prpo.trainer import PRM_POOL, check_cluster_resources

ray.init(address="local", num_cpus=8, num_gpus=4, include_dashboard=False, log_to_driver=False)

@ray.remote(num_cpus=1)
class Holder:  # stands for TransferQueue's controller and storage unit, which hold 1 CPU each before the pools
    def ping(self):
        return 1

holders = [Holder.remote() for _ in range(2)]
ray.get([h.ping.remote() for h in holders])
cpus = ResourcePoolManager(resource_pool_spec={}, mapping={}).max_colocate_count  # verl's CPUs per bundle
out = {"cpus_per_bundle": cpus}
for name, spec in {"fits": {"global_pool": [1], PRM_POOL: [1]}, "short": {"global_pool": [2], PRM_POOL: [1]}}.items():
    try:
        check_cluster_resources(spec, cpus_per_device=cpus)
        out[name + "_check"] = "ok"
    except ValueError as exc:
        out[name + "_check"] = str(exc)
    pgs = [placement_group([{"CPU": cpus, "GPU": 1}] * g, strategy="STRICT_PACK")  # verl's bundles, in spec order
           for entries in spec.values() for g in entries]
    out[name + "_ray_ready"] = [pg.wait(timeout_seconds=5) for pg in pgs]
    for pg in pgs:
        remove_placement_group(pg)
    for _ in range(100):  # removal is asynchronous: wait until the node's resources are back
        free = ray.available_resources()
        if free.get("GPU", 0) == 4 and free.get("CPU", 0) == 6:
            break
        time.sleep(0.1)
print("RESULT " + json.dumps(out))
'''


def test_the_check_agrees_with_ray_about_which_pools_fit(tmp_path):
    """On a real local Ray node (8 CPUs, 4 logical GPUs, 2 CPUs held by other actors): the spec the check accepts
    gets every placement group ready; the spec it refuses (2 + 1 GPUs need 9 CPUs, 6 are free) leaves one waiting."""
    import json
    import sys

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "-c", _RAY_AGREES], capture_output=True, text=True, timeout=240, env=env,
                          cwd=tmp_path)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = json.loads(line[0][len("RESULT "):])
    assert out["cpus_per_bundle"] == 3
    assert out["fits_check"] == "ok" and out["fits_ray_ready"] == [True, True]
    assert "needs 1 GPUs and 3 CPUs" in out["short_check"]
    assert out["short_ray_ready"] == [True, False]  # Ray's placement group for the PRM would wait forever
