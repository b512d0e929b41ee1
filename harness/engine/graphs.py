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

Each block size is captured twice, its matrix products once through cuBLAS and once through
cuBLASLt (torch's two GEMM front ends pick different kernels for the same shape), and the graph whose
replays are faster is kept. Measured on an H200 at a 7B shape (bf16, the seven projections of 32
layers): cuBLAS 4.10 / 4.54 / 4.15 ms at 1 / 36 / 64 rows, cuBLASLt 4.27 / 4.05 / 4.00: neither is
the faster at every block size. With the choice, a 36-token pass at that shape cost what a 1-token one
does (5.38 / 5.40 ms; reports/scale/7b-compile) and the 13B shape kept cuBLAS for 1 token only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from harness.device import median_ms

BLAS_LIBRARIES = ("cublas", "cublaslt")
TIMED_REPLAYS = 5  # per candidate graph, after one untimed replay


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    layout: torch.Tensor
    layout_source: torch.Tensor  # the layout tensor last copied in
    logits: torch.Tensor
    blas: str  # the matrix library its products were captured with


class GraphedStep:
    """``step(model, cache, input_ids, position_ids, layout)`` (the compiled decode step) replayed from
    CUDA graphs; call it with the KV cache, the block, its positions and its layout."""

    def __init__(self, step: Callable, model: torch.nn.Module):
        self.step = step
        self.model = model
        self.pool = torch.cuda.graph_pool_handle()  # one pool: graphs never run at the same time
        self.graphs: dict[int, _Graph] = {}
        self.cache = None

    @property
    def blas(self) -> dict[int, str]:
        """The matrix library each block size's graph runs on."""
        return {q: g.blas for q, g in sorted(self.graphs.items())}

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
        # Compile and warm up on a side stream (as capture requires), under each library; each of these
        # passes advances the write pointers, which are put back, and writes past the cache's length,
        # which nothing reads.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for library in BLAS_LIBRARIES:
                with blas_library(library):
                    for _ in range(2):
                        run()
                        cache.move_pointers(length)
        torch.cuda.current_stream().wait_stream(side)
        candidates = []
        for library in BLAS_LIBRARIES:
            graph = torch.cuda.CUDAGraph()
            with blas_library(library), torch.cuda.graph(graph, pool=self.pool):
                logits = run()
            cache.move_pointers(length)  # capture runs nothing; this only restates it
            candidates.append(_Graph(graph, ids, positions, lay, layout, logits, library))
        return min(candidates, key=lambda g: _replay_ms(g.graph, cache, length))


def _replay_ms(graph: torch.cuda.CUDAGraph, cache, length: int) -> float:
    """Median milliseconds of a replay (each one's write-pointer advance put back), after one untimed."""

    def replay() -> None:
        graph.replay()
        cache.move_pointers(length)

    replay()
    return median_ms(torch.device("cuda"), replay, TIMED_REPLAYS)


@contextlib.contextmanager
def blas_library(name: str) -> Iterator[None]:
    """torch's GEMM front end set to ``name`` inside the block, the previous one restored after."""
    previous = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library(name)
    try:
        yield
    finally:
        torch.backends.cuda.preferred_blas_library(previous)
