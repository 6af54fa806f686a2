"""Typed, validated configuration of the process-reward estimators.

The options live in verl's ``algorithm`` node, one sub-node per method::

    algorithm:
      adv_estimator: prpo
      prpo: {segmentation: entropy, k: 5, m: 10, ...}
      prl:  {step_len: 256, eta: 100.0, ...}
      spro: {beta_s: 0.05, msa_norm: none}
      pure: {weighting: min_form, temperature: 0.1, ...}

Each dataclass names its sub-node (``NODE``); ``PRPOConfig.from_algorithm(algorithm_node)`` (or
``from_algorithm_config(algorithm_node, "prpo")``) turns that sub-node (OmegaConf ``DictConfig``, verl ``AlgoConfig``
dataclass, plain ``dict`` or ``None``) into the dataclass. Every value is validated in ``__post_init__``; an error
names the full key (``algorithm.prpo.k``), and an unknown key is an error too (a typo must not silently fall back to
a default). The segmentation choices are the names of ``segmentation.STRATEGIES``. The formulas the options select
are in docs/ALGORITHMS.md; which estimator reads which node is in the estimator registry (``verl_prpo.estimators``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from verl_prpo.segmentation import CUT_RULES, STRATEGIES

__all__ = ["EstimatorConfig", "PRPOConfig", "PRLConfig", "SPROConfig", "PUREConfig", "CONFIG_CLASSES",
           "from_algorithm_config"]


# --------------------------------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------------------------------


def _check_int(prefix: str, name: str, value: Any, minimum: int | None = None) -> None:
    # bool is an int subclass; `k: true` in a YAML is a mistake, not 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{prefix}.{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{prefix}.{name} must be >= {minimum}, got {value}")


def _to_float(prefix: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{prefix}.{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{prefix}.{name} must be finite, got {value}")
    return value


def _check_positive(prefix: str, name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{prefix}.{name} must be > 0, got {value}")


def _check_choice(prefix: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{prefix}.{name} must be one of {list(choices)}, got {value!r}")


def _check_bool(prefix: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{prefix}.{name} must be true or false, got {value!r}")


def _check_cut_rule(prefix: str, cut_rule: Any, segmentation: str) -> None:
    _check_choice(prefix, "cut_rule", cut_rule, CUT_RULES)
    if cut_rule != "greedy" and segmentation != "entropy":
        raise ValueError(f"{prefix}.cut_rule={cut_rule} applies to {prefix}.segmentation=entropy only, got "
                         f"segmentation={segmentation}")


# --------------------------------------------------------------------------------------------------------------------
# one config per method
# --------------------------------------------------------------------------------------------------------------------


class EstimatorConfig:
    """Base of the option dataclasses: ``NODE`` is the sub-node of verl's ``algorithm`` node that holds them."""

    NODE: ClassVar[str]

    @property
    def key(self) -> str:
        """The full key of the node, for error messages: ``algorithm.<NODE>``."""
        return f"algorithm.{self.NODE}"

    @classmethod
    def from_algorithm(cls, algorithm_node: Any):
        """Read ``algorithm.<NODE>`` into this dataclass (see ``from_algorithm_config``)."""
        return _read_node(cls, algorithm_node)


