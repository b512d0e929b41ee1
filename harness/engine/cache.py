"""The KV cache our decoders write: a transformers cache plus its length, kept on the host.

Tested against transformers 5.17 (the GPU image) and 5.23 (the CPU machine). Conventions relied on:
- ``DynamicCache(config=...)`` holds one layer object per decoder layer with ``keys``/``values``
  tensors shaped (batch, kv_heads, seq, head_dim).
- ``Cache.crop`` takes a *negative* number of tokens to remove in every 5.x release we support
  (a positive value meant "final length" until 5.17 and raises from 5.18 on), so we never pass one.
- A 4D mask passed as ``attention_mask`` is used as-is. It must be *additive float* (0 = attend,
  dtype-min = masked): a bool mask is silently misread by eager attention. sdpa accepts both.
- Position ids are passed explicitly; ``cache_position`` is no longer a Llama forward argument.
- ``StaticCache(config=..., max_cache_len=...)`` layers allocate on their first update, write at
  their ``cumulative_length`` tensor (advanced in place by every update) and return the whole
  buffer, so attention spans the capacity and the mask must hide what lies past the pointer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache, PreTrainedModel, StaticCache

CAPACITY_STEP = 512  # a static cache grows in these steps (every growth recompiles the decode step)


def static_capacity(needed: int) -> int:
    """The static cache length that holds ``needed`` positions: whole CAPACITY_STEPs."""
    return -(-needed // CAPACITY_STEP) * CAPACITY_STEP


class KVCache:
    """A transformers cache plus its length, kept on the host: reading a static cache's length would
    wait for the device, and every decoder knows how many positions it wrote and kept.

    ``capacity`` is None for a ``DynamicCache`` (it grows and shrinks with the sequence) and the
    pre-allocated length of a ``StaticCache``, whose write pointer (``cumulative_length`` per layer)
    we move back on a crop; positions past it hold stale entries that every mask hides."""

    def __init__(self, cache: DynamicCache | StaticCache, capacity: int | None):
        self.hf = cache
        self.capacity = capacity
        self.length = 0
        self._pointers: torch.Tensor | None = None  # a static cache's write pointers, one per layer
        self.columns: torch.Tensor | None = None  # a static cache's position indices 0..capacity-1

    @classmethod
    def allocate_static(cls, model: PreTrainedModel, capacity: int) -> KVCache:
        """A ``StaticCache`` whose layers are allocated now, so that every write pointer exists, on the
        model's device, before anything is compiled or captured against it."""
        config = model.config
        cache = cls(StaticCache(config=config, max_cache_len=capacity), capacity)
        device = next(model.parameters()).device
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        cache.hf.early_initialization(1, heads, head_dim, model.dtype, device)
        # Every layer's write pointer becomes one element of one tensor (each update advances its own
        # element in place), so that moving them all after a crop is one kernel launch, not one per layer.
        cache._pointers = torch.zeros(len(cache.hf.layers), dtype=torch.long, device=device)
        for i, layer in enumerate(cache.hf.layers):
            layer.cumulative_length = cache._pointers[i]
        cache.columns = torch.arange(capacity, device=device)
        return cache

    @property
    def static(self) -> bool:
        return self.capacity is not None

    @property
    def write_pointer(self) -> torch.Tensor:
        """The first layer's write pointer (0-d, on the device): the cache's length as the device sees
        it, which a compiled step reads to build its mask without a host round trip."""
        return self._pointers[0]

    def crop(self, length: int) -> None:
        """Keep the first ``length`` positions of every layer."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a cache of {self.length} positions to {length}")
        if not self.static and length < self.length:
            self.hf.crop(length - self.length)
        self.set_length(length)

    def keep(self, prefix: int, tail_offsets: Sequence[int]) -> None:
        """Keep positions ``[0, prefix)`` plus ``prefix + tail_offsets`` (in that order), drop the rest.

        Used after tree verification, where the accepted path is not a contiguous block of the
        verified nodes. A contiguous tail (every greedy chain) is a crop, decided on the host."""
        n = len(tail_offsets)
        if list(tail_offsets) == list(range(n)):
            self.crop(prefix + n)
            return
        index = torch.tensor([prefix + t for t in tail_offsets])
        for layer in self.hf.layers:
            if getattr(layer, "keys", None) is None:
                continue
            index = index.to(layer.keys.device)  # copied once: every layer after the first finds it there
            if self.static:  # in place: the buffers' addresses are baked into compiled graphs
                layer.keys[..., prefix : prefix + n, :] = layer.keys.index_select(-2, index)
                layer.values[..., prefix : prefix + n, :] = layer.values.index_select(-2, index)
            else:
                layer.keys = torch.cat([layer.keys[..., :prefix, :], layer.keys.index_select(-2, index)], dim=-2)
                layer.values = torch.cat([layer.values[..., :prefix, :], layer.values.index_select(-2, index)], dim=-2)
        self.set_length(prefix + n)

    def set_length(self, length: int) -> None:
        if self.static and length != self.length:
            self.move_pointers(length)
        self.length = length

    def move_pointers(self, length: int) -> None:
        """Set every layer's write pointer to ``length``: one fill kernel, in place, no sync."""
        self._pointers.fill_(length)
