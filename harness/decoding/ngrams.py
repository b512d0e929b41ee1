"""Drafts taken from text already seen, not from the model: an index of a sequence's n-grams (prompt
lookup), a pool of n-grams keyed by their first token (lookahead), and the token trie that verifies
several candidate continuations in one pass."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from harness.decoding.trees import DraftTree


class NgramIndex:
    """Where each n-gram (n = 1..max_n) of a growing sequence first ends. ``lookup`` finds the earliest
    earlier occurrence of the sequence's last n tokens, the longest n first, and returns the tokens that
    followed it: prompt lookup decoding's drafts (Saxena 2023), kept up to date in O(max_n) a token
    instead of a scan of the whole sequence a step."""

    def __init__(self, max_n: int):
        if max_n < 1:
            raise ValueError("an n-gram index needs max_n >= 1")
        self.max_n = max_n
        self.tokens: list[int] = []
        self._first_end: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_n + 1)]

    def extend(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            self.tokens.append(int(t))
            end = len(self.tokens)
            for n in range(1, min(self.max_n, end) + 1):
                self._first_end[n].setdefault(tuple(self.tokens[end - n :]), end)

    def lookup(self, length: int) -> list[int]:
        """Up to ``length`` tokens that followed the earliest earlier occurrence of the sequence's last
        n tokens, for the largest n that has one; [] where none has."""
        end = len(self.tokens)
        for n in range(min(self.max_n, end), 0, -1):
            first = self._first_end[n].get(tuple(self.tokens[end - n :]))
            if first is not None and first < end:
                return self.tokens[first : first + length]
        return []


class NgramPool:
    """Candidate continuations keyed by the token they follow: for each key, at most ``per_key``
    distinct continuations, the most recently added first (lookahead decoding's n-gram pool)."""

    def __init__(self, per_key: int):
        self.per_key = per_key
        self._pool: dict[int, OrderedDict[tuple[int, ...], None]] = {}

    def add(self, ngram: Sequence[int]) -> None:
        """Add an n-gram: its first token is the key, the rest a candidate continuation."""
        key, rest = int(ngram[0]), tuple(int(t) for t in ngram[1:])
        entries = self._pool.setdefault(key, OrderedDict())
        entries.pop(rest, None)
        entries[rest] = None
        while len(entries) > self.per_key:
            entries.popitem(last=False)

    def add_all(self, tokens: Sequence[int], n: int) -> None:
        """Every n-gram of ``tokens``."""
        for start in range(len(tokens) - n + 1):
            self.add(tokens[start : start + n])

    def candidates(self, key: int) -> list[tuple[int, ...]]:
        return list(reversed(self._pool.get(int(key), ())))


def token_trie(candidates: Sequence[Sequence[int]]) -> tuple[DraftTree, list[int]]:
    """Candidate continuations merged into one draft tree (shared prefixes verified once, siblings
    distinct, earlier candidates' tokens ranked first) and the token of each tree node, the root's
    (node 0) left to the caller as -1."""
    children: dict[tuple[int, ...], list[int]] = {}  # trie node (its token path) -> child tokens in order
    for candidate in candidates:
        for depth in range(len(candidate)):
            kids = children.setdefault(tuple(candidate[:depth]), [])
            if candidate[depth] not in kids:
                kids.append(candidate[depth])
    token_of: dict[tuple[int, ...], int] = {}  # DraftTree path (child ranks) -> token
    stack: list[tuple[tuple[int, ...], tuple[int, ...]]] = [((), ())]  # (token path, rank path)
    while stack:
        tokens, ranks = stack.pop()
        for rank, token in enumerate(children.get(tokens, ())):
            token_of[(*ranks, rank)] = token
            stack.append(((*tokens, token), (*ranks, rank)))
    tree = DraftTree.from_paths(list(token_of))
    return tree, [-1, *(token_of[p] for p in tree.paths)]
