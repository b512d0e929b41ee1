"""Tokenizers with the special tokens SDSAT needs: BOS/EOS/PAD, CodeLlama-style FIM tokens and
reserved adaptive tokens. Saved with ``save_pretrained`` they load with ``AutoTokenizer``."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
FIM_TOKENS = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_eot>")
N_ADAPTIVE = 16


def adaptive_token_names(n: int = N_ADAPTIVE) -> list[str]:
    return [f"<adapt_{i}>" for i in range(n)]


def special_tokens(n_adaptive: int = N_ADAPTIVE) -> list[str]:
    """Ids 0..len-1 of every tokenizer we build, in this order."""
    return [BOS, EOS, PAD, *FIM_TOKENS, *adaptive_token_names(n_adaptive)]


def wrap(tok: Tokenizer, n_adaptive: int) -> PreTrainedTokenizerFast:
    specials = special_tokens(n_adaptive)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=specials[3:],
    )


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, n_adaptive: int = N_ADAPTIVE) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style pre-tokenisation) trained on ``texts``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens(n_adaptive),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap(tok, n_adaptive)
