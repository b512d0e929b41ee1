"""CUDA graphs of a compiled decode step: one per block size, captured once, replayed with static inputs.

Why our own graphs rather than torch.compile's ``mode="reduce-overhead"`` (cudagraph trees): measured
on an H200 at a 7B shape (bf16), a 5.4 ms compiled pass held 4.1 ms of kernels, the rest outside them;
each call of the compiled function also evaluates dynamo's guards (every parameter and cache tensor)
and the trees' bookkeeping on the host, and a decoder syncs on every pass to read its token, so host
work before a pass never overlaps the previous one. A replay of a captured ``torch.cuda.CUDAGraph``
costs microseconds of host time; AR went from 184 tokens/s on a 5.4B-parameter shape (trees)
to 193 on the 6.5B one (own graphs; reports/scale/).

What makes a replay right: the graph reads the static cache's buffers and write pointers
(``cumulative_length``, advanced in place by the captured update), which stay at fixed addresses for the
cache's life, and its three inputs, which are copied into the graph's own buffers before each replay.
A new cache (a larger capacity) invalidates every graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    mask: torch.Tensor
    logits: torch.Tensor


class GraphedStep:
    """``step(input_ids=, position_ids=, past_key_values=, attention_mask=, ...)`` (a compiled model
    forward) replayed from CUDA graphs; call it with the KV cache, the block, its positions and mask."""

    def __init__(self, step: Callable):
        self.step = step
        self.pool = torch.cuda.graph_pool_handle()  # one pool: graphs never run at the same time
        self.graphs: dict[int, _Graph] = {}
        self.cache = None

    def __call__(self, cache, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The logits (1, q, vocab) of one pass; the buffer is overwritten by the next replay."""
        if cache.hf is not self.cache:
            self.graphs.clear()  # captured against another cache's buffers
            self.cache = cache.hf
        q = input_ids.shape[1]
        g = self.graphs.get(q)
        if g is None:
            g = self.graphs[q] = self._capture(cache, input_ids, position_ids, mask)
        g.input_ids.copy_(input_ids)
        g.position_ids.copy_(position_ids)
        g.mask.copy_(mask)
        g.graph.replay()
        return g.logits

    def _capture(self, cache, input_ids, position_ids, mask) -> _Graph:
        ids, positions, m = input_ids.clone(), position_ids.clone(), mask.clone()

        def run() -> torch.Tensor:
            return self.step(
                input_ids=ids, position_ids=positions, past_key_values=cache.hf, attention_mask=m, use_cache=True
            ).logits

        length = cache.length
        # Compile and warm up on a side stream (as capture requires); each of these passes advances the
        # write pointers, which are put back, and writes past the cache's length, which nothing reads.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                run()
                cache.set_length(length)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = run()
        cache.set_length(length)  # capture runs nothing; this only restates it
        return _Graph(graph, ids, positions, m, logits)
