"""Recipes (recipes/config/*.yaml + recipes/*/run_*.sh), scripts/run_single_node.sh and scripts/slurm/ray_on_slurm.sbatch.

No GPU, no network, no Ray: every recipe YAML is composed with Hydra against the installed verl and checked for the
paper's values, the plugin's validation and verl's own start-up checks; every launcher is checked with ``bash -n``
and its ``--dry-run`` output (a fake ``scontrol`` stands in for SLURM), and the overrides a launcher prints are
composed again, so that a launcher cannot pass an override Hydra would reject.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import socket
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
CONFIG_DIR = RECIPES / "config"
SINGLE_NODE = REPO / "scripts" / "run_single_node.sh"
SBATCH = REPO / "scripts" / "slurm" / "ray_on_slurm.sbatch"

PRPO_1P5B = "prpo_qwen2.5-math-1.5b"

# The values each recipe must have: ALGORITHMS.md "What the papers report" and the method sections.
PRPO_PAPER = {
    "data.train_batch_size": 128,
    "data.max_prompt_length": 2048,
    "data.max_response_length": 2048,
    "actor_rollout_ref.rollout.n": 8,
    "actor_rollout_ref.rollout.temperature": 1.0,
    "actor_rollout_ref.actor.optim.lr": 1e-6,
    "actor_rollout_ref.actor.ppo_mini_batch_size": 128,  # one update per batch
    "actor_rollout_ref.actor.ppo_epochs": 1,
    "actor_rollout_ref.actor.clip_ratio": 0.2,
    "actor_rollout_ref.actor.use_kl_loss": True,
    "actor_rollout_ref.actor.kl_loss_coef": 0.001,
    "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",
    "actor_rollout_ref.actor.loss_agg_mode": "token-mean",
    "trainer.total_epochs": 10,
    "reward.reward_manager.name": "prpo",
    "reward.reward_kwargs.correct_score": 1.0,
    "reward.reward_kwargs.incorrect_score": -1.0,
    "actor_rollout_ref.rollout.val_kwargs.temperature": 0,  # greedy pass@1
    "actor_rollout_ref.rollout.val_kwargs.n": 1,
}
PRPO_METHOD = {
    "algorithm.adv_estimator": "prpo",
    "algorithm.prpo.segmentation": "entropy",
    "algorithm.prpo.k": 5,
    "algorithm.prpo.m": 10,
    "algorithm.prpo.normalization": "fixed",
    "algorithm.prpo.outcome_shift": True,
    "algorithm.prpo.mu": 0.5,
    "prm.enable": True,
    "prm.model_path": "Qwen/Qwen2.5-Math-PRM-7B",
}
ABLATIONS = {  # config name -> the one option that distinguishes it from the PRPO 1.5B recipe
    "prpo_uniform_split": {"algorithm.prpo.segmentation": "uniform"},
    "prpo_random_split": {"algorithm.prpo.segmentation": "random"},
    "prpo_relative_norm": {"algorithm.prpo.normalization": "relative"},
    "prpo_process_only": {"algorithm.prpo.outcome_shift": False},
}
EXPECTED = {
    PRPO_1P5B: {**PRPO_PAPER, **PRPO_METHOD, "actor_rollout_ref.model.path": "Qwen/Qwen2.5-Math-1.5B"},
    "prpo_qwen2.5-math-7b": {**PRPO_PAPER, **PRPO_METHOD, "actor_rollout_ref.model.path": "Qwen/Qwen2.5-Math-7B"},
    "grpo_qwen2.5-math-1.5b": {**PRPO_PAPER, "algorithm.adv_estimator": "grpo", "prm.enable": False,
                               "algorithm.norm_adv_by_std_in_grpo": True,
                               "actor_rollout_ref.model.path": "Qwen/Qwen2.5-Math-1.5B"},
    "prm_avg_qwen2.5-math-1.5b": {**PRPO_PAPER, **PRPO_METHOD, "algorithm.adv_estimator": "prm_avg"},
    **{name: {**PRPO_PAPER, **PRPO_METHOD, **diff} for name, diff in ABLATIONS.items()},
    "prl_qwen2.5-math-1.5b": {
        "algorithm.adv_estimator": "prl",
        "actor_rollout_ref.rollout.n": 5,
        "data.train_batch_size": 128,
        "actor_rollout_ref.actor.optim.lr": 1e-6,
        "data.max_prompt_length": 1024,
        "data.max_response_length": 3072,
        "trainer.total_epochs": 1,
        "algorithm.prl.segmentation": "fixed",
        "algorithm.prl.step_len": 256,
        "algorithm.prl.eta": 100.0,
        "algorithm.prl.variant": "outcome_first",
        "actor_rollout_ref.actor.use_kl_loss": False,
        "actor_rollout_ref.actor.kl_loss_coef": 0.0,
        "actor_rollout_ref.rollout.val_kwargs.n": 8,  # average@8 / pass@8 at T = 1.0
        "actor_rollout_ref.rollout.val_kwargs.temperature": 1.0,
        "actor_rollout_ref.rollout.val_kwargs.do_sample": True,
        "prm.enable": False,
        "actor_rollout_ref.model.path": "Qwen/Qwen2.5-Math-1.5B",
    },
    "spro_qwen2.5-math-1.5b": {
        "algorithm.adv_estimator": "spro",
        "algorithm.spro.beta_s": 0.05,
        "algorithm.spro.msa_norm": "none",
        "actor_rollout_ref.actor.loss_agg_mode": "seq-mean-token-mean",
        "actor_rollout_ref.actor.use_kl_loss": False,
        "actor_rollout_ref.actor.kl_loss_coef": 0.0,
        "prm.enable": False,
    },
}
EXPECTED["pure_qwen2.5-math-7b"] = {  # the released launch script's values (CJReinforce/PURE, train_pure.sh)
    "algorithm.adv_estimator": "pure",
    "algorithm.pure.weighting": "min_form",
    "algorithm.pure.temperature": 0.1,
    "algorithm.pure.baseline": "token",
    "algorithm.pure.vr_coef": 0.1,
    "algorithm.pure.mask_separator": True,
    "algorithm.pure.whiten": True,
    "algorithm.pure.segmentation": "newline",
    "actor_rollout_ref.rollout.n": 4,
    "actor_rollout_ref.rollout.temperature": 0.5,
    "actor_rollout_ref.actor.optim.lr": 5e-7,
    "data.train_batch_size": 64,
    "actor_rollout_ref.actor.ppo_mini_batch_size": 32,
    "data.max_prompt_length": 1024,
    "data.max_response_length": 2048,
    "actor_rollout_ref.actor.kl_loss_coef": 0.001,
    "prm.enable": True,
    "prm.model_path": "Qwen/Qwen2.5-Math-PRM-7B",
    "actor_rollout_ref.model.path": "Qwen/Qwen2.5-Math-7B",
}
TRAIN_FILE = {name: "math_train.parquet" for name in EXPECTED} | {"prl_qwen2.5-math-1.5b": "numina_math_1_5_train.parquet"}
# run script -> config name
RUN_SCRIPTS = {
    "grpo/run_grpo.sh": "grpo_qwen2.5-math-1.5b",
    "prpo/run_prpo_1.5b.sh": PRPO_1P5B,
    "prpo/run_prpo_7b.sh": "prpo_qwen2.5-math-7b",
    "prm_avg/run_prm_avg.sh": "prm_avg_qwen2.5-math-1.5b",
    "prpo_ablations/run_uniform_split.sh": "prpo_uniform_split",
    "prpo_ablations/run_random_split.sh": "prpo_random_split",
    "prpo_ablations/run_relative_norm.sh": "prpo_relative_norm",
    "prpo_ablations/run_process_only.sh": "prpo_process_only",
    "prl/run_prl.sh": "prl_qwen2.5-math-1.5b",
    "spro/run_spro.sh": "spro_qwen2.5-math-1.5b",
    "pure/run_pure.sh": "pure_qwen2.5-math-7b",
}
PRM_RECIPES = {name for name, exp in EXPECTED.items() if exp.get("prm.enable")}
# the recipes that compose the PRPO paper's setting (recipes/config/setting/prpo_math_1.5b.yaml) and add what makes
# them what they are; PRL and PURE have settings of their own
SETTING = "setting/prpo_math_1.5b"
OVERLAYS = {name for name in EXPECTED if not name.startswith(("prl_", "pure_"))}


def _yaml_path(name: str) -> Path:
    path = CONFIG_DIR / f"{name}.yaml"
    assert path.is_file(), path
    return path


_CACHE: dict = {}


def compose(name: str, overrides: tuple[str, ...] = ()):
    """The recipe composed by Hydra from its own folder, as ``main_ppo --config-path --config-name`` does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    key = (name, tuple(overrides))
    if key not in _CACHE:
        with initialize_config_dir(config_dir=str(_yaml_path(name).parent), version_base=None):
            _CACHE[key] = hydra_compose(config_name=name, overrides=list(overrides))
    return copy.deepcopy(_CACHE[key])


