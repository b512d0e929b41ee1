from __future__ import annotations

from collections import Counter

import pytest
import torch

from harness.decoding.trees import OFFICIAL_TREES, DraftTree, default_tree

NODES_PER_DEPTH = {
    5: [4, 8, 8, 5, 3],
    7: [4, 8, 8, 6, 5, 3, 2],
    9: [4, 8, 8, 6, 6, 5, 4, 3, 2],
    11: [4, 8, 8, 8, 6, 6, 6, 5, 4, 3, 2],
    13: [4, 8, 8, 8, 8, 8, 6, 6, 6, 5, 4, 3, 2],
}


@pytest.mark.parametrize("k", sorted(OFFICIAL_TREES))
def test_official_tree_shapes(k):
    counts = Counter(len(p) for p in OFFICIAL_TREES[k])
    assert [counts[d] for d in range(1, k + 1)] == NODES_PER_DEPTH[k]
    assert len(set(OFFICIAL_TREES[k])) == len(OFFICIAL_TREES[k])


@pytest.mark.parametrize("k", range(1, 17))
def test_default_tree_for_every_k(k):
    tree = DraftTree.from_paths(default_tree(k))
    assert tree.depth == k
    assert tree.ancestor_mask.shape == (tree.size + 1, tree.size + 1)
    assert torch.all(tree.ancestor_mask[:, 0])  # everyone sees the root
    for leaf_path in tree.leaf_paths:
        assert [int(tree.node_depth[n]) for n in leaf_path] == list(range(1, len(leaf_path) + 1))


def test_parse_variants():
    assert DraftTree.parse("chain", 4).paths == ((0,), (0, 0), (0, 0, 0), (0, 0, 0, 0))
    assert DraftTree.parse("[[0],[1],[0,0]]", 2).size == 3
    with pytest.raises(ValueError):
        DraftTree.parse("[[0,0]]", 2)  # no parent


def test_children_are_ordered_by_rank():
    tree = DraftTree.parse(None, 5)
    for node, kids in enumerate(tree.children):
        assert [tree.node_rank[c] for c in kids] == sorted(tree.node_rank[c] for c in kids), node
