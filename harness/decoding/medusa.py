"""``medusa``: Medusa-1 heads on a frozen base (Cai et al. 2024) on our engine.

Head j is a residual block ``h + SiLU(W_j h)`` read through a vocabulary projection: from the hidden
state at position t it predicts the token at t + 1 + j, where the base predicts t + 1. The projection is
the head's own, initialised from the base's LM head, as in the paper (``train --medusa-own-projections``:
hidden x vocabulary parameters more a head), or the base's frozen LM head shared by every head (hidden²
+ hidden a head, which matters at a 49k vocabulary). Zero-initialised blocks start as the base's
next-token prediction either way. The configuration says which.

Each loop is one pass of the loop shared with ``eagle`` (``features.feature_drafting_loop``): the
candidates are the top-ranked tokens of the heads read at the previous loop's accepted path's end,
whose hidden state predicts past the bonus token (a chain of top-1 tokens for greedy decoding, the
SDSAT/Medusa tree shapes for sampling).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from harness.decoding.base import Generation, SamplingParams, StopCondition
from harness.decoding.features import drafting_trees, feature_drafting_loop, load_drafter, save_drafter, with_hidden
from harness.decoding.session import DecodeSession
from harness.errors import HarnessError
from harness.models import LoadedModel


class MedusaHeads(nn.Module):
    def __init__(self, hidden: int, heads: int, vocab: int = 0):
        """``vocab`` > 0: each head has a vocabulary projection of its own (the paper's heads); 0: the
        heads share the base's LM head."""
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(heads))
        for block in self.blocks:
            nn.init.zeros_(block.weight)
            nn.init.zeros_(block.bias)
        self.projections = nn.ModuleList(nn.Linear(hidden, vocab, bias=False) for _ in range(heads if vocab else 0))

    @property
    def count(self) -> int:
        return len(self.blocks)

    @property
    def own_projections(self) -> bool:
        return len(self.projections) > 0

    def start_from(self, lm_head: nn.Linear) -> MedusaHeads:
        """Each own projection starts as a copy of the base's LM head (training's first step)."""
        with torch.no_grad():
            for projection in self.projections:
                projection.weight.copy_(lm_head.weight)
        return self

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., hidden) -> (heads, ..., hidden): each head's state, before its vocabulary projection."""
        return torch.stack([hidden + nn.functional.silu(block(hidden)) for block in self.blocks])

    def project(self, head: int, state: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """Head ``head``'s (0-based) vocabulary logits of its ``state``."""
        return self.projections[head](state) if self.own_projections else lm_head(state)

    def logits(self, states: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """(depth, ..., vocab): the logits of the first ``depth`` heads' ``states`` (depth, ..., hidden)."""
        if not self.own_projections:
            return lm_head(states)  # one product for every head
        return torch.stack([self.project(j, state, lm_head) for j, state in enumerate(states)])

    def save(self, directory: Path, base: str) -> None:
        hidden = self.blocks[0].in_features
        vocab = self.projections[0].out_features if self.own_projections else 0
        config = {"kind": "medusa", "heads": self.count, "hidden": hidden, "vocab": vocab, "base": base}
        save_drafter(self, directory, config)


def load_heads(directory: str | Path, lm: LoadedModel) -> MedusaHeads:
    """Medusa heads saved by :meth:`MedusaHeads.save`, checked against ``lm``'s hidden size."""
    return load_drafter(
        directory, "medusa", lm, lambda config: MedusaHeads(config["hidden"], config["heads"], config.get("vocab", 0))
    )


class MedusaDecoder:
    name = "medusa"
    prompt_positions = 1  # the heads read the accepted path's last hidden state alone

    def __init__(self, lm: LoadedModel, heads: MedusaHeads, k: int, tree: str | None = None):
        if not 1 <= k <= heads.count:
            raise HarnessError(f"medusa: k={k} is beyond its {heads.count} heads (1 <= k <= {heads.count})")
        self.lm, self.heads, self.k = with_hidden(lm), heads, k
        self.trees = drafting_trees(tree, k)

    @property
    def configuration(self) -> str:
        projection = "each its own vocabulary projection" if self.heads.own_projections else "the base's LM head shared"
        return f"{self.lm.engine.description}; Medusa-1 heads ({self.heads.count}, {projection})"

    def block_sizes(self, greedy: bool) -> tuple[int, ...]:
        return (1, self.trees[greedy].size + 1)

    def generate(self, prompt_ids: Sequence[int], stop: StopCondition, sampling: SamplingParams) -> Generation:
        tree = self.trees[sampling.greedy]
        s = DecodeSession(self.lm, prompt_ids, stop, sampling, max_block=tree.size + 1)
        return feature_drafting_loop(s, tree, self)

    def begin(self, prompt_hidden: torch.Tensor | None, prompt_ids: list[int]) -> None:
        pass

    def propose(self, hidden: torch.Tensor, next_tokens: list[int], depth: int) -> torch.Tensor:
        """(depth, vocab) logits of the tokens 1..depth after the bonus token, from the heads."""
        with torch.no_grad():
            return self.heads.logits(self.heads(hidden[-1])[:depth], self.lm.model.model.get_output_embeddings())