def flat(cfg) -> dict:
    """Dotted leaf key -> value, interpolations left unresolved (they may read the environment)."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


def run(cmd, env=None, **kw) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("MODEL_PATH", "PRM_PATH", "DATA_DIR", "NNODES", "GPUS_PER_NODE", "CKPT_DIR", "LOG_DIR",
                             "PYTHON", "DRY_RUN", "RECIPE", "PRM_PLACEMENT", "PRM_NODES", "PRM_GPUS", "RAY_ADDRESS",
                             "REPO_DIR", "HEAD_IP", "RUN_PREFIX", "SRUN_ARGS", "RAY_PORT", "RAY_WAIT_S",
                             "RAY_HEAD_WAIT_S", "RAY_POLL_S") and not k.startswith("SLURM_")}
    full_env.update(env or {})
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=60, **kw)


def main_ppo_line(stdout: str) -> list[str]:
    lines = [ln for ln in stdout.splitlines() if "verl.trainer.main_ppo" in ln and not ln.startswith("[dry-run]")]
    assert len(lines) == 1, stdout
    return shlex.split(lines[0])


def hydra_overrides(argv: list[str]) -> tuple[str, str, list[str]]:
    """(config dir, config name, overrides) of a printed ``python -m verl.trainer.main_ppo`` command."""
    assert argv[1:3] == ["-m", "verl.trainer.main_ppo"], argv
    i_path, i_name = argv.index("--config-path"), argv.index("--config-name")
    rest = [a for j, a in enumerate(argv[3:], start=3) if j not in (i_path, i_path + 1, i_name, i_name + 1)]
    return argv[i_path + 1], argv[i_name + 1], rest


# ------------------------------------------------------------------------------------------------ the YAML files
def test_every_recipe_is_listed():
    found = {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    assert found == set(EXPECTED)
    assert {str(p.relative_to(RECIPES)) for p in RECIPES.rglob("*.yaml")} == \
        {f"config/{n}.yaml" for n in EXPECTED} | {f"config/{SETTING}.yaml"}
    assert {str(p.relative_to(RECIPES)) for p in RECIPES.glob("*/run_*.sh")} == set(RUN_SCRIPTS)
    assert set(RUN_SCRIPTS.values()) == set(EXPECTED)
    readme = (RECIPES / "README.md").read_text()
    for script in RUN_SCRIPTS:
        assert f"recipes/{script}" in readme, script


def test_setting_values_carry_their_source():
    """The shared setting is not a recipe (no searchpath, global package); each of its values has a source."""
    text = (CONFIG_DIR / f"{SETTING}.yaml").read_text()
    assert text.startswith("# @package _global_\n") and "hydra" not in yaml.safe_load(text)
    _check_value_comments(SETTING, "\n" + text.split("\n\n", 1)[1])


def _check_value_comments(name: str, body: str) -> None:
    last_key_commented = False
    for line in body.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped in ("- prpo_base", f"- {SETTING}", "- _self_"):
            continue
        if stripped.startswith("- "):
            assert last_key_commented, f"{name}: list item without a commented key: {line!r}"
            continue
        m = re.match(r"^\s*([\w.]+):\s*(.*)$", line)
        assert m, line
        value = m.group(2)
        last_key_commented = "#" in value
        if value and not value.startswith("#"):
            assert "#" in value, f"{name}: value without a source comment: {line!r}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_yaml_header_and_comments(name):
    text = _yaml_path(name).read_text()
    raw = yaml.safe_load(text)
    assert raw["hydra"]["searchpath"] == ["pkg://verl.trainer.config", "pkg://verl_prpo.conf"]
    assert raw["defaults"] == (["prpo_base", SETTING, "_self_"] if name in OVERLAYS else ["prpo_base", "_self_"])
    if name not in OVERLAYS:
        assert raw["trainer"]["v1"]["trainer_mode"] == "prpo_sync"
    # every value set in a recipe carries its source: an inline comment on the key, or on the key of a list
    _check_value_comments(name, text.split("\ndefaults:", 1)[1])


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_overlay_sets_only_what_differs_from_its_base(name):
    """An overlay's YAML holds only the keys whose composed value differs from PRPO's (which sets only its name)."""
    def leaves(node, prefix=""):
        for k, v in node.items():
            if isinstance(v, dict):
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    raw = yaml.safe_load(_yaml_path(name).read_text())
    own = {k for k in leaves({k: v for k, v in raw.items() if k not in ("hydra", "defaults")})}
    assert own == set(_diff(PRPO_1P5B, name)) | {"trainer.experiment_name"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_composes_with_the_paper_values(name):
    cfg = compose(name)
    values = flat(cfg)
    for key, want in EXPECTED[name].items():
        got = OmegaConf.select(cfg, key)
        assert got == want and type(got) is type(want), f"{name}: {key} = {got!r}, expected {want!r}"
    # common to every recipe
    assert cfg.trainer.v1.trainer_mode == "prpo_sync"
    assert cfg.actor_rollout_ref.rollout.name == "vllm"
    assert cfg.actor_rollout_ref.actor.strategy == "fsdp2"
    assert cfg.actor_rollout_ref.ref.strategy == "fsdp2"  # interpolated from the actor
    assert cfg.trainer.use_v1 is True
    # data and model paths are overridable (the run scripts override them); the fallback reads DATA_DIR
    assert values["data.train_files"].startswith("${oc.env:DATA_DIR,")
    assert values["data.train_files"].endswith("/" + TRAIN_FILE[name])
    assert all(v.startswith("${oc.env:DATA_DIR,") for v in values_list(cfg))
    # the plugin's nodes come from prpo_base
    assert {"prpo", "prl", "spro"} <= set(cfg.algorithm.keys()) and "prm" in cfg


def values_list(cfg) -> list[str]:
    return list(OmegaConf.to_container(cfg.data.val_files, resolve=False))


def test_prpo_values_resolved():
    cfg = compose(PRPO_1P5B)
    assert cfg.actor_rollout_ref.actor.ppo_mini_batch_size == cfg.data.train_batch_size == 128
    assert cfg.actor_rollout_ref.rollout.response_length == 2048  # verl interpolates it from data
    assert cfg.actor_rollout_ref.rollout.prompt_length == 2048
    assert cfg.actor_rollout_ref.actor.clip_ratio_low == cfg.actor_rollout_ref.actor.clip_ratio_high == 0.2
    assert [Path(p).name for p in values_list(cfg)] == ["math500.parquet", "amc23.parquet", "aime24.parquet",
                                                        "aime25.parquet"]
    prl = compose("prl_qwen2.5-math-1.5b")
    assert prl.actor_rollout_ref.rollout.response_length == 3072
    assert [Path(p).name for p in values_list(prl)] == [
        "math500.parquet", "minerva_math.parquet", "olympiadbench.parquet", "amc23.parquet", "aime24.parquet"]


def _diff(a: str, b: str) -> dict:
    fa, fb = flat(compose(a)), flat(compose(b))
    keys = set(fa) | set(fb)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(keys) if fa.get(k) != fb.get(k)}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_differs_from_prpo_only_in_its_option(name):
    diff = _diff(PRPO_1P5B, name)
    assert set(diff) == set(ABLATIONS[name]) | {"trainer.experiment_name"}, diff
    for key, want in ABLATIONS[name].items():
        assert diff[key][1] == want


def test_baselines_differ_from_prpo_only_in_the_estimator():
    # GRPO: the same run without the PRM
    assert set(_diff(PRPO_1P5B, "grpo_qwen2.5-math-1.5b")) == {
        "algorithm.adv_estimator", "prm.enable", "prm.model_path", "trainer.experiment_name"}
    assert set(_diff(PRPO_1P5B, "prm_avg_qwen2.5-math-1.5b")) == {"algorithm.adv_estimator", "trainer.experiment_name"}
    # 7B: same paper settings, other model and two engineering values
    assert set(_diff(PRPO_1P5B, "prpo_qwen2.5-math-7b")) == {
        "actor_rollout_ref.model.path", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu",
        "actor_rollout_ref.rollout.tensor_model_parallel_size", "trainer.experiment_name"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_plugin_and_verl_validation(name, monkeypatch):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    from verl_prpo.config import PRLConfig, PRPOConfig, PUREConfig, SPROConfig
    from verl_prpo.trainer import ensure_reference_policy, validate_plugin_config

    cfg = compose(name)

    def no_network(*args, **kwargs):
        raise AssertionError("validation must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    typed = validate_plugin_config(cfg)  # prm.model_path is a hub name: accepted without a download
    estimator = cfg.algorithm.adv_estimator
    want = {"prpo": PRPOConfig, "prm_avg": PRPOConfig, "prl": PRLConfig, "spro": SPROConfig,
            "pure": PUREConfig}.get(estimator)
    assert (typed["estimator"] is None) if want is None else isinstance(typed["estimator"], want)
    assert typed["prm"].enable is (name in PRM_RECIPES)
    if name in PRM_RECIPES:
        assert typed["prm"].model_path == "Qwen/Qwen2.5-Math-PRM-7B" and typed["prm"].param_offload is True
    monkeypatch.undo()

    # what prpo_sync does before verl builds the workers, then verl's own start-up checks (main_ppo.main)
    changed = ensure_reference_policy(cfg)
    assert changed is (estimator in ("prl", "spro"))
    assert need_reference_policy(cfg)
    assert cfg.actor_rollout_ref.actor.kl_loss_coef == (0.0 if changed else 0.001)
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    assert not need_critic(cfg)


# ------------------------------------------------------------------------------------------------ run scripts
def _env(tmp_path) -> dict:
    return {"MODEL_PATH": "/models/my policy", "PRM_PATH": "/models/prm", "DATA_DIR": str(tmp_path / "data dir"),
            "NNODES": "2", "GPUS_PER_NODE": "4", "LOG_DIR": str(tmp_path / "logs")}


def _check_script_mode(path: Path):
    assert path.stat().st_mode & stat.S_IXUSR, f"{path} is not executable"
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    r = run(["bash", "-n", str(path)])
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("script", sorted(RUN_SCRIPTS))
def test_run_script_dry_run(script, tmp_path):
    path = RECIPES / script
    name = RUN_SCRIPTS[script]
    _check_script_mode(path)
    env = _env(tmp_path)
    r = run(["bash", str(path), "--dry-run", "trainer.total_epochs=1"], env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    argv = main_ppo_line(r.stdout)
    assert argv[0] == "python"
    config_dir, config_name, overrides = hydra_overrides(argv)
    assert config_name == name and Path(config_dir) == CONFIG_DIR and Path(config_dir).is_absolute()
    assert overrides[-1] == "trainer.total_epochs=1"  # user overrides come last and win
    # the printed overrides compose, and the environment reached the config
    cfg = compose(name, tuple(overrides))
    data = Path(env["DATA_DIR"])
    assert cfg.data.train_files == str(data / TRAIN_FILE[name])
    assert all(Path(p).parent == data for p in cfg.data.val_files) and len(cfg.data.val_files) >= 4
    assert cfg.actor_rollout_ref.model.path == "/models/my policy"
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node, cfg.trainer.total_epochs) == (2, 4, 1)
    assert cfg.ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_ROOT == env["LOG_DIR"]
    if name in PRM_RECIPES:
        assert cfg.prm.model_path == "/models/prm"
    else:
        assert "prm.model_path" not in " ".join(overrides) and not cfg.prm.enable


def test_run_script_defaults(tmp_path):
    """Without any environment: paper model, PRM from the hub, data under <repo>/data/prepared/<template>."""
    r = run(["bash", str(RECIPES / "prpo/run_prpo_1.5b.sh")], env={"DRY_RUN": "1", "PYTHON": "/opt/py/bin/python"},
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    argv = main_ppo_line(r.stdout)
    assert argv[0] == "/opt/py/bin/python"
    joined = " ".join(argv)
    assert "actor_rollout_ref.model.path=Qwen/Qwen2.5-Math-1.5B" in argv
    assert "prm.model_path=Qwen/Qwen2.5-Math-PRM-7B" in argv
    assert "trainer.nnodes=1" in argv and "trainer.n_gpus_per_node=8" in argv
    assert f"data.train_files={REPO}/data/prepared/prpo/math_train.parquet" in argv
    assert f"VERL_FILE_LOGGER_ROOT={tmp_path}/logs" in joined
    r = run(["bash", str(RECIPES / "prl/run_prl.sh"), "--dry-run"], cwd=tmp_path)
    assert f"data.train_files={REPO}/data/prepared/prl/numina_math_1_5_train.parquet" in main_ppo_line(r.stdout)


# ------------------------------------------------------------------------------------------------ single node
def test_run_single_node(tmp_path):
    _check_script_mode(SINGLE_NODE)
    recipe = str(RECIPES / "prpo/run_prpo_1.5b.sh")
    r = run(["bash", str(SINGLE_NODE), recipe, "--dry-run", "trainer.total_epochs=2"],
            env={"GPUS_PER_NODE": "8", "RAY_ADDRESS": "10.0.0.1:6379"}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    _, name, overrides = hydra_overrides(main_ppo_line(r.stdout))
    cfg = compose(name, tuple(overrides))
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node, cfg.prm.placement) == (1, 8, "colocate")
    assert cfg.trainer.total_epochs == 2

    r = run(["bash", str(SINGLE_NODE), recipe, "--dry-run"],
            env={"GPUS_PER_NODE": "8", "PRM_PLACEMENT": "own_pool", "PRM_GPUS": "2"}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    _, name, overrides = hydra_overrides(main_ppo_line(r.stdout))
    cfg = compose(name, tuple(overrides))
    assert (cfg.trainer.n_gpus_per_node, cfg.prm.placement, cfg.prm.nnodes, cfg.prm.n_gpus_per_node) == (
        6, "own_pool", 1, 2)
    # the default split keeps a trainer size that divides the recipe's ppo_mini_batch_size x n (128 x 8)
    r = run(["bash", str(SINGLE_NODE), recipe, "--dry-run"], env={"GPUS_PER_NODE": "8", "PRM_PLACEMENT": "own_pool"},
            cwd=tmp_path)
    _, name, overrides = hydra_overrides(main_ppo_line(r.stdout))
    cfg = compose(name, tuple(overrides))
    assert (cfg.trainer.n_gpus_per_node, cfg.prm.n_gpus_per_node) == (4, 4)
    n_total = cfg.actor_rollout_ref.actor.ppo_mini_batch_size * cfg.actor_rollout_ref.rollout.n
    assert n_total % cfg.trainer.n_gpus_per_node == 0

    for env in ({"PRM_PLACEMENT": "elsewhere"}, {"PRM_PLACEMENT": "own_pool", "PRM_GPUS": "8", "GPUS_PER_NODE": "8"}):
        r = run(["bash", str(SINGLE_NODE), recipe, "--dry-run"], env=env, cwd=tmp_path)
        assert r.returncode == 2 and "error" in r.stderr, (env, r.stderr)
    assert run(["bash", str(SINGLE_NODE)], cwd=tmp_path).returncode == 2
    assert run(["bash", str(SINGLE_NODE), str(tmp_path / "missing.sh")], cwd=tmp_path).returncode == 2


# ------------------------------------------------------------------------------------------------ SLURM
@pytest.fixture
def fake_slurm(tmp_path):
    """A bin folder with a fake ``scontrol`` (expands ``node[1-3]``) and ``srun``/``ray`` that must not be called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(
        "#!/usr/bin/env bash\n"
        '[[ "$1 $2" == "show hostnames" ]] || exit 1\n'
        'IFS="," read -ra parts <<< "$3"\n'
        'for p in "${parts[@]}"; do\n'
        '  if [[ "$p" =~ ^(.*)\\[([0-9]+)-([0-9]+)\\]$ ]]; then\n'
        '    for ((i=${BASH_REMATCH[2]}; i<=${BASH_REMATCH[3]}; i++)); do echo "${BASH_REMATCH[1]}$i"; done\n'
        '  else echo "$p"; fi\n'
        "done\n")
    for tool in ("srun", "ray"):
        (bin_dir / tool).write_text(f"#!/usr/bin/env bash\necho called >> {tmp_path}/{tool}.called\nexit 99\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)

    def sbatch(args, **env):
        full = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(REPO), "SLURM_GPUS_ON_NODE": "8",
                "SLURM_CPUS_PER_TASK": "32", "SLURM_JOB_ID": "123", **env}
        r = run(["bash", str(SBATCH), *args], env=full, cwd=tmp_path)
        assert not (tmp_path / "srun.called").exists() and not (tmp_path / "ray.called").exists()
        return r

    return sbatch