@dataclass
class PRPOConfig(EstimatorConfig):
    """``algorithm.prpo``: PRPO (arXiv 2601.07182) and the PRM-Avg baseline.

    Attributes:
        segmentation: ``"entropy"`` (default; PRPO's entropy-spike segmentation). ``"uniform"`` and ``"random"``
            are the paper's segmentation ablations; ``"newline"`` (cut after a ``"\\n\\n"`` token, the Qwen PRM
            training split) and ``"fixed"`` (every ``step_len`` tokens) are extra options.
        k: default 5. Maximum number of cuts per response (PRPO paper). Used by ``entropy``, ``uniform``, ``random``.
        m: default 10. Minimum gap between cuts and minimum first cut position (PRPO paper). ``entropy``/``random``.
        step_len: default 256. Segment length of the ``fixed`` strategy (the PRL default, used here for ablations).
        seed: default 0. Seed of the ``random`` segmentation ablation.
        cut_rule: ``"greedy"`` (default; the method as the paper states it) or ``"released"`` (the authors' released
            selection: at most k - 1 cuts among the k highest-entropy positions, ALGORITHMS.md PRPO step 1; for
            reproduction runs). ``entropy`` only.
        mu: default 0.5. Fixed-prior mean of the PRM probability (Uniform[0,1] prior, PRPO paper).
        sigma: default sqrt(1/12) = 0.2887. Fixed-prior std (Uniform[0,1] prior, PRPO paper); the authors' released
            code used sqrt(1/24) = 0.2041.
        normalization: ``"fixed"`` (default; z = (p - mu) / sigma) or ``"relative"`` (z uses the token-weighted mean
            and std of p over the group's valid tokens; the paper's ablation that collapses).
        outcome_shift: default True. A = z + beta. False gives A = z, the paper's process-only ablation.
        beta_norm: ``"none"`` (default; beta = R - mean_G R, as in the paper) or ``"std"`` (also divide by
            std_G R + eps; an option).
        eps: default 1e-6. Added to every std that divides.
    """

    segmentation: str = "entropy"
    k: int = 5
    m: int = 10
    step_len: int = 256
    seed: int = 0
    cut_rule: str = "greedy"
    mu: float = 0.5
    sigma: float = math.sqrt(1.0 / 12.0)
    normalization: str = "fixed"
    outcome_shift: bool = True
    beta_norm: str = "none"
    eps: float = 1e-6

    NODE = "prpo"
    SEGMENTATIONS = tuple(STRATEGIES)
    CUT_RULES = CUT_RULES
    NORMALIZATIONS = ("fixed", "relative")
    BETA_NORMS = ("none", "std")

    def __post_init__(self) -> None:
        p = self.key
        _check_choice(p, "segmentation", self.segmentation, self.SEGMENTATIONS)
        _check_int(p, "k", self.k, 1)
        _check_int(p, "m", self.m, 1)
        _check_int(p, "step_len", self.step_len, 1)
        _check_int(p, "seed", self.seed)
        _check_cut_rule(p, self.cut_rule, self.segmentation)
        self.mu = _to_float(p, "mu", self.mu)
        self.sigma = _to_float(p, "sigma", self.sigma)
        _check_positive(p, "sigma", self.sigma)
        _check_choice(p, "normalization", self.normalization, self.NORMALIZATIONS)
        _check_bool(p, "outcome_shift", self.outcome_shift)
        _check_choice(p, "beta_norm", self.beta_norm, self.BETA_NORMS)
        self.eps = _to_float(p, "eps", self.eps)
        _check_positive(p, "eps", self.eps)


@dataclass
class PRLConfig(EstimatorConfig):
    """``algorithm.prl``: PRL, Process Reward Learning (arXiv 2601.10201).

    Attributes:
        segmentation: ``"fixed"`` (default; steps of ``step_len`` tokens, the paper's code) or ``"newline"`` (steps
            end at a ``"\\n\\n"`` token; needs the trainer to pass ``segment_ids``).
        step_len: default 256 (PRL code default). Step length of the ``fixed`` segmentation.
        eta: default 100.0 (PRL code for Qwen2.5-Math-7B; 200 for Llama-3.2-3B). KL temperature: the process term is
            -(1/eta) * (sum of log pi_old - log pi_ref still to come).
        variant: ``"outcome_first"`` (default; the paper's main "advantage first": rho = A_out - KL-to-go / eta) or
            ``"process_first"`` (rho = R - per-token KL-to-go / eta, no group normalisation).
        kl_scope: where the KL-to-go sum of step l starts: ``"step_end"`` (default; at the step's last token, the
            released code), ``"after_step"`` (after it, the theorem's reading) or ``"whole_step"`` (at the step's first
            token). ``outcome_first`` only.
        eps: default 1e-6. Added to the group std of the outcome advantage.
    """

    segmentation: str = "fixed"
    step_len: int = 256
    eta: float = 100.0
    variant: str = "outcome_first"
    kl_scope: str = "step_end"
    eps: float = 1e-6

    NODE = "prl"
    SEGMENTATIONS = ("fixed", "newline")  # the strategies PRL's papers define steps by
    VARIANTS = ("outcome_first", "process_first")
    KL_SCOPES = ("step_end", "after_step", "whole_step")

    def __post_init__(self) -> None:
        p = self.key
        _check_choice(p, "segmentation", self.segmentation, self.SEGMENTATIONS)
        _check_int(p, "step_len", self.step_len, 1)
        self.eta = _to_float(p, "eta", self.eta)
        _check_positive(p, "eta", self.eta)
        _check_choice(p, "variant", self.variant, self.VARIANTS)
        _check_choice(p, "kl_scope", self.kl_scope, self.KL_SCOPES)
        self.eps = _to_float(p, "eps", self.eps)
        _check_positive(p, "eps", self.eps)


