"""Building and saving Llama checkpoints that carry their adaptive-token spec."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig

from harness.models import AdaptiveSpec
from harness.training.tokenizer import adaptive_token_names


def adaptive_spec_for(tokenizer, max_k: int, repeated: bool = False) -> AdaptiveSpec:
    """Distinct adaptive ids per offset, or the first adaptive id repeated (public-checkpoint style)."""
    ids = tokenizer.convert_tokens_to_ids(adaptive_token_names(max_k))
    return AdaptiveSpec(tuple([ids[0]] * max_k if repeated else ids))


def llama_config(
    vocab_size: int,
    hidden: int = 256,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int | None = None,
    intermediate: int | None = None,
    max_positions: int = 2048,
    tokenizer=None,
    **extra,
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id if tokenizer else None,
        eos_token_id=tokenizer.eos_token_id if tokenizer else None,
        pad_token_id=tokenizer.pad_token_id if tokenizer else None,
        tie_word_embeddings=True,
        **extra,
    )


def save_checkpoint(
    model,
    tokenizer,
    out_dir: str | Path,
    adaptive: AdaptiveSpec | None,
    dtype: torch.dtype | None = None,
    max_shard_size: str | None = None,
) -> Path:
    """Weights (optionally cast, e.g. to bf16, and sharded), config with the ``sdsat`` entry, tokenizer."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        model = model.to(dtype)
    if adaptive is not None:
        model.config.sdsat = adaptive.to_config()
    model.save_pretrained(out, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    tokenizer.save_pretrained(out)
    return out
