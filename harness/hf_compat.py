"""The one place that knows transformers' version-specific cache, mask and position conventions.

Tested against transformers 5.17 (the GPU image) and 5.23 (the CPU machine). Conventions relied on:
- ``DynamicCache(config=...)`` holds one layer object per decoder layer with ``keys``/``values``
  tensors shaped (batch, kv_heads, seq, head_dim).
- ``Cache.crop`` takes a *negative* number of tokens to remove in every 5.x release we support
  (a positive value meant "final length" until 5.17 and raises from 5.18 on), so we never pass one.
- A 4D mask passed as ``attention_mask`` is used as-is. It must be *additive float* (0 = attend,
  dtype-min = masked): a bool mask is silently misread by eager attention. sdpa accepts both.
- Position ids are passed explicitly; ``cache_position`` is no longer a Llama forward argument.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel


def new_cache(model: PreTrainedModel) -> DynamicCache:
    return DynamicCache(config=model.config)


def cache_length(cache: DynamicCache) -> int:
    return int(cache.get_seq_length())


def crop_cache(cache: DynamicCache, length: int) -> None:
    """Keep the first ``length`` positions of every layer."""
    excess = cache_length(cache) - length
    if excess < 0:
        raise ValueError(f"cannot crop a cache of {cache_length(cache)} positions to {length}")
    if excess:
        cache.crop(-excess)


def keep_cache_positions(cache: DynamicCache, prefix: int, tail_offsets: torch.Tensor) -> None:
    """Keep positions ``[0, prefix)`` plus ``prefix + tail_offsets`` (in that order), drop the rest.

    Used after tree verification, where the accepted path is not a contiguous block of the
    verified nodes. A contiguous tail is turned into a cheaper crop.
    """
    n = int(tail_offsets.numel())
    if n == 0 or torch.equal(tail_offsets.cpu(), torch.arange(n)):
        crop_cache(cache, prefix + n)
        return
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None:
            continue
        index = (prefix + tail_offsets).to(layer.keys.device)
        layer.keys = torch.cat([layer.keys[..., :prefix, :], layer.keys.index_select(-2, index)], dim=-2)
        layer.values = torch.cat([layer.values[..., :prefix, :], layer.values.index_select(-2, index)], dim=-2)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Turn a (q, kv) bool 'may attend' matrix into the (1, 1, q, kv) additive float mask transformers wants."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


@torch.inference_mode()
def forward(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    cache: DynamicCache,
    attention_mask: torch.Tensor | None = None,
    logits_to_keep: int = 0,
) -> torch.Tensor:
    """One forward pass that appends to ``cache``; returns logits (seq, vocab) for the last
    ``logits_to_keep`` positions (0 = all). ``attention_mask``: None for plain causal attention
    over cache + input, or a (1, 1, q, kv) additive mask from :func:`additive_mask`."""
    out = model(
        input_ids=input_ids,
        position_ids=position_ids,
        past_key_values=cache,
        attention_mask=attention_mask,
        use_cache=True,
        logits_to_keep=logits_to_keep,
    )
    return out.logits[0]


def synchronize(device: torch.device) -> None:
    """Wait for queued device work so that host timers measure it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
