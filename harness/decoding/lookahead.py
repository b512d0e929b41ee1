"""``lookahead``: lookahead decoding (Fu et al. 2024, "Break the Sequential Dependency of LLM Inference
Using Lookahead Decoding"; the ``lade`` package) on our engine, with k = N - 1 (an n-gram's draft length).

Each loop is one pass over one block (the paper's Figure 5 mask):
- the pending token;
- the *lookahead branch*: a window of W future positions, N - 1 levels deep, each level one earlier
  Jacobi iteration. Level l's column c sits c + 1 + l positions after the pending token and sees the
  pending token, level 0's columns 0..c and its own column's levels 1..l: one causal sequence along
  each diagonal of the trajectory. The top level's predictions are the next Jacobi iteration;
- the *verification branch*: up to G candidate continuations of the pending token from the n-gram
  pool, merged into a token trie, each node seeing the pending token and its ancestors.
Verification is the same as for the other drafters (the greedy walk, or the exact one when sampling);
the cache keeps the pending token and the accepted path. Then every column's diagonal plus its new
prediction is an N-gram for the pool (once the window holds N - 1 iterations), the levels move down
one, and the new predictions become the top level: as ``lade`` does by default (``ALWAYS_FWD_ONE``),
the window moves one position a loop whatever was accepted. The pool also holds the prompt's N-grams
and those of the completion so far (``lade``'s ``POOL_FROM_PROMPT``, off there by default: on here,
where code repeats its prompt). Where ``lade`` verifies its G candidates side by side, they are merged
into one trie here (a shared prefix verified once; the greedy result is the same or longer).
Unused verification slots are padding that sees only the pending token and itself, so that every pass
has the same shape for a compiled step. The window starts with prompt tokens drawn by a fixed seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from harness.config import LOOKAHEAD_GUESSES, LOOKAHEAD_WINDOW
from harness.decoding.base import Generation, SamplingParams, StopCondition
from harness.decoding.ngrams import NgramPool, token_trie
from harness.decoding.sdsat import walk_tree
from harness.decoding.session import DecodeSession
from harness.errors import HarnessError
from harness.models import LoadedModel


@dataclass(frozen=True)
class LookaheadBlock:
    """The static part of a loop's block for window W, k = N - 1 levels and G guesses."""

    window: int
    levels: int
    guesses: int
    offsets: torch.Tensor  # position of every block token relative to the pending token
    allowed: torch.Tensor  # (q, q) bool; verification rows see only the pending token and themselves

    @classmethod
    def build(cls, window: int, levels: int, guesses: int) -> LookaheadBlock:
        branch = 1 + levels * window
        q = branch + guesses * levels
        allowed = torch.eye(q, dtype=torch.bool)
        allowed[:, 0] = True
        offsets = torch.ones(q, dtype=torch.long)
        offsets[0] = 0
        for level in range(levels):
            for column in range(window):
                row = 1 + level * window + column
                offsets[row] = column + 1 + level
                allowed[row, 1 : 2 + column] = True  # level 0's columns 0..c
                allowed[row, [1 + lv * window + column for lv in range(level + 1)]] = True  # this column's levels
        return cls(window, levels, guesses, offsets, allowed)

    @property
    def branch(self) -> int:
        """Where the verification branch starts."""
        return 1 + self.levels * self.window

    @property
    def size(self) -> int:
        return len(self.offsets)

    def top_rows(self) -> list[int]:
        return [1 + (self.levels - 1) * self.window + c for c in range(self.window)]


class LookaheadDecoder:
    name = "lookahead"

    def __init__(self, lm: LoadedModel, k: int, window: int = LOOKAHEAD_WINDOW, guesses: int = LOOKAHEAD_GUESSES):
        if k < 1:
            raise HarnessError(f"lookahead needs k >= 1 (n-grams of k + 1 tokens), got {k}")
        if window < 1 or guesses < 1:
            raise HarnessError(f"lookahead needs a window and guesses of at least 1, got W={window} G={guesses}")
        self.lm, self.k = lm, k
        self.block = LookaheadBlock.build(window, k, guesses)

    @property
    def configuration(self) -> str:
        b = self.block
        return f"{self.lm.engine.description}; lookahead W={b.window} N={b.levels + 1} G={b.guesses}, pool from prompt"

    def block_sizes(self, greedy: bool) -> tuple[int, ...]:
        return (self.block.size,)

    def generate(self, prompt_ids: Sequence[int], stop: StopCondition, sampling: SamplingParams) -> Generation:
        b = self.block
        s = DecodeSession(self.lm, prompt_ids, stop, sampling, max_block=b.size)
        s.prefill()
        n = b.levels + 1
        pool = NgramPool(b.guesses)
        pool.add_all(s.prompt_ids, n)
        draw = random.Random(0)
        levels = [[draw.choice(s.prompt_ids) for _ in range(b.window)] for _ in range(b.levels)]
        iterations = 0  # Jacobi iterations the window holds (its starting guesses are none)
        with s.decoding() as t:
            while not s.done:
                before = len(s.sink.tokens)
                top = self._loop(s, pool, levels)
                if iterations >= b.levels - 1:  # every level is an iteration: the diagonals are n-grams
                    for column in range(b.window):
                        pool.add([*(level[column] for level in levels), top[column]])
                levels = [*levels[1:], top]
                iterations += 1
                emitted = s.prompt_ids + s.sink.tokens
                pool.add_all(emitted[max(0, len(s.prompt_ids) + before - n + 1) :], n)
        return s.result(t)

    def _loop(self, s: DecodeSession, pool: NgramPool, levels: list[list[int]]) -> list[int]:
        """One pass: verify the pool's candidates, advance the window; returns the new top level."""
        b = self.block
        tree, trie_tokens = token_trie(pool.candidates(s.pending)[: b.guesses])
        nodes = tree.size
        tokens = [s.pending, *(t for level in levels for t in level), *trie_tokens[1:]]
        tokens += [s.pending] * (b.size - len(tokens))
        offsets, allowed = b.offsets.clone(), b.allowed.clone()
        rows = slice(b.branch, b.branch + nodes)
        offsets[rows] = tree.node_depth[1:]
        allowed[rows, rows] = tree.ancestor_mask[1:, 1:]
        prefix = s.cache_length
        device = self.lm.device
        logits = s.forward(tokens, (prefix + offsets).to(device), allowed.to(device))
        node_rows = [0, *range(b.branch, b.branch + nodes)]
        path, bonus = walk_tree(s, tree, [s.pending, *trie_tokens[1:]], logits[node_rows], "exact")
        s.keep(prefix, [0, *(b.branch + node - 1 for node in path)])
        kept = s.emit([trie_tokens[node] for node in path] + [bonus])
        s.pending = bonus
        s.record(drafted=tree.depth, accepted=min(len(path), kept), emitted=kept, forwards=1)
        return torch.argmax(logits[b.top_rows()], dim=-1).tolist()
