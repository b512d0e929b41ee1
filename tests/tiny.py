"""Tiny random Llama models built inside the tests: no download, reserved ids as adaptive tokens."""

from __future__ import annotations

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from harness.models import LoadedModel, fim_from_tokenizer
from harness.training.checkpoint import adaptive_spec_for, llama_config
from harness.training.tokenizer import N_ADAPTIVE, PAD, special_tokens, wrap

ALPHABET = "abcdefgh ():\n"


def char_tokenizer(alphabet: str, n_adaptive: int = N_ADAPTIVE) -> PreTrainedTokenizerFast:
    """One token per character of ``alphabet`` (after the specials): tiny vocabularies for tests."""
    specials = special_tokens(n_adaptive)
    vocab = {t: i for i, t in enumerate([*specials, *dict.fromkeys(alphabet)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(specials)
    return wrap(tok, n_adaptive)


def random_model(config: LlamaConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype).eval()


def make_lm(
    seed: int = 0,
    alphabet: str = ALPHABET,
    repeated: bool = False,
    context_free: bool = False,
    init_range: float = 0.2,
    dtype: torch.dtype = torch.float64,
    max_k: int = 16,
) -> LoadedModel:
    """A random 2-layer Llama over a character vocabulary. float64 by default, so that the different
    shapes of AR and speculative forward passes cannot flip an argmax through rounding.
    ``context_free``: every token has the same embedding, so every position predicts the same
    distribution (adaptive drafts are then always right under greedy decoding)."""
    tokenizer = char_tokenizer(alphabet)
    config = llama_config(
        len(tokenizer),
        hidden=32,
        layers=2,
        heads=4,
        kv_heads=2,
        intermediate=64,
        tokenizer=tokenizer,
        initializer_range=init_range,
    )
    model = random_model(config, seed=seed, dtype=dtype)
    if context_free:
        with torch.no_grad():
            model.model.embed_tokens.weight.copy_(
                model.model.embed_tokens.weight[0].expand_as(model.model.embed_tokens.weight)
            )
            model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.3)
    return LoadedModel(
        name=f"tiny-{seed}",
        model=model,
        tokenizer=tokenizer,
        adaptive=adaptive_spec_for(tokenizer, max_k, repeated=repeated),
        fim=fim_from_tokenizer(tokenizer),
        device=torch.device("cpu"),
        dtype=dtype,
    )


def prompt_ids(lm: LoadedModel, text: str) -> list[int]:
    return [lm.tokenizer.bos_token_id, *lm.tokenizer(text, add_special_tokens=False).input_ids]


def medusa_drafter(lm: LoadedModel, directory, heads: int = 5, std: float = 0.0, seed: int = 1, own: bool = False):
    """Medusa heads for ``lm`` saved in ``directory`` (a --drafter): zero blocks (each head repeats the
    base's next-token prediction, always right on a context-free model) or random ones of ``std``; with
    ``own`` each head has its own vocabulary projection, a copy of the LM head (perturbed too if random)."""
    from harness.decoding.medusa import MedusaHeads

    torch.manual_seed(seed)
    lm_head = lm.model.get_output_embeddings()
    vocab = lm_head.weight.shape[0] if own else 0
    medusa = MedusaHeads(lm.model.config.hidden_size, heads, vocab).to(lm_head.weight.device).start_from(lm_head)
    if std:
        for block in medusa.blocks:
            torch.nn.init.normal_(block.weight, std=std)
        for projection in medusa.projections:
            projection.weight.data += torch.randn_like(projection.weight) * std
    medusa.to(lm.dtype).save(directory, lm.name)
    return str(directory)


def eagle_drafter(lm: LoadedModel, directory, std: float = 0.0, seed: int = 1):
    """An EAGLE layer for ``lm`` saved in ``directory`` (a --drafter): random of ``std``, or with std 0
    one that passes the feature through (fc = [I, 0], the layer's output projections zero), so it
    drafts the base's next-token prediction again: always right on a context-free model."""
    from harness.decoding.eagle import EagleLayer, layer_config

    torch.manual_seed(seed)
    layer = EagleLayer.pass_through(layer_config(lm.model.config))
    if std:
        for p in layer.parameters():
            if p.ndim == 2:
                torch.nn.init.normal_(p, std=std)
    layer.to(lm.dtype).save(directory, lm.name)
    return str(directory)
