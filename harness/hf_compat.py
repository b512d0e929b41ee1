"""The one place that knows transformers' version-specific cache, mask and position conventions.

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

import contextlib
import time
from collections.abc import Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import DynamicCache, PreTrainedModel, StaticCache

ENGINES = ("eager", "static", "compile")
# Compilations of our decode step (one per block size: a sweep over k needs more than dynamo's
# default of 8, past which it would stop compiling). Applied to our step's calls only.
RECOMPILE_LIMIT = 256
MASK_ALIGN = 16  # elements: the row stride at which sdpa's memory-efficient kernel reads a mask unpadded
CAPACITY_STEP = 512  # a static cache grows in these steps (every growth recompiles the decode step)
# Attention kernels a pass may use on a GPU: every sdpa backend but cuDNN's. Measured on an H200
# (torch 2.11, bf16): cuDNN's attention, which sdpa prefers there, builds a plan for every new
# (query, key) shape, ~50 ms each, and a dynamic cache gives every pass a new one: hf-pld on the
# default model ran at 348 ms per pass on new prompts (9 ms once shapes repeated), 1.6 ms without it.
GPU_ATTENTION = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)


def attention_kernels(device: torch.device) -> contextlib.AbstractContextManager:
    """The context every pass of ours and every peer's generate runs in: sdpa limited to
    ``GPU_ATTENTION`` on a GPU (a compiled step keeps the kernel it was traced with)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel(list(GPU_ATTENTION))


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


