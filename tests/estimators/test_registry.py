"""The estimator registry (``verl_prpo/estimators/registry.py``): every fact about an estimator has one home, and
the trainer, the registration in verl and the start-up checks read it."""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from verl.trainer.ppo import core_algos

from verl_prpo.conf import CONFIG_DIR
from verl_prpo.config import PRPOConfig
from verl_prpo.estimators import (
    ESTIMATOR_NAMES,
    ESTIMATORS,
    compute_prpo_advantage,
    estimator_names,
    get_estimator,
    register_estimator,
)

PACKAGE = Path(__file__).resolve().parents[2] / "verl_prpo"


@pytest.fixture(scope="module")
def composed():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name="prpo_trainer")


def _config(composed, **overrides):
    cfg = copy.deepcopy(composed)
    with open_dict(cfg):
        for key, value in overrides.items():
            OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def test_the_records_say_what_each_estimator_needs():
    assert ESTIMATOR_NAMES == ("prpo", "prl", "spro", "prm_avg", "pure")
    assert estimator_names(needs_prm=True) == ("prpo", "prm_avg", "pure")
    assert estimator_names(needs_ref=True) == ("prl", "spro")
    assert estimator_names(needs_segments=True) == ("prpo", "prl", "prm_avg", "pure")
    assert estimator_names(needs_segments=False) == ("spro",)
    assert {n: get_estimator(n).config_node for n in ESTIMATOR_NAMES} == {
        "prpo": "prpo", "prl": "prl", "spro": "spro", "prm_avg": "prpo", "pure": "pure"}
    with pytest.raises(ValueError, match=r"'grpo' is not an estimator of verl-prpo; registered: \['prpo'"):
        get_estimator("grpo")


@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
def test_every_estimator_has_its_yaml_node_with_every_option(name):
    spec = ESTIMATORS[name]
    algorithm = OmegaConf.load(CONFIG_DIR / "prpo_base.yaml").algorithm
    assert spec.config_node in algorithm, f"algorithm.{spec.config_node} missing from prpo_base.yaml"
    node = algorithm[spec.config_node]
    assert set(node) == {f.name for f in dataclasses.fields(spec.config)}
    assert spec.config.from_algorithm(algorithm) == spec.config()  # the YAML's values are the dataclass defaults


@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
def test_every_estimator_takes_the_inputs_its_record_promises(name):
    spec = ESTIMATORS[name]
    params = inspect.signature(spec.fn).parameters
    assert list(params)[:4] == ["token_level_rewards", "response_mask", "index", "config"]
    assert ("prm_scores" in params) == spec.needs_prm
    assert ("ref_log_prob" in params and "old_log_probs" in params) == spec.needs_ref
    assert ("segment_ids" in params) == (spec.needs_segments and name != "prm_avg")  # prm_avg: the PRM's segments
    assert "metrics" in params


def test_registered_in_verl_from_the_records():
    for name, spec in ESTIMATORS.items():
        assert core_algos.get_adv_estimator_fn(name) is spec.fn


def test_registering_twice_is_refused_and_filters_follow_the_records(monkeypatch):
    monkeypatch.setattr("verl_prpo.estimators.registry.ESTIMATORS", dict(ESTIMATORS))
    from verl_prpo.estimators import registry

    def fn(token_level_rewards, response_mask, index=None, config=None, **kwargs):
        return token_level_rewards, token_level_rewards

    register_estimator("test_only", PRPOConfig, needs_ref=True)(fn)
    assert registry.get_estimator("test_only").needs_ref and "test_only" in registry.estimator_names(needs_ref=True)
    with pytest.raises(ValueError, match="registered twice"):
        register_estimator("test_only", PRPOConfig)(lambda *a, **k: None)
    with pytest.raises(ValueError, match="needs_prm implies needs_segments"):
        register_estimator("bad", PRPOConfig, needs_prm=True)
    from verl_prpo.config import SPROConfig

    with pytest.raises(ValueError, match="SPROConfig has no `segmentation` option"):
        register_estimator("bad", SPROConfig, needs_segments=True)
    with pytest.raises(ValueError, match="names no NODE"):
        register_estimator("bad", dict)
    assert "bad" not in registry.ESTIMATORS
    assert "test_only" not in ESTIMATORS  # the package's table is untouched


def test_unknown_estimator_is_refused_at_start_up(composed):
    from verl_prpo.trainer import validate_plugin_config

    with pytest.raises(ValueError, match=r"algorithm\.adv_estimator='prpoo' is not a registered advantage "
                                         r"estimator; verl-prpo's: \['prpo', 'prl', 'spro', 'prm_avg', 'pure'\], "
                                         r"verl's: \[.*'grpo'"):
        validate_plugin_config(_config(composed, **{"algorithm.adv_estimator": "prpoo"}))


def test_the_trainers_error_lists_name_every_estimator():
    from verl_prpo.trainer import check_single_output_sessions

    with pytest.raises(ValueError) as err:
        check_single_output_sessions(["u_0_0", "u_0_1"])
    for name in ESTIMATOR_NAMES:
        assert name in str(err.value)


