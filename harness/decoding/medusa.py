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

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from harness.decoding.base import Generation, SamplingParams, StopCondition
from harness.decoding.features import feature_drafting_loop, with_hidden
from harness.decoding.session import DecodeSession
from harness.decoding.trees import DraftTree
from harness.errors import HarnessError
from harness.models import LoadedModel

CONFIG = "drafter.json"
WEIGHTS = "drafter.safetensors"


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
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / WEIGHTS)
        hidden = self.blocks[0].in_features
        (directory / CONFIG).write_text(
            json.dumps({"kind": "medusa", "heads": self.count, "hidden": hidden, "base": base})
        )


def drafter_config(directory: str | Path, kind: str, lm: LoadedModel) -> tuple[Path, dict]:
    """A trained drafter's directory and ``drafter.json``, checked to be of ``kind`` and of ``lm``'s
    hidden size. ``directory`` is the drafter's own, or a training work directory that holds one per
    decoder (``W/medusa``, ``W/eagle``), so that one ``--drafter`` serves a run of both."""
    directory = Path(directory)
    if not (directory / CONFIG).exists() and (directory / kind / CONFIG).exists():
        directory = directory / kind
    try:
        config = json.loads((directory / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HarnessError(f"drafter {directory}: no readable {CONFIG} ({type(exc).__name__})") from None
    if config.get("kind") != kind:
        raise HarnessError(f"drafter {directory}: a '{config.get('kind')}' drafter, not a '{kind}' one")
    hidden = lm.model.config.hidden_size
    if config["hidden"] != hidden:
        raise HarnessError(
            f"drafter {directory}: a drafter of hidden size {config['hidden']}, model '{lm.name}' has {hidden}"
        )
    return directory, config


def drafting_trees(tree: str | None, k: int) -> dict[bool, DraftTree]:
    """The candidates' shape, greedy (a chain of k) or sampling (``--tree``, default SDSAT's)."""
    try:
        return {True: DraftTree.parse("chain", k), False: DraftTree.parse(tree, k)}
    except ValueError as exc:
        raise HarnessError(f"draft tree: {exc}") from None


def load_heads(directory: str | Path, lm: LoadedModel) -> MedusaHeads:
    """Medusa heads saved by :meth:`MedusaHeads.save`, checked against ``lm``'s hidden size."""
    directory, config = drafter_config(directory, "medusa", lm)
    heads = MedusaHeads(config["hidden"], config["heads"])
    heads.load_state_dict(load_file(directory / WEIGHTS))
    return heads.to(lm.device, lm.dtype).eval()


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