def test_sbatch_script_syntax():
    _check_script_mode(SBATCH)
    text = SBATCH.read_text()
    assert "#SBATCH --nodes=" in text and "scontrol show hostnames" in text
    assert not re.search(r"\b\d{1,3}(\.\d{1,3}){3}\b", text), "no hard-coded address"


def test_sbatch_dry_run_colocate(fake_slurm):
    r = fake_slurm(["recipes/prpo/run_prpo_1.5b.sh", "--dry-run", "trainer.total_epochs=3"],
                   SLURM_JOB_NODELIST="gpu[7-8]")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "ray start --head --node-ip-address=gpu7 --port=6379 --num-gpus=8 --num-cpus=32" in out
    assert "-w gpu8" in out and "ray start --address=gpu7:6379" in out
    assert out.count("ray start") == 2
    argv = main_ppo_line(out)
    _, name, overrides = hydra_overrides(argv)
    assert name == PRPO_1P5B
    cfg = compose(name, tuple(overrides))
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node, cfg.prm.placement) == (2, 8, "colocate")
    assert cfg.trainer.total_epochs == 3
    assert "RAY_ADDRESS=gpu7:6379" in out


def test_sbatch_dry_run_own_pool(fake_slurm):
    r = fake_slurm(["--dry-run"], SLURM_JOB_NODELIST="a[1-3]", RECIPE="recipes/prpo/run_prpo_7b.sh",
                   PRM_PLACEMENT="own_pool", PRM_NODES="1", HEAD_IP="192.0.2.5", RAY_PORT="6400")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("ray start --address=192.0.2.5:6400") == 2
    _, name, overrides = hydra_overrides(main_ppo_line(r.stdout))
    assert name == "prpo_qwen2.5-math-7b"
    cfg = compose(name, tuple(overrides))
    assert (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node) == (2, 8)  # 3 nodes - 1 PRM node
    assert (cfg.prm.placement, cfg.prm.nnodes, cfg.prm.n_gpus_per_node) == ("own_pool", 1, 8)


