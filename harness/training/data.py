"""From documents to training tokens: the fill-in-the-middle transform (PSM and SPM, as CodeLlama)
and packing into one token stream. Document text is encoded with special-token matching off, so a
literal '</s>' in source code stays text; special ids are inserted by id."""

from __future__ import annotations

import random
from collections.abc import Iterable

import numpy as np

from harness.training.tokenizer import FIM_TOKENS


def fim_split(text: str, rng: random.Random) -> tuple[str, str, str]:
    a, b = sorted(rng.randrange(len(text) + 1) for _ in range(2))
    return text[:a], text[a:b], text[b:]


def encode_documents(
    tokenizer, texts: Iterable[str], fim_rate: float = 0.5, spm_rate: float = 0.5, seed: int = 0
) -> np.ndarray:
    """One stream: for each document ``BOS doc EOS``, or with probability ``fim_rate`` its FIM form
    PSM ``<pre> P <suf> S <mid> M <eot>`` or SPM ``<pre> <suf> S <mid> P M <eot>``."""
    rng = random.Random(seed)
    backend = tokenizer.backend_tokenizer
    backend.encode_special_tokens = True
    pre, suf, mid, eot = tokenizer.convert_tokens_to_ids(list(FIM_TOKENS))
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    plans, pieces = [], []
    for text in texts:
        if rng.random() < fim_rate:
            p, m, s = fim_split(text, rng)
            plans.append("spm" if rng.random() < spm_rate else "psm")
            pieces += [p, m, s]
        else:
            plans.append("plain")
            pieces.append(text)
    encoded = [e.ids for e in backend.encode_batch(pieces, add_special_tokens=False)]
    backend.encode_special_tokens = False
    out: list[int] = []
    i = 0
    for plan in plans:
        if plan == "plain":
            out += [bos, *encoded[i], eos]
            i += 1
            continue
        p, m, s = encoded[i : i + 3]
        i += 3
        if plan == "psm":
            out += [bos, pre, *p, suf, *s, mid, *m, eot, eos]
        else:
            out += [bos, pre, suf, *s, mid, *p, *m, eot, eos]
    dtype = np.uint16 if len(tokenizer) < 65536 else np.int32
    return np.asarray(out, dtype=dtype)


def sample_windows(stream: np.ndarray, batch: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """``batch`` random windows of ``length`` tokens from the stream."""
    starts = rng.integers(0, len(stream) - length, size=batch)
    return np.stack([stream[s : s + length] for s in starts]).astype(np.int64)