@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
def test_start_up_reads_each_record(composed, name):
    from verl_prpo.trainer import validate_plugin_config

    overrides = {"algorithm.adv_estimator": name, "prm.scores_from_batch": True}
    typed = validate_plugin_config(_config(composed, **overrides))
    assert type(typed["estimator"]) is ESTIMATORS[name].config
    bad = {"algorithm.adv_estimator": name, f"algorithm.{ESTIMATORS[name].config_node}.oops": 1,
           "prm.scores_from_batch": True}
    with pytest.raises(ValueError, match=rf"algorithm\.{ESTIMATORS[name].config_node}\.oops"):
        validate_plugin_config(_config(composed, **bad))


def test_an_estimator_added_as_a_record_passes_the_start_up_checks(composed, monkeypatch):
    """What a new estimator takes: a record (here made in the test) and its YAML node; the trainer needs no edit."""
    from verl_prpo.estimators import registry
    from verl_prpo.trainer import PRPOTrainerSync, validate_plugin_config

    @dataclass
    class HalfConfig(PRPOConfig):
        NODE = "prpo_half_test"
        scale: float = 0.5

    def compute_half(token_level_rewards, response_mask, index=None, config=None, *, prm_scores=None, **kwargs):
        cfg = HalfConfig.from_algorithm(config)
        adv, _ = compute_prpo_advantage(token_level_rewards, response_mask, index, {"prpo": cfg},
                                        prm_scores=prm_scores)
        return cfg.scale * adv, cfg.scale * adv

    monkeypatch.setattr(registry, "ESTIMATORS", dict(ESTIMATORS))
    monkeypatch.setattr("verl_prpo.trainer.ESTIMATORS", registry.ESTIMATORS)
    monkeypatch.setitem(core_algos.ADV_ESTIMATOR_REGISTRY, "prpo_half_test", compute_half)
    registry.register_estimator("prpo_half_test", HalfConfig, needs_prm=True, needs_segments=True)(compute_half)

    cfg = _config(composed, **{"algorithm.adv_estimator": "prpo_half_test", "prm.scores_from_batch": True,
                               "algorithm.prpo_half_test": {"scale": 0.25, "k": 3}})
    typed = validate_plugin_config(cfg)
    assert type(typed["estimator"]) is HalfConfig and typed["estimator"].scale == 0.25 and typed["estimator"].k == 3
    with pytest.raises(ValueError, match=r"algorithm\.prpo_half_test\.k must be >= 1"):
        validate_plugin_config(_config(composed, **{"algorithm.adv_estimator": "prpo_half_test",
                                                    "prm.scores_from_batch": True,
                                                    "algorithm.prpo_half_test": {"k": 0}}))
    with pytest.raises(ValueError, match="needs PRM scores"):  # needs_prm is read: no PRM, no batch scores
        validate_plugin_config(_config(composed, **{"algorithm.adv_estimator": "prpo_half_test"}))
    t = PRPOTrainerSync.__new__(PRPOTrainerSync)
    t.adv_name = "prpo_half_test"
    assert t.estimator.needs_prm and not t.estimator.needs_ref

    rewards = torch.zeros(2, 3)
    rewards[0, -1] = 1.0
    adv, _ = compute_half(rewards, torch.ones(2, 3), ["a", "a"], cfg.algorithm, prm_scores=torch.full((2, 3), 0.5))
    torch.testing.assert_close(adv, torch.tensor([[0.125] * 3, [-0.125] * 3]))  # 0.25 * beta, z = 0


def _imports(path: Path) -> set[str]:
    """The verl_prpo modules a source file imports (top-level, inside functions, or by importlib string)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            out.add(node.args[0].value)
    # the package itself (``from verl_prpo import x``) stands for its submodule x: every submodule imports the
    # package's __init__ anyway, which is where verl loads the plugin
    return {m for m in out if m.startswith("verl_prpo.")}


def test_registration_and_the_trainer_do_not_import_each_other():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("verl_prpo",) + path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    registration = PACKAGE / "registration.py"
    # registration names the estimators module by a constant: resolve it as the module does
    edges = {name: {m for m in _imports(path) if m in modules} for name, path in modules.items()}
    edges["verl_prpo.registration"] |= {"verl_prpo.estimators"}
    assert "verl_prpo.trainer" in _imports(registration)  # it registers the trainer mode

    def reaches(src: str, dst: str) -> bool:
        seen, todo = set(), [src]
        while todo:
            m = todo.pop()
            if m == dst:
                return True
            if m not in seen:
                seen.add(m)
                todo += edges.get(m, ())
        return False

    assert not reaches("verl_prpo.trainer", "verl_prpo.registration")
    assert not reaches("verl_prpo.estimators", "verl_prpo.registration")
    assert not reaches("verl_prpo.startup", "verl_prpo.registration")
