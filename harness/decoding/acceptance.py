"""Acceptance rules: which drafted tokens a verification pass keeps, and the bonus token after them.

- greedy: the longest prefix of drafts equal to the model's own argmax predictions (lossless).
- exact: recursive rejection sampling over the sibling candidates of each tree node. Candidates are
  deterministic (top-ranked tokens), so candidate c is accepted with probability p(c) under the
  current residual distribution; on rejection p(c) is set to 0 and the rest renormalised; when all
  siblings are rejected the bonus token is drawn from the residual. Every emitted token is then
  distributed exactly as plain sampling from the target distribution.
- paper: the official SDSAT code's rule: every root-to-leaf path draws its own target sample at each
  of its positions, a node is accepted when its token equals that path's sample, and the longest
  accepted path wins. A node shared by many paths gets many chances, so the output is biased
  towards the drafts: faster, not distribution-preserving.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from harness.decoding.sampling import draw, uniform
from harness.decoding.trees import DraftTree

ACCEPT_RULES = ("exact", "paper")


def greedy_prefix(drafts: Sequence[int], predictions: Sequence[int]) -> int:
    """Number of leading drafts that equal the model's greedy predictions at the same positions."""
    n = 0
    for d, p in zip(drafts, predictions, strict=False):
        if d != p:
            break
        n += 1
    return n


def greedy_tree_walk(tree: DraftTree, node_tokens: Sequence[int], predictions: Sequence[int]) -> tuple[list[int], int]:
    """Greedy verification of any tree: follow the child that equals the model's prediction."""
    path, node = [], 0
    while True:
        match = [c for c in tree.children[node] if node_tokens[c] == predictions[node]]
        if not match:
            return path, predictions[node]
        node = match[0]
        path.append(node)


def exact_tree_walk(
    tree: DraftTree,
    node_tokens: Sequence[int],
    probs_at: Callable[[int], torch.Tensor],
    generator: torch.Generator,
) -> tuple[list[int], int]:
    """Walk down from the root; returns (accepted nodes in order, bonus token).
    ``probs_at(node)`` is the target distribution of the token after ``node``."""
    path: list[int] = []
    node = 0
    while True:
        residual = probs_at(node).clone()
        for child in tree.children[node]:
            token = node_tokens[child]
            mass = float(residual.sum())
            if mass > 0 and uniform(generator) * mass < float(residual[token]):
                path.append(child)
                node = child
                break
            residual[token] = 0.0
        else:
            return path, draw(residual, generator)


def paper_tree_walk(
    tree: DraftTree,
    node_tokens: Sequence[int],
    probs: torch.Tensor,
    generator: torch.Generator,
) -> tuple[list[int], int]:
    """The official rule (see module doc). ``probs``: (n+1, vocab) target distributions per node."""
    best: list[int] = []
    for row in tree.leaf_paths:
        accepted: list[int] = []
        for node in row:
            if draw(probs[tree.parent[node]], generator) != node_tokens[node]:
                break
            accepted.append(node)
        if len(accepted) > len(best):
            best = accepted
    last = best[-1] if best else 0
    return best, draw(probs[last], generator)
