"""Attention masks of a decode pass: the additive float form transformers reads as it is, and the
mask of a pass over a static cache, built on the device from the block's layout and the write pointer."""

from __future__ import annotations

import torch


def static_mask(base: torch.Tensor, layout: torch.Tensor, columns: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The (1, 1, q, capacity) additive mask of a pass over a static cache whose first ``base``
    positions (a 0-d device tensor) are cached: those are visible, the block's own positions
    ``[base, base + q)`` follow ``layout`` (q x q bool), the stale rest is hidden."""
    q = layout.shape[0]
    offset = columns - base  # each cache position relative to the block's first
    in_block = (offset >= 0) & (offset < q)
    allowed = (offset < 0) | (in_block & layout.index_select(1, offset.clamp(0, q - 1)))
    return additive_mask(allowed, dtype)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Turn a (q, kv) bool 'may attend' matrix into the (1, 1, q, kv) additive float mask transformers wants."""
    return additive(allowed, dtype)[None, None]


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where ``allowed``, the dtype's minimum elsewhere (same shape)."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask
