"""CUDA graphs of a compiled decode step: one per block size, captured once, replayed with static inputs.

Why our own graphs rather than torch.compile's ``mode="reduce-overhead"`` (cudagraph trees): measured
on an H200 at a 7B shape (bf16), a 5.4 ms compiled pass held 4.1 ms of kernels, the rest outside them;
each call of the compiled function also evaluates dynamo's guards (every parameter and cache tensor)
and the trees' bookkeeping on the host, and a decoder syncs on every pass to read its token, so host
work before a pass never overlaps the previous one. A replay of a captured ``torch.cuda.CUDAGraph``
costs microseconds of host time; AR went from 184 tokens/s on a 5.4B-parameter shape (trees)
to 193 on the 6.5B one (own graphs; reports/scale/).

What makes a replay right: the graph reads the static cache's buffers and write pointers
(``cumulative_length``, advanced in place by the captured update, read by the captured mask), which
stay at fixed addresses for the cache's life, and its inputs, which are copied into the graph's own
buffers before each replay: the block's ids and positions every pass, its layout only when the
decoder passes another one. A new cache (a larger capacity) invalidates every graph.
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
    layout: torch.Tensor
    layout_source: torch.Tensor  # the layout tensor last copied in
    logits: torch.Tensor


class GraphedStep:
    """``step(model, cache, input_ids, position_ids, layout)`` (the compiled decode step) replayed from
    CUDA graphs; call it with the KV cache, the block, its positions and its layout."""

    def __init__(self, step: Callable, model: torch.nn.Module):
        self.step = step
        self.model = model
        self.pool = torch.cuda.graph_pool_handle()  # one pool: graphs never run at the same time
        self.graphs: dict[int, _Graph] = {}
        self.cache = None

    def __call__(
        self, cache, input_ids: torch.Tensor, position_ids: torch.Tensor, layout: torch.Tensor
    ) -> torch.Tensor:
        """The logits (1, q, vocab) of one pass; the buffer is overwritten by the next replay."""
        if cache is not self.cache:
            self.graphs.clear()  # captured against another cache's buffers
            self.cache = cache
        q = input_ids.shape[1]
        g = self.graphs.get(q)
        if g is None:
            g = self.graphs[q] = self._capture(cache, input_ids, position_ids, layout)
        g.input_ids.copy_(input_ids)
        g.position_ids.copy_(position_ids)
        if layout is not g.layout_source:
            g.layout.copy_(layout)
            g.layout_source = layout
        g.graph.replay()
        return g.logits

    def _capture(self, cache, input_ids, position_ids, layout) -> _Graph:
        ids, positions, lay = input_ids.clone(), position_ids.clone(), layout.clone()

        def run() -> torch.Tensor:
            return self.step(self.model, cache, ids, positions, lay)

        length = cache.length
        # Compile and warm up on a side stream (as capture requires); each of these passes advances the
        # write pointers, which are put back, and writes past the cache's length, which nothing reads.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                run()
                cache.move_pointers(length)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = run()
        cache.move_pointers(length)  # capture runs nothing; this only restates it
        return _Graph(graph, ids, positions, lay, layout, logits)
