"""Tiny random base models of several architectures, saved as a user's checkpoint would be, with
tokenizers that have no adaptive and no FIM tokens (what a retrofit starts from); and a tiny GGUF
file of a Llama, written with the gguf package as llama.cpp's converter writes one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

SOURCES = Path(__file__).resolve().parent.parent / "harness"
# Each architecture's special tokens, as its family's tokenizers name them.
GPT_STYLE = {"specials": ["<|endoftext|>"], "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
LLAMA_STYLE = {"specials": ["<unk>", "<s>", "</s>"], "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
QWEN_STYLE = {"specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "eos_token": "<|endoftext|>"}
_SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
ARCHITECTURES = {
    "llama": (LLAMA_STYLE, {**_SMALL, "num_key_value_heads": 2, "tie_word_embeddings": False}),
    "mistral": (LLAMA_STYLE, {**_SMALL, "num_key_value_heads": 2}),
    "qwen2": (QWEN_STYLE, {**_SMALL, "num_key_value_heads": 2, "tie_word_embeddings": True}),
    "gpt2": (GPT_STYLE, {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 1024}),  # learned positions
}


def bpe_tokenizer(style: dict, vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on this package's sources, with ``style``'s specials only."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [p.read_text() for p in sorted(SOURCES.rglob("*.py"))]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=style["specials"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **{k: v for k, v in style.items() if k != "specials"})


def save_base(root: Path, architecture: str, seed: int = 0) -> Path:
    """A tiny random checkpoint of ``architecture`` with its tokenizer, in ``root/architecture``."""
    style, shape = ARCHITECTURES[architecture]
    tokenizer = bpe_tokenizer(style)
    config = AutoConfig.for_model(
        architecture,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **shape,
    )
    torch.manual_seed(seed)
    out = root / architecture
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_llama_gguf(path: Path, seed: int = 0) -> Path:
    """A 2-layer Llama with a GPT-2-style BPE tokenizer as a GGUF file (fp32 tensors)."""
    import gguf

    tokenizer = bpe_tokenizer(GPT_STYLE)
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = [""] * len(tokenizer)
    for token, i in state["model"]["vocab"].items():
        tokens[i] = token
    specials = {a["id"] for a in state["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    vocab, hidden, layers, inter, heads, kv_heads = len(tokens), 32, 2, 64, 4, 2
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(inter)
    writer.add_embedding_length(hidden)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in specials else 1 for i in range(vocab)])  # 3: control
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    kv = kv_heads * hidden // heads
    writer.add_tensor("token_embd.weight", weight(vocab, hidden))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    for i in range(layers):
        for name, array in (
            ("attn_norm", np.ones(hidden, np.float32)),
            ("ffn_norm", np.ones(hidden, np.float32)),
            ("attn_q", weight(hidden, hidden)),
            ("attn_k", weight(kv, hidden)),
            ("attn_v", weight(kv, hidden)),
            ("attn_output", weight(hidden, hidden)),
            ("ffn_gate", weight(inter, hidden)),
            ("ffn_up", weight(inter, hidden)),
            ("ffn_down", weight(hidden, inter)),
        ):
            writer.add_tensor(f"blk.{i}.{name}.weight", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def save_sentencepiece_base(root: Path, seed: int = 0) -> Path:
    """A tiny Llama whose tokenizer is only a sentencepiece model (``tokenizer.model``), as older
    Llama-family checkpoints ship it."""
    import sentencepiece

    out = root / "llama-sentencepiece"
    out.mkdir(parents=True)
    text = out / "corpus.txt"
    text.write_text("\n".join(p.read_text() for p in sorted(SOURCES.rglob("*.py"))))
    sentencepiece.SentencePieceTrainer.train(
        input=str(text),
        model_prefix=str(out / "tokenizer"),
        vocab_size=400,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        byte_fallback=True,
        minloglevel=2,
    )
    text.unlink()
    (out / "tokenizer.vocab").unlink()
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    llama = AutoConfig.for_model("llama", vocab_size=400, bos_token_id=1, eos_token_id=2, **_SMALL)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(llama).save_pretrained(out)
    return out
