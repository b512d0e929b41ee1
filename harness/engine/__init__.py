"""The engine room: what runs a decoder's forward passes, apart from what the decoders decide.

- ``cache``: the KV cache (dynamic or static) and how it is cropped after verification;
- ``masks``: a pass's additive attention mask;
- ``decode_engine``: :class:`DecodeEngine` (eager, static or compiled) and the compiled decode step;
- ``graphs``: the CUDA graphs a compiled step is replayed from.

It is the one place that knows transformers' cache, mask and position conventions (``cache``'s
docstring lists them). Decoders reach it through ``DecodeSession.forward``
(:mod:`harness.decoding.session`) and a model's ``engine``; device clocks, memory and timers live in
:mod:`harness.device`.
"""

from harness.engine.cache import CAPACITY_STEP, KVCache, static_capacity
from harness.engine.decode_engine import ENGINES, DecodeEngine, attention_kernels, decode_step
from harness.engine.masks import additive_mask

__all__ = [
    "CAPACITY_STEP",
    "ENGINES",
    "DecodeEngine",
    "KVCache",
    "additive_mask",
    "attention_kernels",
    "decode_step",
    "static_capacity",
]
