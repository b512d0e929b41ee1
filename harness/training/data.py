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
    tokenizer,
    texts: Iterable[str],
    fim_rate: float = 0.5,
    spm_rate: float = 0.5,
    seed: int = 0,
    fim_tokens: tuple[str, str, str, str] = FIM_TOKENS,
) -> np.ndarray:
    """One stream: for each document ``BOS doc EOS``, or with probability ``fim_rate`` its FIM form
    PSM ``<pre> P <suf> S <mid> M <eot>`` or SPM ``<pre> <suf> S <mid> P M <eot>`` (``fim_tokens``
    names them). A tokenizer without BOS or EOS leaves it out."""
    rng = random.Random(seed)
    plans, pieces = [], []
    for text in texts:
        if rng.random() < fim_rate:
            p, m, s = fim_split(text, rng)
            plans.append("spm" if rng.random() < spm_rate else "psm")
            pieces += [p, m, s]
        else:
            plans.append("plain")
            pieces.append(text)
    # split_special_tokens: a literal '</s>' or '<fim_prefix>' in source code stays text
    encoded = tokenizer(pieces, add_special_tokens=False, split_special_tokens=True).input_ids if pieces else []
    pre, suf, mid, eot = tokenizer.convert_tokens_to_ids(list(fim_tokens)) if fim_rate > 0 else (None,) * 4
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out: list[int] = []
    i = 0
    for plan in plans:
        if plan == "plain":
            out += [*bos, *encoded[i], *eos]
            i += 1
            continue
        p, m, s = encoded[i : i + 3]
        i += 3
        if plan == "psm":
            out += [*bos, pre, *p, suf, *s, mid, *m, eot, *eos]
        else:
            out += [*bos, pre, suf, *s, mid, *p, *m, eot, *eos]
    dtype = np.uint16 if len(tokenizer) <= 65536 else np.int32
    return np.asarray(out, dtype=dtype)


def sample_windows(stream: np.ndarray, batch: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """``batch`` random windows of ``length`` tokens from the stream."""
    return take_windows(stream, window_starts(len(stream), batch, length, rng), length)


def window_starts(n: int, batch: int, length: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, n - length, size=batch)


def take_windows(array: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """The windows of ``array`` at ``starts`` (token ids as int64; a bool mask stays bool)."""
    windows = np.stack([array[s : s + length] for s in starts])
    return windows if windows.dtype == np.bool_ else windows.astype(np.int64)


def fim_positions(stream: np.ndarray, prefix_id: int, end_id: int) -> np.ndarray:
    """True at every position whose prediction belongs to a FIM-formatted document: from the token
    before its prefix token (which predicts it) through its end-of-infill token (which predicts what
    follows). FIM tokens are special, so text never encodes to them."""
    opened = np.cumsum(stream == prefix_id)
    closed = np.cumsum(stream == end_id)
    inside = (opened - np.concatenate([[0], closed[:-1]])) > 0
    return inside | np.concatenate([inside[1:], [False]])
