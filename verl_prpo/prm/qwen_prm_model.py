"""``Qwen2ForProcessRewardModel`` implemented with transformers' own ``Qwen2Model`` (no remote code).

Qwen2.5-Math-PRM-7B ships its model class as hub remote code written for transformers 4.x; verl 0.9.1 pins
transformers 5.x, and running code from a checkpoint folder should never be required. The architecture is small
enough to state here (VERL_NOTES.md, "Qwen2.5-Math-PRM-7B")::

    h_{b,t}      = Qwen2Model(input_ids)_{b,t}                       (B, T, hidden)
    logits_{b,t} = W_2 ReLU(W_0 h_{b,t} + b_0) + b_2                 (B, T, 2)
    p_{b,t}      = softmax(logits_{b,t})[1]                          read at every <extra_0> (id 151651)

Checkpoint layout: ``model.*`` (the Qwen2 body), ``score.0.*`` (``W_0``: hidden x hidden), ``score.2.*``
(``W_2``: 2 x hidden). A stray ``lm_head.*`` tensor, present in some exports, is ignored. The config is the
stock ``Qwen2Config`` (``model_type: qwen2``); its ``auto_map`` entries are never followed.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2Model
from transformers.modeling_outputs import TokenClassifierOutput
from transformers.models.qwen2.modeling_qwen2 import Qwen2PreTrainedModel

ARCHITECTURE = "Qwen2ForProcessRewardModel"
NUM_LABELS = 2


class Qwen2ForProcessRewardModel(Qwen2PreTrainedModel):
    """Qwen2 body + 2-layer MLP head giving (B, T, 2) logits (see the module docstring)."""

    config_class = Qwen2Config
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__(config)
        self.model = Qwen2Model(config)
        h = config.hidden_size
        self.score = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, NUM_LABELS))
        self.post_init()

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, inputs_embeds: torch.Tensor | None = None,
                **kwargs) -> TokenClassifierOutput:
        """``input_ids`` (B, T) -> ``logits`` (B, T, 2); extra keyword arguments go to ``Qwen2Model``."""
        kwargs.setdefault("use_cache", False)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         inputs_embeds=inputs_embeds, **kwargs)
        return TokenClassifierOutput(logits=self.score(out.last_hidden_state))
