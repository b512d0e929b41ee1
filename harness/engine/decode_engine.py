"""The decode engine: how every pass of ``ar``, ``sdsat`` and ``sdsat-fused`` runs (eager on a dynamic
cache, or on a static cache, eager or as a compiled step replayed from CUDA graphs), and the attention
kernels a pass may use."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import DynamicCache, PreTrainedModel

from harness.config import ENGINES
from harness.engine.cache import KVCache, static_capacity
from harness.engine.fusion import is_fused
from harness.engine.masks import additive_mask, static_mask

# Compilations of our decode step (one per block size: a sweep over k needs more than dynamo's
# default of 8, past which it would stop compiling). Applied to our step's calls only.
RECOMPILE_LIMIT = 256
MASK_ALIGN = 16  # elements: the row stride at which sdpa's memory-efficient kernel reads a mask unpadded
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


class DecodeEngine:
    """How our decoders' forward passes run, shared by ``ar``, ``sdsat`` and ``sdsat-fused``.

    - ``eager``: a fresh ``DynamicCache`` per generation, the model called directly (CPU default).
    - ``static``: one pre-allocated ``StaticCache`` reused by every generation; masks span its whole
      capacity, so every decode pass of one block size has the same shapes.
    - ``compile``: ``static`` plus a ``torch.compile``d decode step (:func:`decode_step`), as
      pytorch-labs/gpt-fast does; on a GPU each block size's step is captured once as a CUDA graph and
      replayed (:class:`harness.engine.graphs.GraphedStep`). Prefill stays eager because prompt lengths vary.
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
        self.backend = backend
        self._static: KVCache | None = None
        self._step = None
        self._on_device: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # block layouts, copied once
        self._causal_layouts: dict[int, torch.Tensor] = {}
        self._graphs = None
        if mode == "compile":
            self._compiled = torch.compile(decode_step, backend=backend, fullgraph=True, dynamic=False)
            self._step = self._compiled_step
            if self.device.type == "cuda":
                from harness.engine.graphs import GraphedStep

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
        if is_fused(self.model):
            attention += ", fused Q/K/V and gate/up projections"
        if self.mode == "eager":
            return f"sdsat-bench engine eager: dynamic cache{attention}"
        if self.mode == "static":
            return f"sdsat-bench engine static: static cache, eager{attention}"
        graphs = (
            ", a CUDA graph per block size on the faster matrix library at capture" if self._graphs is not None else ""
        )
        return f"sdsat-bench engine compile: static cache, torch.compile'd decode step{attention}{graphs}"

    def graph_libraries(self, blocks: Iterable[int] | None = None) -> str:
        """The matrix library each captured block size's graph took ("4: cublaslt, 6: cublas"), of ``blocks``
        only (a record names the passes of its own decoder: the engine is shared, and which others were
        captured by then depends on the order of the run), or of all; "" without graphs."""
        if self._graphs is None:
            return ""
        chosen = self._graphs.blas
        wanted = chosen if blocks is None else [q for q in dict.fromkeys(blocks) if q in chosen]
        return ", ".join(f"{q}: {chosen[q]}" for q in wanted)

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