def test_sbatch_dry_run_other_recipes_and_errors(fake_slurm):
    r = fake_slurm(["recipes/prl/run_prl.sh"], SLURM_JOB_NODELIST="n1,n2,n3,n4", DRY_RUN="1",
                   SLURM_GPUS_ON_NODE="", SLURM_GPUS_PER_NODE="h100:4")
    assert r.returncode == 0, r.stderr
    _, name, overrides = hydra_overrides(main_ppo_line(r.stdout))
    assert name == "prl_qwen2.5-math-1.5b"
    assert "trainer.nnodes=4" in overrides and "trainer.n_gpus_per_node=4" in overrides
    # errors: too many PRM nodes, bad placement, no recipe, no SLURM job
    for args, env in ((["recipes/grpo/run_grpo.sh", "--dry-run"], {"SLURM_JOB_NODELIST": "n[1-2]",
                                                                  "PRM_PLACEMENT": "own_pool", "PRM_NODES": "2"}),
                      (["recipes/grpo/run_grpo.sh", "--dry-run"], {"SLURM_JOB_NODELIST": "n1", "PRM_PLACEMENT": "x"}),
                      (["--dry-run"], {"SLURM_JOB_NODELIST": "n1"}),
                      (["recipes/nope.sh", "--dry-run"], {"SLURM_JOB_NODELIST": "n1"}),
                      (["recipes/grpo/run_grpo.sh", "--dry-run"], {})):
        r = fake_slurm(args, **env)
        assert r.returncode == 2 and "error" in r.stderr, (args, env, r.stdout, r.stderr)


