"""What a retrofit adds to a base model's vocabulary, and how the new embedding rows start.

The base keeps its own tokenizer. Added, as special tokens (never produced by encoding text):
- one adaptive token per draft offset 1..max_k, unless existing ids are named (``--adaptive-tokens
  32011*5``, as the public CodeLlama-SDSAT checkpoints repeat one reserved id);
- fill-in-the-middle tokens, where the tokenizer has none, so that the infilling and FIM tasks run.

Every row the base lacks (added tokens, and ids of the tokenizer beyond the base's embedding rows)
starts as the mean of the base's rows (:func:`harness.weights.grow_vocabulary`: an adapter's base is
grown the same way at every load); the retrofit may then start the adaptive rows elsewhere
(:func:`adaptive_init`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from harness.models import AdaptiveSpec, FimSpec, fim_from_tokenizer, parse_adaptive_tokens
from harness.training.tokenizer import FIM_TOKENS, adaptive_token_names

# Where the adaptive tokens' embedding rows start (measured: see the retrofit's model card).
ADAPTIVE_INITS = ("mean", "frequency", "random")


@dataclass(frozen=True)
class Extension:
    adaptive: AdaptiveSpec
    fim: FimSpec
    added: tuple[str, ...]  # token strings added to the tokenizer
    new_ids: tuple[int, ...]  # rows the base lacks, and the adaptive rows
    base_rows: int  # the base's embedding rows
    vocab_size: int  # rows after growing

    def to_json(self) -> dict:
        return {
            "adaptive_token_ids": list(self.adaptive.token_ids),
            "fim": [self.fim.prefix, self.fim.suffix, self.fim.middle, self.fim.end],
            "added": list(self.added),
            "new_ids": list(self.new_ids),
            "base_rows": self.base_rows,
            "vocab_size": self.vocab_size,
        }

    @classmethod
    def from_json(cls, d: dict) -> Extension:
        return cls(
            AdaptiveSpec(tuple(d["adaptive_token_ids"])),
            FimSpec(*d["fim"]),
            tuple(d["added"]),
            tuple(d["new_ids"]),
            d["base_rows"],
            d["vocab_size"],
        )


def extend_tokenizer(tokenizer, base_rows: int, max_k: int, adaptive_tokens: str | None = None) -> Extension:
    """Add adaptive and FIM tokens to ``tokenizer`` (in place) and say which rows the model must grow."""
    from transformers import AddedToken

    added: list[str] = []

    def add(names) -> None:
        missing = [n for n in names if n not in tokenizer.get_vocab()]
        tokenizer.add_tokens([AddedToken(n, special=True, normalized=False) for n in missing], special_tokens=True)
        added.extend(missing)

    if adaptive_tokens:
        adaptive = parse_adaptive_tokens(adaptive_tokens, max(base_rows, len(tokenizer)))
    else:
        names = adaptive_token_names(max_k)
        add(names)
        adaptive = AdaptiveSpec(tuple(tokenizer.convert_tokens_to_ids(names)))
    fim = fim_from_tokenizer(tokenizer)
    if fim is None:
        add(FIM_TOKENS)
        fim = FimSpec(*FIM_TOKENS)
    vocab_size = max(base_rows, len(tokenizer))
    added_ids = set(tokenizer.convert_tokens_to_ids(added))
    # Adaptive rows are trained like new ones even where the ids existed (named by --adaptive-tokens, or
    # a base that has them already): they must learn their role.
    new_ids = sorted(added_ids | set(range(base_rows, vocab_size)) | set(adaptive.token_ids))
    return Extension(adaptive, fim, tuple(added), tuple(new_ids), base_rows, vocab_size)


def adaptive_init(model, adaptive_ids, how: str, stream: np.ndarray | None = None, seed: int = 0) -> None:
    """Start the adaptive tokens' input rows: ``mean`` (as grown), ``frequency`` (the corpus-frequency
    weighted mean of the base's rows: the embedding of an average next token), or ``random``
    (transformers' normal initialisation, the model's ``initializer_range``)."""
    if how not in ADAPTIVE_INITS:
        raise ValueError(f"adaptive init: expected one of {', '.join(ADAPTIVE_INITS)}, got '{how}'")
    if how == "mean":
        return
    weight = model.get_input_embeddings().weight
    ids = torch.tensor(sorted(set(adaptive_ids)), dtype=torch.long, device=weight.device)
    with torch.no_grad():
        if how == "frequency":
            counts = torch.from_numpy(np.bincount(np.asarray(stream, dtype=np.int64), minlength=weight.shape[0]))
            counts[ids.cpu()] = 0
            p = (counts[: weight.shape[0]].double() / counts.sum()).to(weight.device)
            row = (p[:, None] * weight.double()).sum(0)
            weight[ids] = row.to(weight.dtype)
        else:
            std = getattr(model.config, "initializer_range", 0.02)
            gen = torch.Generator().manual_seed(seed)
            weight[ids] = (torch.randn(len(ids), weight.shape[1], generator=gen) * std).to(weight)
