"""Medusa-1 heads trained on a frozen base (stage ``medusa`` of both recipes), by the shared training
loop: the base's hidden states go through the heads and their vocabulary projections (their own,
started from the base's LM head, or the base's LM head shared); head j at position t
learns the base's distribution at position t + j (what it predicts for t + j + 1: self-distillation,
so the heads learn what verification accepts), or with ``distill`` off the corpus token at t + 1 + j
(Medusa-1's labels). Head j's loss is weighted 0.8^j, as in the paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.decoding.medusa import MedusaHeads
from harness.training.train import FrozenBaseTrainee, masked_mean

HEAD_DECAY = 0.8


class MedusaTrainee(FrozenBaseTrainee):
    """Medusa heads on the frozen base; ``forward(x, valid)`` returns the losses."""

    def __init__(self, base: nn.Module, heads: int, distill: bool = True, own_projections: bool = False):
        lm_head = base.get_output_embeddings()
        vocab = lm_head.weight.shape[0] if own_projections else 0
        drafter = MedusaHeads(base.config.hidden_size, heads, vocab).start_from(lm_head)
        super().__init__(base, drafter.to(lm_head.weight.device), distill)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> dict:
        x, hidden = self.read(x)
        lm_head = self.base.get_output_embeddings()
        with torch.no_grad():
            teacher = lm_head(hidden).float().log_softmax(-1) if self.distill else None
        losses, total = {}, 0.0
        for j, state in enumerate(self.drafter(hidden), start=1):
            span = x.shape[1] - j - (0 if self.distill else 1)  # positions whose target is in the window
            logits = self.drafter.project(j - 1, state[:, :span], lm_head).float()
            mask = valid[:, : logits.shape[1]] if valid is not None else None
            if self.distill:  # the base's distribution at t + j
                target = teacher[:, j : j + logits.shape[1]]
                per_position = -(target.exp() * logits.log_softmax(-1)).sum(-1)
            else:  # the corpus token at t + 1 + j
                per_position = F.cross_entropy(
                    logits.transpose(1, 2), x[:, 1 + j : 1 + j + logits.shape[1]], reduction="none"
                )
            loss = masked_mean(per_position, mask)
            losses[f"head_{j}"] = loss
            total = total + HEAD_DECAY ** (j - 1) * loss
        return {"loss": total, **losses}
