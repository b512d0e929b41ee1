"""``medusa``: Medusa-1 heads on a frozen base (Cai et al. 2024) on our engine.

Head j is a residual block ``h + SiLU(W_j h)`` whose output goes through the base's own LM head: from
the hidden state at position t it predicts the token at t + 1 + j, where the base predicts t + 1. (The
paper's heads each have their own vocabulary projection, initialised from the LM head; sharing the
frozen LM head keeps a head to hidden² + hidden parameters, which matters at a 49k vocabulary, and
is recorded as this implementation's choice.) Zero-initialised blocks start as the base's next-token
prediction.

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
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(heads))
        for block in self.blocks:
            nn.init.zeros_(block.weight)
            nn.init.zeros_(block.bias)

    @property
    def count(self) -> int:
        return len(self.blocks)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., hidden) -> (heads, ..., hidden): each head's state, for the base's LM head."""
        return torch.stack([hidden + nn.functional.silu(block(hidden)) for block in self.blocks])

    def save(self, directory: Path, base: str) -> None:
        hidden = self.blocks[0].in_features
        save_drafter(self, directory, {"kind": "medusa", "heads": self.count, "hidden": hidden, "base": base})


def load_heads(directory: str | Path, lm: LoadedModel) -> MedusaHeads:
    """Medusa heads saved by :meth:`MedusaHeads.save`, checked against ``lm``'s hidden size."""
    return load_drafter(directory, "medusa", lm, lambda config: MedusaHeads(config["hidden"], config["heads"]))


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
        return f"{self.lm.engine.description}; Medusa-1 heads ({self.heads.count}, the base's LM head shared)"

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
            return self.lm.model.model.get_output_embeddings()(self.heads(hidden[-1])[:depth])
