"""One matrix per layer for Q/K/V and one for gate/up, as gpt-fast stores them.

A decode step at batch 1 reads every weight once, and each projection is a kernel launch with its own
tail: three (q, k, v) and two (gate, up) products of the same input become one each. Timed alone on an
H200 at a 7B shape (bf16, 32 layers) the seven projections went from 4.10 to 3.69 ms (issue 28).

Done in place on Llama-family modules (``LlamaAttention``, ``LlamaMLP``: Llama, CodeLlama, SmolLM2 and
our default model) by switching each module to a subclass whose forward reads the fused matrix; the
separate matrices are dropped, so the weights are stored once. Other architectures are left as they
are. Each output element is the same dot product as before; a matrix library may block a wider
product differently, so logits can differ in the last bits (every decoder of a run shares the model,
so the run's exactness checks are unaffected).
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP


def _fused_linear(linears: list[nn.Linear]) -> nn.Linear:
    first = linears[0]
    bias = first.bias is not None
    out = sum(lin.out_features for lin in linears)
    fused = nn.Linear(first.in_features, out, bias=bias, device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([lin.weight for lin in linears]))
        if bias:
            fused.bias.copy_(torch.cat([lin.bias for lin in linears]))
    return fused.requires_grad_(False)


class FusedLlamaMLP(LlamaMLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


class FusedLlamaAttention(LlamaAttention):
    """``LlamaAttention`` with q, k and v from one product; the rest is transformers' own functions
    (rotary embedding, cache update and the configured attention kernel), called as its forward calls them."""

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, **kwargs):
        llama = sys.modules[LlamaAttention.__module__]
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        q, k, v = (t.view(shape).transpose(1, 2) for t in self.qkv(hidden_states).split(self.qkv_sizes, dim=-1))
        cos, sin = position_embeddings
        q, k = llama.apply_rotary_pos_emb(q, k, cos, sin)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        attention = llama.ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, llama.eager_attention_forward
        )
        out, weights = attention(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        out = out.reshape(*hidden_states.shape[:-1], -1).contiguous()
        return self.o_proj(out), weights


def fuse_projections(model: nn.Module) -> int:
    """Fuse every plain Llama attention's q/k/v and MLP's gate/up in ``model`` (in place); returns how
    many modules were fused (0: not a Llama-family model, or fused already)."""
    fused = 0
    for module in model.modules():
        if type(module) is LlamaAttention and _plain(module.q_proj, module.k_proj, module.v_proj):
            projections = [module.q_proj, module.k_proj, module.v_proj]
            module.qkv = _fused_linear(projections)
            module.qkv_sizes = [p.out_features for p in projections]
            del module.q_proj, module.k_proj, module.v_proj
            module.__class__ = FusedLlamaAttention
            fused += 1
        elif type(module) is LlamaMLP and _plain(module.gate_proj, module.up_proj):
            module.gate_up = _fused_linear([module.gate_proj, module.up_proj])
            del module.gate_proj, module.up_proj
            module.__class__ = FusedLlamaMLP
            fused += 1
    return fused


def is_fused(model: nn.Module) -> bool:
    """Whether ``model`` (or a model it wraps) has fused projections."""
    return any(isinstance(m, (FusedLlamaAttention, FusedLlamaMLP)) for m in model.modules())


def _plain(*linears: nn.Module) -> bool:
    """Plain ``nn.Linear`` layers (a LoRA or quantized wrapper is left alone)."""
    return all(type(lin) is nn.Linear for lin in linears)
