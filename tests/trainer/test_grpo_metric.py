"""``adv/mean_abs_diff_vs_grpo`` follows ``norm_adv_by_std_in_grpo``; multi-output agent-loop sessions are refused
by the process estimators (upstream GRPO uses each session's last output) (issue 9, item 10)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from verl_prpo.trainer import PRPOTrainerSync, check_single_output_sessions, grpo_comparison_metrics


def _batch():
    from verl import DataProto

    B, L = 8, 5
    mask = torch.ones(B, L)
    mask[2, 3:] = 0
    rewards = torch.zeros(B, L)
    rewards[:, 1] = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0.0]) * 3.0  # std != 1 so the normalisation matters
    uid = np.array(list("aabbccdd"), dtype=object)
    return DataProto.from_dict(tensors={"response_mask": mask, "token_level_rewards": rewards},
                               non_tensors={"uid": uid})


@pytest.mark.parametrize("norm", [True, False])
def test_metric_reference_is_the_grpo_the_user_configured(norm):
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    data = _batch()
    b = data.batch
    grpo, _ = compute_grpo_outcome_advantage(b["token_level_rewards"], b["response_mask"], data.non_tensor_batch["uid"],
                                             norm_adv_by_std_in_grpo=norm)
    assert grpo_comparison_metrics(grpo, data, norm_by_std=norm)["adv/mean_abs_diff_vs_grpo"] == pytest.approx(
        0.0, abs=1e-6)
    other, _ = compute_grpo_outcome_advantage(b["token_level_rewards"], b["response_mask"],
                                              data.non_tensor_batch["uid"], norm_adv_by_std_in_grpo=not norm)
    assert grpo_comparison_metrics(other, data, norm_by_std=norm)["adv/mean_abs_diff_vs_grpo"] > 0.1


def test_multi_output_sessions_are_refused_before_anything_is_read():
    class Batch:
        keys = ["u1_0_0", "u1_1_0", "u1_1_1", "u2_0_0"]  # session u1_1 has two outputs
        partition_id = "train"

    t = PRPOTrainerSync.__new__(PRPOTrainerSync)
    t.adv_name = "prpo"
    t.config = OmegaConf.create({"algorithm": {"adv_estimator": "prpo"}})
    with pytest.raises(ValueError, match=r"session 'u1_1': 2 outputs.*last output"):
        t._compute_advantage(Batch(), {})
    check_single_output_sessions(["u1_0_0", "u1_1_0", "u2_0_0"])  # one output per session: fine
