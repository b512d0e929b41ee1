"""Drafts from text: the n-gram index of prompt lookup, lookahead's pool and block, and the token trie."""

from __future__ import annotations

import pytest
import torch

from harness.decoding.lookahead import LookaheadBlock
from harness.decoding.ngrams import NgramIndex, NgramPool, token_trie
from harness.decoding.trees import DraftTree


def scan_lookup(tokens: list[int], max_n: int, length: int) -> list[int]:
    """The definition, by a scan: the earliest earlier occurrence of the last n tokens, longest n first."""
    for n in range(min(max_n, len(tokens)), 0, -1):
        tail = tokens[-n:]
        for start in range(len(tokens) - n):
            if tokens[start : start + n] == tail:
                return tokens[start + n : start + n + length]
    return []


def test_index_finds_what_a_scan_finds_as_the_sequence_grows():
    g = torch.Generator().manual_seed(0)
    for vocab in (2, 3, 8):
        tokens = torch.randint(vocab, (120,), generator=g).tolist()
        index = NgramIndex(3)
        for end in range(1, len(tokens) + 1):
            index.extend(tokens[end - 1 : end])
            assert index.lookup(4) == scan_lookup(tokens[:end], 3, 4), (vocab, end)


def test_index_prefers_the_longest_match_and_finds_none_in_new_text():
    index = NgramIndex(3)
    index.extend([5, 1, 2, 9, 9, 7, 1, 2])  # "1 2" occurred once before; "7 1 2" never
    assert index.lookup(3) == [9, 9, 7]
    index.extend([3])
    assert index.lookup(3) == []
    with pytest.raises(ValueError):
        NgramIndex(0)


def test_pool_keeps_the_most_recent_distinct_continuations():
    pool = NgramPool(per_key=2)
    for ngram in ([1, 2, 3], [1, 4, 5], [1, 2, 3], [1, 6, 7], [2, 1, 1]):
        pool.add(ngram)
    assert pool.candidates(1) == [(6, 7), (2, 3)]  # (4, 5) fell out; (2, 3) was refreshed
    assert pool.candidates(2) == [(1, 1)]
    assert pool.candidates(9) == []
    pool.add_all([3, 4, 3, 4], 2)
    assert pool.candidates(3) == [(4,)] and pool.candidates(4) == [(3,)]


def test_trie_merges_shared_prefixes_and_ranks_earlier_candidates_first():
    tree, tokens = token_trie([(7, 8, 9), (7, 8, 4), (5, 6, 6)])
    assert tree.size == 7 and tree.depth == 3
    paths = {tuple(tokens[n] for n in path) for path in tree.leaf_paths}
    assert paths == {(7, 8, 9), (7, 8, 4), (5, 6, 6)}
    assert [tokens[c] for c in tree.children[0]] == [7, 5]
    assert tokens[0] == -1
    empty, only_root = token_trie([])
    assert empty == DraftTree(()) and only_root == [-1]


def test_lookahead_block_follows_the_papers_mask():
    """W=3, N=4 (k=3), G=2: level l's column c sits c+1+l after the pending token and sees the pending
    token, level 0's columns 0..c and its own column's lower levels; verification slots see the pending
    token and themselves until a trie fills them."""
    b = LookaheadBlock.build(window=3, levels=3, guesses=2)
    assert b.size == 1 + 3 * 3 + 2 * 3 and b.branch == 10

    def row(level: int, column: int) -> int:
        return 1 + level * 3 + column

    assert b.offsets[row(2, 1)] == 1 + 1 + 2
    seen = set(torch.nonzero(b.allowed[row(2, 1)]).flatten().tolist())
    assert seen == {0, row(0, 0), row(0, 1), row(1, 1), row(2, 1)}
    assert set(torch.nonzero(b.allowed[row(0, 2)]).flatten().tolist()) == {0, row(0, 0), row(0, 1), row(0, 2)}
    assert set(torch.nonzero(b.allowed[b.branch + 4]).flatten().tolist()) == {0, b.branch + 4}
    # along each seen set, positions are consecutive: one causal sequence per diagonal
    for r in range(1, b.branch):
        positions = sorted(b.offsets[torch.nonzero(b.allowed[r]).flatten()].tolist())
        assert positions == list(range(positions[-1] + 1)), r
    assert b.top_rows() == [row(2, c) for c in range(3)]
