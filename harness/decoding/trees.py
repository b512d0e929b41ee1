"""Draft-tree shapes and the buffers a tree verification pass needs.

A shape is a list of paths; path (r1, ..., rd) is the node at depth d reached by taking the r1-th
candidate of adaptive position 1, then the r2-th candidate of position 2, and so on (Medusa's
notation, also used by the official SDSAT code). Node 0 is the root: the token sampled exactly from
the standard token's distribution in the draft pass. Candidates at depth d are the top-ranked tokens
of adaptive position d, shared by every parent at depth d-1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

import torch

Path = tuple[int, ...]


def _level(depth: int, tails: list[Path]) -> list[Path]:
    """Nodes of one depth, written as variations at the end of the all-top-1 chain."""
    return [(0,) * (depth - len(t)) + t for t in tails]


# The first three levels are shared by every official tree.
_COMMON = [
    *[(0,), (1,), (2,), (3,)],
    *[(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0)],
    *[(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 1), (0, 2, 0), (0, 2, 1), (1, 0, 0)],
]
_T0 = [(0,), (1,)]
_T1 = [(0,), (1,), (2,)]
_T2 = [*_T1, (1, 0), (1, 1)]
_T3 = [*_T2, (2, 0)]
_T3b = [*_T3, (2, 1), (1, 0, 0)]


# The shapes shipped with the official SDSAT code for k = 5, 7, 9, 11, 13
# (nodes per depth: 4,8,8,5,3 / 4,8,8,6,5,3,2 / 4,8,8,6,6,5,4,3,2 / 4,8,8,8,6,6,6,5,4,3,2 / 4,8,8,8,8,8,6,6,6,5,4,3,2).
def _tree(*levels: list[Path]) -> list[Path]:
    return _COMMON + [node for depth, tails in enumerate(levels, start=4) for node in _level(depth, tails)]


OFFICIAL_TREES: dict[int, list[Path]] = {
    5: _tree(_T2, _T1),
    7: _tree(_T3, _T2, _T1, _T0),
    9: _tree(_T3, _T3, _T2, [*_T1, (1, 0)], _T1, _T0),
    11: _tree(_T3b, _T3, _T3, _T3, _T2, [*_T1, (1, 0)], _T1, _T0),
    13: _tree(_T3b, _T3b, _T3b, _T3, _T3, _T3, _T2, [*_T1, (1, 0)], _T1, _T0),
}


def default_tree(k: int) -> list[Path]:
    """The official tree of the smallest depth >= k, cut to depth k; beyond 13, the depth-13 tree
    extended by a chain of top-1 candidates. k = 1..4 thus get the first levels of the depth-5 tree."""
    if k < 1:
        raise ValueError("a draft tree needs k >= 1")
    depth = next((d for d in sorted(OFFICIAL_TREES) if d >= k), None)
    if depth is None:
        base = OFFICIAL_TREES[13]
        return base + [(0,) * d for d in range(14, k + 1)]
    return [p for p in OFFICIAL_TREES[depth] if len(p) <= k]


def chain(k: int) -> list[Path]:
    return [(0,) * d for d in range(1, k + 1)]


@dataclass(frozen=True)
class DraftTree:
    """Verification buffers for one shape. Node 0 is the root; nodes 1..n follow sorted paths."""

    paths: tuple[Path, ...]

    @classmethod
    def from_paths(cls, paths: list[Path] | list[list[int]]) -> DraftTree:
        normalised = sorted({tuple(p) for p in paths}, key=lambda p: (len(p), p))
        present = set(normalised)
        for p in normalised:
            if not p or min(p) < 0:
                raise ValueError(f"bad tree path {list(p)}")
            if len(p) > 1 and p[:-1] not in present:
                raise ValueError(f"tree path {list(p)} has no parent {list(p[:-1])}")
        return cls(tuple(normalised))

    @classmethod
    def parse(cls, text: str | None, k: int) -> DraftTree:
        """None/'default' -> default_tree(k); 'chain' -> one candidate per depth; else JSON paths."""
        if text in (None, "", "default"):
            return cls.from_paths(default_tree(k))
        if text == "chain":
            return cls.from_paths(chain(k))
        return cls.from_paths(json.loads(text))

    @property
    def size(self) -> int:
        """Number of draft nodes (the root excluded)."""
        return len(self.paths)

    @property
    def depth(self) -> int:
        return max((len(p) for p in self.paths), default=0)

    @cached_property
    def _index(self) -> dict[Path, int]:
        return {p: i + 1 for i, p in enumerate(self.paths)}

    @cached_property
    def parent(self) -> list[int]:
        return [-1] + [self._index.get(p[:-1], 0) for p in self.paths]

    @cached_property
    def node_depth(self) -> torch.Tensor:
        return torch.tensor([0] + [len(p) for p in self.paths], dtype=torch.long)

    @cached_property
    def node_rank(self) -> list[int]:
        """Which candidate (0 = top) of its depth's adaptive position a node takes."""
        return [-1] + [p[-1] for p in self.paths]

    @cached_property
    def children(self) -> list[list[int]]:
        kids: list[list[int]] = [[] for _ in range(self.size + 1)]
        for node in range(1, self.size + 1):
            kids[self.parent[node]].append(node)
        for k in kids:
            k.sort(key=lambda n: self.node_rank[n])
        return kids

    @cached_property
    def ancestor_mask(self) -> torch.Tensor:
        """(n+1, n+1) bool: node i may attend to node j iff j is i or an ancestor of i."""
        mask = torch.eye(self.size + 1, dtype=torch.bool)
        for node in range(1, self.size + 1):
            a = self.parent[node]
            while a >= 0:
                mask[node, a] = True
                a = self.parent[a]
        return mask

    @cached_property
    def leaf_paths(self) -> list[list[int]]:
        """Root-to-leaf node sequences (root excluded), in tree order."""
        leaves = [n for n in range(1, self.size + 1) if not self.children[n]]
        out = []
        for leaf in leaves:
            path, n = [], leaf
            while n > 0:
                path.append(n)
                n = self.parent[n]
            out.append(path[::-1])
        return out

    @cached_property
    def max_width(self) -> int:
        return max(self.node_rank[1:], default=-1) + 1
