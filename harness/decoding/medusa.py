"""``medusa``: Medusa-1 heads on a frozen base (Cai et al. 2024) on our engine.

Head j is a residual block ``h + SiLU(W_j h)`` whose output goes through the base's own LM head: from
the hidden state at position t it predicts the token at t + 1 + j, where the base predicts t + 1. (The
paper's heads each have their own vocabulary projection, initialised from the LM head; sharing the
frozen LM head keeps a head to hidden² + hidden parameters, which matters at a 49k vocabulary, and
is recorded as this implementation's choice.) Zero-initialised blocks start as the base's next-token
prediction.

Each loop is one pass, as ``sdsat-fused``'s: ``[pending, candidates]`` under a tree mask, the candidates
being the top-ranked tokens of the heads at the previous loop's accepted position (a chain of top-1
tokens for greedy decoding, the SDSAT/Medusa tree shapes for sampling); verification as the other
drafters' (greedy walk, or the exact walk when sampling). The heads then read the hidden state at the
accepted path's end, which predicts past the bonus token. The first loop, with no heads read yet,
feeds the pending token alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from harness.decoding.base import Generation, SamplingParams, StopCondition
from harness.decoding.features import vocabulary, with_hidden
from harness.decoding.fused import ROOT_ONLY
from harness.decoding.sdsat import tree_tokens, walk_tree
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


def load_heads(directory: str | Path, lm: LoadedModel) -> MedusaHeads:
    """Medusa heads saved by :meth:`MedusaHeads.save`, checked against ``lm``'s hidden size."""
    directory = Path(directory)
    try:
        config = json.loads((directory / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HarnessError(f"drafter {directory}: no readable {CONFIG} ({type(exc).__name__})") from None
    if config.get("kind") != "medusa":
        raise HarnessError(f"drafter {directory}: a '{config.get('kind')}' drafter, not Medusa heads")
    hidden = lm.model.config.hidden_size
    if config["hidden"] != hidden:
        raise HarnessError(
            f"drafter {directory}: heads of hidden size {config['hidden']}, model '{lm.name}' has {hidden}"
        )
    heads = MedusaHeads(hidden, config["heads"])
    heads.load_state_dict(load_file(directory / WEIGHTS))
    return heads.to(lm.device, lm.dtype).eval()


class MedusaDecoder:
    name = "medusa"

    def __init__(self, lm: LoadedModel, heads: MedusaHeads, k: int, tree: str | None = None):
        if not 1 <= k <= heads.count:
            raise HarnessError(f"medusa: k={k} is beyond its {heads.count} heads (1 <= k <= {heads.count})")
        try:
            sampling_tree = DraftTree.parse(tree, k)
        except ValueError as exc:
            raise HarnessError(f"draft tree: {exc}") from None
        self.lm, self.heads, self.k = with_hidden(lm), heads, k
        self.vocab = vocabulary(lm)
        self.trees = {True: DraftTree.parse("chain", k), False: sampling_tree}

    @property
    def configuration(self) -> str:
        return f"{self.lm.engine.description}; Medusa-1 heads ({self.heads.count}, the base's LM head shared)"

    def block_sizes(self, greedy: bool) -> tuple[int, ...]:
        return (1, self.trees[greedy].size + 1)

    def generate(self, prompt_ids: Sequence[int], stop: StopCondition, sampling: SamplingParams) -> Generation:
        tree = self.trees[sampling.greedy]
        s = DecodeSession(self.lm, prompt_ids, stop, sampling, max_block=tree.size + 1)
        s.prefill()
        draft_logits: torch.Tensor | None = None
        with s.decoding() as t:
            while not s.done:
                block = tree if draft_logits is not None else ROOT_ONLY
                tokens = tree_tokens(block, s.pending, draft_logits)
                prefix = s.cache_length
                out = s.forward(tokens, prefix + block.node_depth, block.ancestor_mask)
                logits, hidden = out[:, : self.vocab], out[:, self.vocab :]
                path, bonus = walk_tree(s, block, tokens, logits, "exact")
                s.keep(prefix, [0, *path])
                kept = s.emit([tokens[n] for n in path] + [bonus])
                s.pending = bonus
                s.record(drafted=block.depth, accepted=min(len(path), kept), emitted=kept, forwards=1)
                draft_logits = self._draft(hidden[path[-1] if path else 0])
        return s.result(t)

    def _draft(self, hidden: torch.Tensor) -> torch.Tensor:
        """(k, vocab) logits of the tokens 1..k after the bonus token, from the heads."""
        with torch.no_grad():
            return self.lm.model.model.get_output_embeddings()(self.heads(hidden)[: self.k])
