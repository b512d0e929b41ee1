"""``sdsat``: the paper's two-step draft-then-verify loop.

Each loop spends two forward passes:
1. draft  -- over ``[t0, A_1..A_k]``: the standard token t0 yields the exact next token t1; adaptive
   token A_j yields a draft for the token j positions after t1. The adaptive tokens' cache entries
   are discarded at once.
2. verify -- over ``[t1, drafts]``: greedy decoding verifies a chain of top-1 drafts; sampling
   verifies a tree of top-ranked candidates under a tree attention mask. The cache keeps t1 and the
   accepted drafts; the bonus token after them becomes the next loop's t0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch

from harness.decoding.acceptance import (
    ACCEPT_RULES,
    exact_tree_walk,
    greedy_prefix,
    greedy_tree_walk,
    paper_tree_walk,
)
from harness.decoding.autoregressive import autoregressive_loop
from harness.decoding.base import Generation, SamplingParams, StopCondition
from harness.decoding.sampling import target_probs
from harness.decoding.session import DecodeSession
from harness.decoding.trees import DraftTree
from harness.errors import HarnessError
from harness.models import LoadedModel

Verifier = Callable[[DecodeSession, int, torch.Tensor], tuple[list[int], int]]


def draft(s: DecodeSession, adaptive_ids: list[int]) -> tuple[int, torch.Tensor]:
    """Draft pass: returns the exact next token t1 and the (k, vocab) logits of the adaptive tokens."""
    prefix = s.cache_length
    logits = s.forward([s.pending, *adaptive_ids])
    s.crop(prefix + 1)  # keep t0, drop the adaptive tokens
    return s.choose(logits[0]), logits[1:]


def verify_chain(s: DecodeSession, t1: int, draft_logits: torch.Tensor) -> tuple[list[int], int]:
    """Greedy verification of the top-1 drafts: longest matching prefix plus the bonus token."""
    drafts = torch.argmax(draft_logits, dim=-1).tolist()
    prefix = s.cache_length
    predictions = torch.argmax(s.forward([t1, *drafts]), dim=-1).tolist()
    m = greedy_prefix(drafts, predictions)
    s.crop(prefix + 1 + m)  # keep t1 and the accepted drafts
    return drafts[:m], predictions[m]


def verify_drafted_chain(s: DecodeSession, chain: DraftTree, drafts: list[int], padding: list[int]) -> int:
    """One pass over ``[pending, drafts, padding]`` (padding after the chain, which causal attention keeps
    from touching it): the greedy or exact walk of a chain of deterministic drafts, the cache cropped to
    pending and the accepted drafts, tokens emitted and the loop recorded. Returns the accepted count."""
    tokens = [s.pending, *drafts]
    prefix = s.cache_length
    logits = s.forward(tokens + padding)
    path, bonus = walk_tree(s, chain, tokens, logits[: len(tokens)], "exact")
    s.crop(prefix + 1 + len(path))  # a chain's path is its prefix
    kept = s.emit([*drafts[: len(path)], bonus])
    s.pending = bonus
    s.record(drafted=len(drafts), accepted=min(len(path), kept), emitted=kept, forwards=1)
    return len(path)


def tree_tokens(tree: DraftTree, root: int, draft_logits: torch.Tensor | None) -> list[int]:
    """The root token, then every node's candidate: the rank-r token of its depth's draft logits."""
    if tree.size == 0:
        return [root]
    top = torch.topk(draft_logits[: tree.depth], tree.max_width, dim=-1).indices.tolist()
    return [root] + [top[d - 1][r] for d, r in zip(tree.node_depth.tolist()[1:], tree.node_rank[1:], strict=True)]


def walk_tree(
    s: DecodeSession, tree: DraftTree, tokens: list[int], node_logits: torch.Tensor, rule: str
) -> tuple[list[int], int]:
    """The accepted nodes and the bonus token: greedy decoding follows the argmax; sampling walks the
    tree with the exact rule or the paper's."""
    if s.sampling.greedy:
        return greedy_tree_walk(tree, tokens, torch.argmax(node_logits, dim=-1).tolist())
    if rule == "exact":
        return exact_tree_walk(tree, tokens, partial(_target_probs_at, node_logits, s.sampling), s.generator)
    return paper_tree_walk(tree, tokens, target_probs(node_logits, s.sampling), s.generator)


def _target_probs_at(node_logits: torch.Tensor, sampling: SamplingParams, node: int) -> torch.Tensor:
    return target_probs(node_logits[node], sampling)


def verify_tree(
    s: DecodeSession, t1: int, draft_logits: torch.Tensor, tree: DraftTree, rule: str
) -> tuple[list[int], int]:
    """Sampling verification of a candidate tree in one pass (tree mask, tree position ids)."""
    tokens = tree_tokens(tree, t1, draft_logits)
    prefix = s.cache_length
    logits = s.forward(tokens, positions=prefix + tree.node_depth, allowed=tree.ancestor_mask)
    path, bonus = walk_tree(s, tree, tokens, logits, rule)
    s.keep(prefix, [0, *path])  # t1 and the accepted path
    return [tokens[n] for n in path], bonus


def two_step_loop(s: DecodeSession, adaptive_ids: list[int], verify: Verifier, drafted: int) -> None:
    while not s.done:
        t1, draft_logits = draft(s, adaptive_ids)
        s.emit([t1])
        if s.done:
            s.record(drafted=0, accepted=0, emitted=1, forwards=1)
            break
        accepted, bonus = verify(s, t1, draft_logits)
        kept = s.emit([*accepted, bonus])
        s.pending = bonus
        s.record(drafted=drafted, accepted=min(len(accepted), kept), emitted=1 + kept, forwards=2)


class SdsatDecoder:
    name = "sdsat"

    def __init__(self, lm: LoadedModel, k: int, accept: str = "exact", tree: str | None = None):
        if k < 0:
            raise HarnessError(f"k must be >= 0, got {k}")
        if accept not in ACCEPT_RULES:
            raise HarnessError(f"--accept: expected one of {', '.join(ACCEPT_RULES)}, got '{accept}'")
        self.lm = lm
        self.k = k
        self.accept = accept
        self.adaptive_ids = lm.require_adaptive(k) if k > 0 else []
        self.tree: DraftTree | None = None
        if k > 0:
            try:
                self.tree = DraftTree.parse(tree, k)
            except ValueError as exc:
                raise HarnessError(f"draft tree: {exc}") from None
            if self.tree.depth > k:
                raise HarnessError(f"the draft tree has depth {self.tree.depth}, deeper than k={k}")

    def block_sizes(self, greedy: bool) -> tuple[int, ...]:
        """Query lengths of the decode passes: the draft pass and the verify pass (chain or tree)."""
        if self.k == 0:
            return (1,)
        if greedy:
            return (self.k + 1,)
        return (self.tree.depth + 1, self.tree.size + 1)

    def generate(self, prompt_ids: Sequence[int], stop: StopCondition, sampling: SamplingParams) -> Generation:
        s = DecodeSession(self.lm, prompt_ids, stop, sampling, max_block=max(self.block_sizes(sampling.greedy)))
        s.prefill()
        with s.decoding() as t:
            if self.k == 0:
                autoregressive_loop(s)
            elif sampling.greedy:
                two_step_loop(s, self.adaptive_ids, verify_chain, drafted=self.k)
            else:
                verify = partial(verify_tree, tree=self.tree, rule=self.accept)
                two_step_loop(s, self.adaptive_ids[: self.tree.depth], verify, drafted=self.tree.depth)
        return s.result(t)