@dataclass
class SPROConfig(EstimatorConfig):
    """``algorithm.spro``: SPRO, Self-Guided Process Reward Optimization (arXiv 2507.01551; no public code).

    Attributes:
        beta_s: default 0.05 (not given publicly; PRIME's implicit-PRM coefficient). Token reward
            r = beta_s * (log pi_old - log pi_ref).
        msa_norm: ``"none"`` (default; the paper's Masked Step Advantage) or ``"std"`` (an option: divide the MSA by
            the std of the cumulative process reward over the group's responses alive at t, + eps).
        eps: default 1e-6. Added to every std that divides.
    """

    beta_s: float = 0.05
    msa_norm: str = "none"
    eps: float = 1e-6

    NODE = "spro"
    MSA_NORMS = ("none", "std")

    def __post_init__(self) -> None:
        p = self.key
        self.beta_s = _to_float(p, "beta_s", self.beta_s)
        _check_positive(p, "beta_s", self.beta_s)
        _check_choice(p, "msa_norm", self.msa_norm, self.MSA_NORMS)
        self.eps = _to_float(p, "eps", self.eps)
        _check_positive(p, "eps", self.eps)


@dataclass
class PUREConfig(EstimatorConfig):
    """``algorithm.pure``: PURE, min-form credit assignment (arXiv 2504.15275; released code CJReinforce/PURE).

    Attributes:
        weighting: ``"min_form"`` (default; w = softmax_s(-r / T), a soft minimum of the step rewards) or ``"none"``
            (w = 1 / S_i, the mean).
        temperature: default 0.1 (released code). T of the min-form softmax.
        baseline: ``"token"`` (default; leave-one-out PRM return per token, times the step's token count) or
            ``"step"`` (leave-one-out PRM return per step).
        vr_coef: default 1.0. Weight of the verifiable (outcome) reward v_i = R_i - mean_{k != i} R_k; 0 = PRM only.
            (The released launch script uses 0.1 with its 0 / 1 correctness reward; the PURE recipe says so.)
        mask_separator: default True (released code). A = 0 at every step-end token, where the PRM score is read.
        whiten: default True (released code). Whiten A over the batch's valid tokens.
        segmentation: ``"newline"`` (default; steps end at a ``"\\n\\n"`` token, as in PURE) or any strategy of
            ``algorithm.prpo.segmentation``; ``k``, ``m``, ``step_len``, ``seed``, ``cut_rule`` mean what they mean
            there.
    """

    weighting: str = "min_form"
    temperature: float = 0.1
    baseline: str = "token"
    vr_coef: float = 1.0
    mask_separator: bool = True
    whiten: bool = True
    segmentation: str = "newline"
    k: int = 5
    m: int = 10
    step_len: int = 256
    seed: int = 0
    cut_rule: str = "greedy"

    NODE = "pure"
    WEIGHTINGS = ("min_form", "none")
    BASELINES = ("token", "step")
    #: the PRM's neutral probability (r = 2 * 0.5 - 1 = 0): the score of a segment the PRM could not read
    mu = 0.5

    def __post_init__(self) -> None:
        p = self.key
        _check_choice(p, "weighting", self.weighting, self.WEIGHTINGS)
        self.temperature = _to_float(p, "temperature", self.temperature)
        _check_positive(p, "temperature", self.temperature)
        _check_choice(p, "baseline", self.baseline, self.BASELINES)
        self.vr_coef = _to_float(p, "vr_coef", self.vr_coef)
        if self.vr_coef < 0:
            raise ValueError(f"{p}.vr_coef must be >= 0, got {self.vr_coef}")
        _check_bool(p, "mask_separator", self.mask_separator)
        _check_bool(p, "whiten", self.whiten)
        _check_choice(p, "segmentation", self.segmentation, PRPOConfig.SEGMENTATIONS)
        _check_int(p, "k", self.k, 1)
        _check_int(p, "m", self.m, 1)
        _check_int(p, "step_len", self.step_len, 1)
        _check_int(p, "seed", self.seed)
        _check_cut_rule(p, self.cut_rule, self.segmentation)


