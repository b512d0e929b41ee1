"""``sdsat-fused``: verify and draft in one forward pass per loop.

Each loop feeds one block: the pending token t0 and the current drafts (a chain for greedy decoding,
a tree of top-ranked candidates for sampling), followed by one *group* of k adaptive tokens per
possible end of the accepted path. The group anchored at node n attends to the cache, to n and its
ancestors, and causally to itself, with positions continuing after n; its adaptive tokens then
predict the tokens after the bonus token that follows n, exactly as the two-step decoder's draft pass
does for its t0. Verification is unchanged (the longest greedy prefix, or the exact/paper tree
walk); the group of the accepted path's last node has already drafted the next loop. The cache keeps
t0 and the accepted path only.

Which nodes get a group is the *group policy*: ``all`` nodes, or the top-1 chain's nodes at the
listed acceptance lengths (``0,1,2``): fewer groups make smaller blocks, and an accepted path that
ends without a group leaves the next loop without drafts (it then feeds t0 and one group only,
which is the two-step decoder's draft pass). The first loop's drafts come from a group appended to
the prompt in the prefill pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from harness.decoding.acceptance import ACCEPT_RULES
from harness.decoding.base import Generation, SamplingParams, StopCondition
from harness.decoding.sdsat import tree_tokens, walk_tree
from harness.decoding.session import DecodeSession
from harness.decoding.trees import DraftTree
from harness.errors import HarnessError
from harness.models import LoadedModel

ROOT_ONLY = DraftTree(())


@dataclass(frozen=True)
class Block:
    """Static layout of one loop's block for a tree shape and group policy."""

    tree: DraftTree
    anchors: tuple[int, ...]  # nodes that get a group, in block order
    offsets: torch.Tensor  # position of every block token relative to t0
    allowed: torch.Tensor  # (q, q) bool: who may attend to whom inside the block

    @classmethod
    def build(cls, tree: DraftTree, anchors: tuple[int, ...], k: int) -> Block:
        n = tree.size + 1
        q = n + len(anchors) * k
        allowed = torch.zeros(q, q, dtype=torch.bool)
        allowed[:n, :n] = tree.ancestor_mask
        offsets = [*tree.node_depth.tolist()]
        causal = torch.tril(torch.ones(k, k, dtype=torch.bool))
        for g, node in enumerate(anchors):
            rows = slice(n + g * k, n + (g + 1) * k)
            allowed[rows, :n] = tree.ancestor_mask[node]
            allowed[rows, rows] = causal
            depth = int(tree.node_depth[node])
            offsets += [depth + i for i in range(1, k + 1)]
        return cls(tree, anchors, torch.tensor(offsets), allowed)

    def group_rows(self, node: int, k: int) -> slice | None:
        if node not in self.anchors:
            return None
        start = self.tree.size + 1 + self.anchors.index(node) * k
        return slice(start, start + k)


def chain_nodes(tree: DraftTree) -> dict[int, int]:
    """Depth -> node of the top-1 chain (every rank 0), where the tree has it."""
    nodes = {0: 0}
    node = 0
    while True:
        top = [c for c in tree.children[node] if tree.node_rank[c] == 0]
        if not top:
            return nodes
        node = top[0]
        nodes[int(tree.node_depth[node])] = node


def parse_groups(spec: str | None, tree: DraftTree) -> tuple[int, ...]:
    """Group policy -> anchor nodes: 'all' (default) or comma-separated acceptance lengths."""
    if spec in (None, "", "all"):
        return tuple(range(tree.size + 1))
    try:
        lengths = sorted({int(x) for x in spec.split(",")})
    except ValueError:
        raise HarnessError(f"--groups: expected 'all' or comma-separated acceptance lengths, got '{spec}'") from None
    if not lengths or lengths[0] < 0 or lengths[-1] > tree.depth:
        raise HarnessError(f"--groups: acceptance lengths must lie in 0..{tree.depth}, got '{spec}'")
    chain = chain_nodes(tree)
    return tuple(chain[d] for d in lengths if d in chain)


class FusedSdsatDecoder:
    name = "sdsat-fused"

    def __init__(
        self, lm: LoadedModel, k: int, accept: str = "exact", tree: str | None = None, groups: str | None = None
    ):
        if k < 1:
            raise HarnessError(f"sdsat-fused needs k >= 1, got {k}")
        if accept not in ACCEPT_RULES:
            raise HarnessError(f"--accept: expected one of {', '.join(ACCEPT_RULES)}, got '{accept}'")
        self.lm, self.k, self.accept = lm, k, accept
        self.adaptive_ids = lm.require_adaptive(k)
        try:
            sampling_tree = DraftTree.parse(tree, k)
        except ValueError as exc:
            raise HarnessError(f"draft tree: {exc}") from None
        if sampling_tree.depth > k:
            raise HarnessError(f"the draft tree has depth {sampling_tree.depth}, deeper than k={k}")
        chain = DraftTree.parse("chain", k)
        self.blocks = {  # greedy verifies a chain of top-1 drafts, sampling a tree
            True: Block.build(chain, parse_groups(groups, chain), k),
            False: Block.build(sampling_tree, parse_groups(groups, sampling_tree), k),
        }
        self.first = Block.build(ROOT_ONLY, (0,), k)  # no drafts: t0 and its group

    def block_sizes(self, greedy: bool) -> tuple[int, ...]:
        """Query lengths of the decode passes: the full block and the draft-less first block."""
        return (len(self.blocks[greedy].offsets), len(self.first.offsets))

    def generate(self, prompt_ids: Sequence[int], stop: StopCondition, sampling: SamplingParams) -> Generation:
        s = DecodeSession(self.lm, prompt_ids, stop, sampling, max_block=max(self.block_sizes(sampling.greedy)))
        draft_logits = s.prefill_with_group(self.adaptive_ids)
        with s.decoding() as t:
            s.emit([s.pending])  # the first new token came from the prefill pass
            s.record(drafted=0, accepted=0, emitted=1, forwards=0)
            self._loop(s, draft_logits)
        return s.result(t)

    def _loop(self, s: DecodeSession, draft_logits: torch.Tensor | None) -> None:
        full, k = self.blocks[s.sampling.greedy], self.k
        while not s.done:
            block = full if draft_logits is not None else self.first
            tree = block.tree
            tokens = tree_tokens(tree, s.pending, draft_logits)
            prefix = s.cache_length
            logits = s.forward(tokens + self.adaptive_ids * len(block.anchors), prefix + block.offsets, block.allowed)
            path, bonus = walk_tree(s, tree, tokens, logits[: tree.size + 1], self.accept)
            s.keep(prefix, [0, *path])  # t0 and the accepted path
            kept = s.emit([tokens[n] for n in path] + [bonus])
            s.pending = bonus
            s.record(drafted=tree.depth, accepted=min(len(path), kept), emitted=kept, forwards=1)
            rows = block.group_rows(path[-1] if path else 0, k)
            draft_logits = logits[rows] if rows is not None else None
