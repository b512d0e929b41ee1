"""The base model's last hidden states beside its logits, for drafters that read them (Medusa heads,
an EAGLE layer). One wrapper module returns ``[logits, hidden]`` concatenated on the last axis as its
``logits``, so that our engine (static cache, compiled step, CUDA graphs) runs it unchanged and every
pass of such a decoder costs what an ``ar`` pass costs plus the copy of one hidden row."""

from __future__ import annotations

import weakref
from dataclasses import replace

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from harness import engine as engines
from harness.models import LoadedModel


class WithHidden(nn.Module):
    """A causal LM whose output's ``logits`` are its logits followed by its final hidden states."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def config(self):
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def forward(self, input_ids, position_ids, past_key_values, attention_mask, use_cache=True, logits_to_keep=0):
        hidden = self.model.get_decoder()(
            input_ids=input_ids,
            position_ids=position_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            use_cache=use_cache,
        ).last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.model.get_output_embeddings()(hidden)
        return CausalLMOutputWithPast(logits=torch.cat([logits, hidden.to(logits.dtype)], dim=-1))


_WRAPPED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def with_hidden(lm: LoadedModel) -> LoadedModel:
    """``lm`` with hidden states in its passes: the same weights, on an engine of its own of the same
    mode (one per model, shared by every decoder that reads hidden states)."""
    hit = _WRAPPED.get(lm.model)
    if hit is None or hit.engine.mode != lm.engine.mode:
        wrapper = WithHidden(lm.model)
        hit = replace(lm, model=wrapper, engine=engines.DecodeEngine(wrapper, lm.engine.mode, lm.engine.backend))
        _WRAPPED[lm.model] = hit
    return hit


def vocabulary(lm: LoadedModel) -> int:
    return lm.model.get_output_embeddings().weight.shape[0]