#: sub-node name of the ``algorithm`` node -> its dataclass, for the dataclasses of this module
CONFIG_CLASSES: dict[str, type] = {cls.NODE: cls for cls in (PRPOConfig, PRLConfig, SPROConfig, PUREConfig)}


# --------------------------------------------------------------------------------------------------------------------
# reading from verl's algorithm node
# --------------------------------------------------------------------------------------------------------------------


def _lookup(node: Any, name: str) -> Any:
    """``node.<name>`` or ``node[name]`` or None, for a DictConfig, a verl BaseConfig dataclass, a dict or an object."""
    if node is None:
        return None
    try:
        from omegaconf import DictConfig

        if isinstance(node, DictConfig):
            # DictConfig.get returns None for a missing key even in struct mode
            return node.get(name)
    except ImportError:  # pragma: no cover - omegaconf ships with verl
        pass
    if isinstance(node, Mapping):
        # verl's BaseConfig is a Mapping whose .get swallows AttributeError
        return node.get(name)
    return getattr(node, name, None)


def _to_plain_dict(sub: Any, key: str) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(sub, DictConfig):
            return dict(OmegaConf.to_container(sub, resolve=True))
    except ImportError:  # pragma: no cover
        pass
    if isinstance(sub, Mapping):
        return {str(k): sub[k] for k in sub}
    if dataclasses.is_dataclass(sub) and not isinstance(sub, type):
        return {f.name: getattr(sub, f.name) for f in dataclasses.fields(sub)}
    raise ValueError(f"{key} must be a mapping, got {type(sub).__name__}: {sub!r}")


def from_algorithm_config(algorithm_node: Any, name: str):
    """Read ``algorithm.<name>`` (``name`` in ``prpo``, ``prl``, ``spro``, ``pure``) into its validated dataclass.

    Args:
        algorithm_node: verl's ``algorithm`` node: an OmegaConf ``DictConfig``, a verl ``AlgoConfig`` dataclass
            (which usually lacks the attribute: defaults are used), a plain ``dict``, or ``None`` (defaults).
        name: the sub-node to read.

    Returns:
        ``PRPOConfig`` / ``PRLConfig`` / ``SPROConfig`` / ``PUREConfig``. A missing or ``None`` sub-node gives the
        defaults; an instance of the dataclass is returned as is.

    Raises:
        ValueError: unknown ``name``, a sub-node that is not a mapping, an unknown key (named), or a bad value (named).
    """
    if name not in CONFIG_CLASSES:
        raise ValueError(f"unknown algorithm config section {name!r}; expected one of {list(CONFIG_CLASSES)}")
    return CONFIG_CLASSES[name].from_algorithm(algorithm_node)


def _read_node(cls: type, algorithm_node: Any):
    key = f"algorithm.{cls.NODE}"
    sub = _lookup(algorithm_node, cls.NODE)
    if sub is None:
        return cls()
    if isinstance(sub, cls):
        return sub
    values = _to_plain_dict(sub, key)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in values if k not in known)
    if unknown:
        raise ValueError(
            f"unknown key(s) in {key}: {', '.join(f'{key}.{k}' for k in unknown)}; known keys: {sorted(known)}"
        )
    return cls(**values)
