"""verl_prpo.config: defaults, validation errors that name the key, reading from every kind of algorithm node."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf
from verl.trainer.config.algorithm import AlgoConfig

from verl_prpo.config import PRLConfig, PRPOConfig, SPROConfig, from_algorithm_config


def test_defaults_match_design():
    assert PRPOConfig() == PRPOConfig(
        segmentation="entropy", k=5, m=10, step_len=256, seed=0, mu=0.5, sigma=math.sqrt(1 / 12),
        normalization="fixed", outcome_shift=True, beta_norm="none", eps=1e-6,
    )
    assert abs(PRPOConfig().sigma - 0.2887) < 1e-4
    assert PRPOConfig().cut_rule == "greedy" and PRPOConfig(cut_rule="released").cut_rule == "released"
    assert PRLConfig() == PRLConfig(
        segmentation="fixed", step_len=256, eta=100.0, variant="outcome_first", kl_scope="step_end", eps=1e-6
    )
    assert SPROConfig() == SPROConfig(beta_s=0.05, msa_norm="none", eps=1e-6)


@pytest.mark.parametrize(
    "cls, kwargs, key",
    [
        (PRPOConfig, {"k": 0}, "algorithm.prpo.k must be >= 1, got 0"),
        (PRPOConfig, {"m": 0}, "algorithm.prpo.m must be >= 1"),
        (PRPOConfig, {"step_len": 0}, "algorithm.prpo.step_len must be >= 1"),
        (PRPOConfig, {"sigma": 0.0}, "algorithm.prpo.sigma must be > 0"),
        (PRPOConfig, {"sigma": -1}, "algorithm.prpo.sigma"),
        (PRPOConfig, {"mu": float("nan")}, "algorithm.prpo.mu must be finite"),
        (PRPOConfig, {"segmentation": "sentence"}, "algorithm.prpo.segmentation must be one of"),
        (PRPOConfig, {"normalization": "batch"}, "algorithm.prpo.normalization"),
        (PRPOConfig, {"beta_norm": "max"}, "algorithm.prpo.beta_norm"),
        (PRPOConfig, {"outcome_shift": "yes"}, "algorithm.prpo.outcome_shift must be true or false"),
        (PRPOConfig, {"k": True}, "algorithm.prpo.k must be an integer"),
        (PRPOConfig, {"k": 2.5}, "algorithm.prpo.k must be an integer"),
        (PRPOConfig, {"eps": 0.0}, "algorithm.prpo.eps must be > 0"),
        (PRPOConfig, {"cut_rule": "paper"}, "algorithm.prpo.cut_rule must be one of"),
        (PRPOConfig, {"cut_rule": "released", "segmentation": "uniform"},
         "algorithm.prpo.cut_rule=released applies to algorithm.prpo.segmentation=entropy only"),
        (PRLConfig, {"eta": 0}, "algorithm.prl.eta must be > 0"),
        (PRLConfig, {"step_len": 0}, "algorithm.prl.step_len must be >= 1"),
        (PRLConfig, {"segmentation": "entropy"}, "algorithm.prl.segmentation must be one of"),
        (PRLConfig, {"variant": "both"}, "algorithm.prl.variant"),
        (PRLConfig, {"kl_scope": "all"}, "algorithm.prl.kl_scope"),
        (SPROConfig, {"beta_s": 0}, "algorithm.spro.beta_s must be > 0"),
        (SPROConfig, {"msa_norm": "mad"}, "algorithm.spro.msa_norm"),
        (SPROConfig, {"beta_s": "0.1"}, "algorithm.spro.beta_s must be a number"),
    ],
)
def test_validation_names_the_key(cls, kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.").replace("(", r"\(")):
        cls(**kwargs)


def test_int_accepted_for_float_fields():
    cfg = PRPOConfig(sigma=1, mu=0)
    assert isinstance(cfg.sigma, float) and cfg.sigma == 1.0 and isinstance(cfg.mu, float)
    assert PRLConfig(eta=200).eta == 200.0


def test_from_none_and_missing_node_gives_defaults():
    assert from_algorithm_config(None, "prpo") == PRPOConfig()
    assert from_algorithm_config({}, "prl") == PRLConfig()
    assert from_algorithm_config({"spro": None}, "spro") == SPROConfig()


def test_from_dictconfig_struct_mode():
    node = OmegaConf.create(
        {"adv_estimator": "prpo", "code_sigma": 0.2041, "prpo": {"k": 3, "sigma": "${code_sigma}", "beta_norm": "std"}}
    )
    OmegaConf.set_struct(node, True)
    cfg = from_algorithm_config(node, "prpo")
    assert cfg.k == 3 and cfg.beta_norm == "std" and cfg.sigma == pytest.approx(0.2041) and cfg.m == 10
    assert from_algorithm_config(node, "prl") == PRLConfig()  # absent key in struct mode: defaults


def test_from_dict_and_instance():
    assert from_algorithm_config({"prl": {"eta": 200, "kl_scope": "after_step"}}, "prl") == PRLConfig(
        eta=200.0, kl_scope="after_step"
    )
    inst = SPROConfig(beta_s=0.1)
    assert from_algorithm_config({"spro": inst}, "spro") is inst


def test_from_verl_algo_config_without_the_attribute():
    algo = AlgoConfig(adv_estimator="prpo")
    assert from_algorithm_config(algo, "prpo") == PRPOConfig()
    assert from_algorithm_config(algo, "spro") == SPROConfig()


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"algorithm\.prpo\.kk.*algorithm\.prpo\.sigmaa"):
        from_algorithm_config({"prpo": {"kk": 3, "sigmaa": 1.0}}, "prpo")
    node = OmegaConf.create({"spro": {"beta": 0.1}})
    with pytest.raises(ValueError, match=r"algorithm\.spro\.beta\b"):
        from_algorithm_config(node, "spro")


def test_bad_values_and_section_from_config():
    with pytest.raises(ValueError, match=r"algorithm\.prl\.eta must be > 0"):
        from_algorithm_config(OmegaConf.create({"prl": {"eta": -1.0}}), "prl")
    with pytest.raises(ValueError, match="unknown algorithm config section"):
        from_algorithm_config(None, "grpo")
    with pytest.raises(ValueError, match=r"algorithm\.prpo must be a mapping"):
        from_algorithm_config({"prpo": 5}, "prpo")


def test_every_field_is_documented():
    for cls in (PRPOConfig, PRLConfig, SPROConfig):
        for name in cls.__dataclass_fields__:
            assert f"{name}:" in cls.__doc__, f"{cls.__name__}.{name} is not documented"