class DecodeEngine:
    """How our decoders' forward passes run, shared by ``ar``, ``sdsat`` and ``sdsat-fused``.

    - ``eager``: a fresh ``DynamicCache`` per generation, the model called directly (CPU default).
    - ``static``: one pre-allocated ``StaticCache`` reused by every generation; masks span its whole
      capacity, so every decode pass of one block size has the same shapes.
    - ``compile``: ``static`` plus a ``torch.compile``d decode step (:func:`decode_step`), as
      pytorch-labs/gpt-fast does; on a GPU each block size's step is captured once as a CUDA graph and
      replayed (:class:`harness.graphs.GraphedStep`). Prefill stays eager because prompt lengths vary.
      :meth:`warm_up` compiles and captures the block sizes a decoder will use, so that neither
      lands inside a timed generation.

    On a static cache a pass's mask is built from the block's layout and the device-side write
    pointer (:func:`static_mask`), inside the compiled step: a pass costs the host one call, whatever
    its block.
    """

    def __init__(self, model: PreTrainedModel, mode: str = "eager", backend: str = "inductor"):
        if mode not in ENGINES:
            raise ValueError(f"engine: expected one of {', '.join(ENGINES)}, got '{mode}'")
        self.model = model
        self.mode = mode
        self._static: KVCache | None = None
        self._step = None
        self._on_device: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # block layouts, copied once
        self._causal_layouts: dict[int, torch.Tensor] = {}
        self._graphs = None
        if mode == "compile":
            self._compiled = torch.compile(decode_step, backend=backend, fullgraph=True, dynamic=False)
            self._step = self._compiled_step
            if self.device.type == "cuda":
                from harness.graphs import GraphedStep

                self._graphs = GraphedStep(self._step, model)

    def _compiled_step(self, *args) -> torch.Tensor:
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT), attention_kernels(self.device):
            return self._compiled(*args)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def description(self) -> str:
        """The configuration our decoders run on, as a record states it (the attention kernel where it
        is not sdpa)."""
        attention = getattr(self.model.config, "_attn_implementation", "sdpa")
        attention = "" if attention == "sdpa" else f", {attention} attention"
        if self.mode == "eager":
            return f"sdsat-bench engine eager: dynamic cache{attention}"
        if self.mode == "static":
            return f"sdsat-bench engine static: static cache, eager{attention}"
        graphs = ""
        if self._graphs is not None:
            chosen = ", ".join(f"{q}: {library}" for q, library in self._graphs.blas.items())
            graphs = f", a CUDA graph per block size on the faster matrix library at capture ({chosen})"
        return f"sdsat-bench engine compile: static cache, torch.compile'd decode step{attention}{graphs}"

    def new_cache(self, needed: int) -> KVCache:
        """An empty cache with room for ``needed`` positions (the static one is reused)."""
        if self.mode == "eager":
            return KVCache(DynamicCache(config=self.model.config), None)
        if self._static is None or self._static.capacity < needed:
            self._static = KVCache.allocate_static(self.model, static_capacity(needed))
        self._static.crop(0)
        return self._static

    @property
    def capacity(self) -> int:
        """Positions of the static cache reserved so far (0: none)."""
        return self._static.capacity if self._static is not None else 0

    def reserve(self, needed: int) -> None:
        """Allocate the static cache once for a whole run (a later growth would recompile)."""
        if self.mode != "eager":
            self.new_cache(needed)

    def mask(self, cache: KVCache, allowed: torch.Tensor | None, q: int, prefill: bool = False) -> torch.Tensor | None:
        """The additive mask of one pass of ``q`` tokens over a dynamic cache: the cached prefix is
        visible and ``allowed`` (q x q bool, None: causal) restricts attention inside the block.

        None (no mask: transformers lets the attention kernel apply causality itself) for one token and
        for a causal prefill. Any other block gets ours, built once per pass, because the one
        transformers builds is boolean: sdpa turns it into a float mask in every layer, and pads it to
        the kernel's alignment in every layer too. Ours is float and its rows are stored at a padded
        width, so each layer reads it as it is."""
        if allowed is None and (q == 1 or prefill):
            return None
        base = cache.length
        block = self._causal(q) if allowed is None else self._block_layout(allowed)
        width = base + q
        full = torch.zeros(q, -(-width // MASK_ALIGN) * MASK_ALIGN, dtype=torch.bool, device=self.device)
        full[:, :base] = True
        full[:, base:width] = block
        return additive_mask(full, self.model.dtype)[..., :width]

    def _block_layout(self, allowed: torch.Tensor) -> torch.Tensor:
        """``allowed`` on the model's device; decoders reuse a few layouts, so each is copied once."""
        if allowed.device == self.device:
            return allowed
        hit = self._on_device.get(id(allowed))
        if hit is None or hit[0] is not allowed:
            hit = self._on_device[id(allowed)] = (allowed, allowed.to(self.device))
        return hit[1]

    @torch.no_grad()  # not inference_mode: the static cache's buffers are later updated in place
    def forward(
        self,
        cache: KVCache,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        allowed: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        prefill: bool = False,
    ) -> torch.Tensor:
        """One pass over ``input_ids`` (1, q) appended to ``cache``; logits (seq, vocab) of the last
        ``logits_to_keep`` positions (0 = all). ``allowed``: (q, q) bool visibility inside the block,
        None for causal. Prefill passes run eagerly."""
        q = input_ids.shape[1]
        if not cache.static:
            with attention_kernels(self.device):
                logits = self.model(
                    input_ids=input_ids,
                    position_ids=position_ids,
                    past_key_values=cache.hf,
                    attention_mask=self.mask(cache, allowed, q, prefill),
                    use_cache=True,
                    logits_to_keep=logits_to_keep,
                ).logits[0]
        else:
            if cache.length + q > cache.capacity:
                raise ValueError(f"static cache of {cache.capacity} positions cannot take {cache.length + q}")
            layout = self._causal(q) if allowed is None else self._block_layout(allowed)
            if self._step is None or prefill or logits_to_keep:
                with attention_kernels(self.device):
                    logits = decode_step(self.model, cache, input_ids, position_ids, layout, logits_to_keep)[0]
            else:
                logits = self._compiled_pass(cache, input_ids, position_ids, layout)
        cache.length += q
        return logits

    def _compiled_pass(
        self, cache: KVCache, input_ids: torch.Tensor, position_ids: torch.Tensor, layout: torch.Tensor
    ) -> torch.Tensor:
        if self._graphs is not None:
            # A CUDA graph's output buffer is overwritten by its next replay: callers keep logits
            # (drafts) across passes, so they get their own copy.
            return self._graphs(cache, input_ids, position_ids, layout)[0].clone()
        return self._step(self.model, cache, input_ids, position_ids, layout)[0]

    def _causal(self, q: int) -> torch.Tensor:
        layout = self._causal_layouts.get(q)
        if layout is None:
            layout = torch.tril(torch.ones(q, q, dtype=torch.bool, device=self.device))
            if q <= 256:  # decode blocks recur; prompt lengths (prefill) need not be kept
                self._causal_layouts[q] = layout
        return layout

    def warm_up(self, block_sizes: Sequence[int], prompt_length: int = 8) -> None:
        """Compile (and record the CUDA graph of) every block size before timed work."""
        if self._step is None:
            return
        device = self.device
        for q in sorted(set(block_sizes)):
            for _ in range(2):  # compile (and capture), then one pass as timed work will run it
                cache = self.new_cache(prompt_length + q)
                ids = torch.zeros(1, prompt_length, dtype=torch.long, device=device)
                self.forward(cache, ids, torch.arange(prompt_length, device=device)[None], prefill=True)
                block = torch.zeros(1, q, dtype=torch.long, device=device)
                self.forward(cache, block, torch.arange(prompt_length, prompt_length + q, device=device)[None])


def decode_step(
    model: PreTrainedModel,
    cache: KVCache,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    layout: torch.Tensor,
    logits_to_keep: int = 0,
) -> torch.Tensor:
    """One pass over a static cache, its mask included: the compiled engine's step (a graph of the
    mask and the model), called eagerly by the static engine and for prefill. Logits (1, q, vocab)."""
    mask = static_mask(cache.write_pointer, layout, cache.columns, model.dtype)
    return model(
        input_ids=input_ids,
        position_ids=position_ids,
        past_key_values=cache.hf,
        attention_mask=mask,
        use_cache=True,
        logits_to_keep=logits_to_keep,
    ).logits


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
    return _additive(allowed, dtype)[None, None]


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where ``allowed``, the dtype's minimum elsewhere (same shape)."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask


def batch_mask(model, allowed: torch.Tensor) -> torch.Tensor:
    """A batch's (B, 1, L, L) attention mask from its (B, L, L) bool 'may attend' matrices, in the form
    the model's attention kernel reads: sdpa takes bool (True = attend) whatever the autocast dtype;
    eager attention adds the mask to its scores, so a bool mask would be misread: it gets the additive
    float mask in the model's dtype."""
    if model.config._attn_implementation != "eager":
        return allowed[:, None]
    return _additive(allowed, model.dtype)[:, None]


def keep_busy(device: torch.device, seconds: float) -> None:
    """Run matrix products on ``device`` for ``seconds`` (a GPU's clocks rise under load)."""
    x = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(8):
            x = torch.tanh(x @ x)
        synchronize(device)


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
