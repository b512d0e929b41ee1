"""An EAGLE layer trained on a frozen base (stage ``eagle`` of both recipes), by the shared training
loop. Teacher-forced as in EAGLE: at position t the layer reads the base's feature f_t and the
embedding of the corpus token x_{t+1}, and learns f_{t+1} (a smooth-L1 regression of the feature) and,
through the base's LM head, the base's distribution at t + 1 (self-distillation, so drafts are what
verification accepts; with ``distill`` off, the corpus token x_{t+2}). The losses are weighted 1 and
0.1, as in the paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.decoding.eagle import EagleLayer, layer_config
from harness.training.train import FrozenBaseTrainee, masked_mean

REGRESSION_WEIGHT, CLASSIFICATION_WEIGHT = 1.0, 0.1


class EagleTrainee(FrozenBaseTrainee):
    """An EAGLE layer on the frozen base; ``forward(x, valid)`` returns the losses."""

    def __init__(self, base: nn.Module, distill: bool = True):
        super().__init__(base, EagleLayer(layer_config(base.config)), distill)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> dict:
        x, features = self.read(x)
        lm_head = self.base.get_output_embeddings()
        with torch.no_grad():
            embeddings = self.base.get_input_embeddings()(x[:, 1:])
        span = x.shape[1] - (1 if self.distill else 2)  # positions t whose targets lie in the window
        positions = torch.arange(span, device=x.device)[None]
        predicted = self.drafter(features[:, :span], embeddings[:, :span], position_ids=positions)
        regression = F.smooth_l1_loss(predicted.float(), features[:, 1 : 1 + span].float(), reduction="none").mean(-1)
        logits = lm_head(predicted).float()
        if self.distill:  # the base's distribution at t + 1
            with torch.no_grad():
                target = lm_head(features[:, 1 : 1 + span]).float().softmax(-1)
            classification = -(target * logits.log_softmax(-1)).sum(-1)
        else:  # the corpus token at t + 2
            classification = F.cross_entropy(logits.transpose(1, 2), x[:, 2 : 2 + span], reduction="none")
        mask = valid[:, 1 : 1 + span] if valid is not None else None
        reg, cls = masked_mean(regression, mask), masked_mean(classification, mask)
        return {"loss": REGRESSION_WEIGHT * reg + CLASSIFICATION_WEIGHT * cls, "regression": reg, "classification": cls}