def _write_exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.mark.parametrize("alive, rc_expected", [(3, 0), (1, 2)])
def test_sbatch_real_path_with_fake_srun_and_ray(tmp_path, alive, rc_expected):
    """The non-dry path, with stand-ins: srun runs its command locally, `ray start` blocks (a sleep), the cluster
    check reports ``alive`` nodes, and the "python" of the recipe records its arguments instead of training."""
    import time

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _write_exe(bin_dir / "scontrol", "#!/usr/bin/env bash\nprintf 'h1\\nh2\\nh3\\n'\n")
    _write_exe(bin_dir / "srun",
               "#!/usr/bin/env bash\nnode=\nwhile [[ $# -gt 0 && $1 == -* ]]; do\n"
               "  if [[ $1 == -w ]]; then node=$2; shift; fi; shift\ndone\n"
               f"echo \"$node $*\" >> {tmp_path}/srun.log\nexec \"$@\"\n")
    _write_exe(bin_dir / "ray", f"#!/usr/bin/env bash\necho $$ >> {tmp_path}/ray.pids\nexec sleep 60\n")
    # the cluster check answers once the three `ray start` stand-ins run (deterministic order for the test)
    _write_exe(bin_dir / "fakepython",
               "#!/usr/bin/env bash\n"
               f"for i in $(seq 100); do [[ $(cat {tmp_path}/ray.pids 2>/dev/null | wc -l) -ge 3 ]] && break; sleep 0.05; done\n"
               f"if [[ $1 == - ]]; then cat >/dev/null; echo {alive}; exit 0; fi\n"
               f"echo \"RAY_ADDRESS=$RAY_ADDRESS NNODES=$NNODES GPUS_PER_NODE=$GPUS_PER_NODE $*\" > {tmp_path}/main.log\n")
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(REPO), "SLURM_JOB_NODELIST": "h[1-3]",
           "SLURM_GPUS_PER_NODE": "8", "HEAD_IP": "10.1.2.3", "PYTHON": str(bin_dir / "fakepython"),
           "RAY_HEAD_WAIT_S": "0", "RAY_POLL_S": "0", "RAY_WAIT_S": "0", "PRM_PLACEMENT": "own_pool"}
    r = run(["bash", str(SBATCH), "recipes/prm_avg/run_prm_avg.sh", "trainer.total_epochs=1"], env=env, cwd=tmp_path)
    assert r.returncode == rc_expected, (r.stdout, r.stderr)
    srun_log = (tmp_path / "srun.log").read_text().splitlines()  # background steps: any order
    assert sorted(srun_log) == ["h1 ray start --head --node-ip-address=10.1.2.3 --port=6379 --num-gpus=8 --block"] + [
        f"{h} ray start --address=10.1.2.3:6379 --num-gpus=8 --block" for h in ("h2", "h3")]
    if rc_expected == 0:
        main = (tmp_path / "main.log").read_text()
        assert main.startswith("RAY_ADDRESS=10.1.2.3:6379 NNODES=2 GPUS_PER_NODE=8 -m verl.trainer.main_ppo ")
        assert "--config-name prm_avg_qwen2.5-math-1.5b" in main
        assert main.rstrip().endswith("prm.placement=own_pool prm.nnodes=1 prm.n_gpus_per_node=8 trainer.total_epochs=1")
    else:
        assert "only 1 of 3 nodes joined" in r.stderr and not (tmp_path / "main.log").exists()
    # the `ray start` steps are stopped when the script ends
    pids = [int(p) for p in (tmp_path / "ray.pids").read_text().split()]
    assert len(pids) == 3
    deadline = time.time() + 5
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (killed, not yet reaped by its parent) counts as stopped
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
