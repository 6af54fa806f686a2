"""Rollout correction edits ``response_mask``; segmentation and PRM scoring must not see the edit (issue 9, item 9).

``PRPOTrainerSync._compute_advantage`` runs against a recording TransferQueue client (no cluster). verl's
``compute_rollout_correction_and_add_to_batch`` is replaced by a rejection step that zeroes tokens inside
response 0 (token-level rejection) and all of response 1 (sequence-level rejection). The PRM scorer must receive
segment ids computed on the mask the policy generated (contiguous segments over every generated token), and the
estimator and the write-back must use the corrected mask, as upstream does.
"""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from verl_prpo.segmentation import segment
from verl_prpo.trainer import PRPOTrainerSync, validate_plugin_config

LENGTHS = [12, 9, 10, 7]
UIDS = ["a", "a", "b", "b"]
L = max(LENGTHS)


def _td():
    from tensordict import NonTensorStack, TensorDict

    g = torch.Generator().manual_seed(0)
    fields = {"response_mask": [], "rm_scores": [], "rollout_log_probs": [], "old_log_probs": [], "entropy": [],
              "responses": []}
    for i, n in enumerate(LENGTHS):
        rm = torch.zeros(n)
        rm[-1] = float(i % 2)
        fields["response_mask"].append(torch.ones(n, dtype=torch.int64))
        fields["rm_scores"].append(rm)
        fields["rollout_log_probs"].append(-torch.rand(n, generator=g))
        fields["old_log_probs"].append(-torch.rand(n, generator=g))
        fields["entropy"].append(torch.rand(n, generator=g))
        fields["responses"].append(torch.randint(5, 100, (n,), generator=g))
    data = {k: torch.nested.as_nested_tensor(v, layout=torch.jagged) for k, v in fields.items()}
    data["uid"] = NonTensorStack(*UIDS)
    return TensorDict(data, batch_size=[len(LENGTHS)])


class FakeTQ:
    def __init__(self, td):
        self.td, self.put = td, None

    def kv_batch_get(self, keys, partition_id, select_fields=None):
        return self.td.select(*[f for f in select_fields if f in self.td.keys()])

    def kv_batch_put(self, keys, partition_id, fields=None, tags=None):
        self.put = fields
        return fields


class Batch:
    keys = [f"{u}_{i}_0" for i, u in enumerate(UIDS)]  # verl: {uid}_{session_id}_{index}
    partition_id = "train"

    def __len__(self):
        return len(self.keys)


def _reject(data, rc_cfg):
    """Stand-in for verl's rejection sampling: zero tokens 3..5 of response 0 and all of response 1."""
    m = data.batch["response_mask"].clone()
    m[0, 3:6] = 0
    m[1] = 0
    data.batch["response_mask"] = m
    return data, {"rollout_corr/rejected": 1.0}


class RecordingScorer:
    def __init__(self):
        self.seen = None

    def score(self, batch, data, segment_ids, correct=None, response_mask=None):
        self.seen = {"segment_ids": segment_ids.clone(), "mask": response_mask.clone()}
        mask = response_mask.bool()
        steps = segment_ids.long().masked_fill(~mask, -1)  # no merged segments
        return torch.where(mask, torch.full(mask.shape, 0.7), torch.zeros(mask.shape)), steps, {"prm/score_mean": 0.7}


@pytest.mark.parametrize("strategy", ["uniform", "fixed", "entropy"])
def test_segments_and_prm_use_the_mask_before_rollout_correction(monkeypatch, strategy):
    import transfer_queue

    from verl.trainer.ppo import core_algos, rollout_corr_helper

    td = _td()
    fake = FakeTQ(td)
    monkeypatch.setattr(transfer_queue, "kv_batch_get", fake.kv_batch_get)
    monkeypatch.setattr(transfer_queue, "kv_batch_put", fake.kv_batch_put)
    monkeypatch.setattr(rollout_corr_helper, "compute_rollout_correction_and_add_to_batch", _reject)
    seen_by_estimator = {}
    real_get = core_algos.get_adv_estimator_fn

    def spy_get(name):
        fn = real_get(name)

        def spy(**kw):
            seen_by_estimator["response_mask"] = kw["response_mask"].clone()
            return fn(**kw)
        return spy
    monkeypatch.setattr(core_algos, "get_adv_estimator_fn", spy_get)

    t = PRPOTrainerSync.__new__(PRPOTrainerSync)
    t.config = OmegaConf.create({
        "algorithm": {"adv_estimator": "prpo", "use_kl_in_reward": False, "kl_penalty": "kl", "gamma": 1.0,
                      "lam": 1.0, "norm_adv_by_std_in_grpo": True, "rollout_correction": {"bypass_mode": False},
                      "prpo": {"segmentation": strategy, "k": 3, "m": 2, "step_len": 4, "seed": 0, "mu": 0.5,
                               "sigma": math.sqrt(1 / 12), "normalization": "fixed", "outcome_shift": True,
                               "beta_norm": "none", "eps": 1e-6}},
        "actor_rollout_ref": {"rollout": {"n": 2}, "actor": {"use_kl_loss": False, "kl_loss_coef": 0.0}},
        "prm": {"enable": False, "scores_from_batch": True},
    })
    t.adv_name, t.global_steps, t._newline_mask = "prpo", 1, None
    t.plugin_config = validate_plugin_config(t.config)
    t.prm_scorer = RecordingScorer()
    t._compute_advantage(Batch(), {})

    generated = torch.zeros(len(LENGTHS), L, dtype=torch.int64)
    for i, n in enumerate(LENGTHS):
        generated[i, :n] = 1
    seen = t.prm_scorer.seen
    assert torch.equal(seen["mask"].long(), generated)  # the mask the policy produced
    ent = td["entropy"].to_padded_tensor(0.0)
    expected = segment(strategy, generated, entropy=ent, k=3, m=2, step_len=4, seed=1).segment_ids
    assert torch.equal(seen["segment_ids"], expected)
    # every segment has valid tokens and ids are contiguous 0..S-1 on the generated tokens
    for i, n in enumerate(LENGTHS):
        ids = seen["segment_ids"][i, :n]
        assert ids[0] == 0 and bool(((ids[1:] - ids[:-1]) >= 0).all() and ((ids[1:] - ids[:-1]) <= 1).all())
    corrected = generated.clone()
    corrected[0, 3:6] = 0
    corrected[1] = 0
    assert torch.equal(seen_by_estimator["response_mask"].long(), corrected)  # upstream: the corrected mask
    written = fake.put["response_mask"]
    assert [int(x.sum()) for x in written.unbind()] == [int(r.sum()) for r in corrected]
    adv = fake.put["advantages"]
    assert float(adv.unbind()[1].abs().sum()) == 0.0  # the rejected response gets no advantage
