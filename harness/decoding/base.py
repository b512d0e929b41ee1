"""The decoder protocol and what every decoder returns: tokens, text and exact statistics.

Every decoder keeps the same invariant between loop iterations: the KV cache holds every token
except the last one (``pending``), which the next forward pass feeds. Emitted tokens go through a
:class:`TokenSink`, the single place that applies EOS, stop strings and ``max_new_tokens``, so that
all decoders stop at exactly the same token and tokens past a stop are never counted.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from harness.errors import HarnessError


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy; top_k 0 and top_p 1.0 mean 'no truncation'."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class StopCondition:
    max_new_tokens: int = 256
    stop_strings: tuple[str, ...] = ()
    eos_token_ids: frozenset[int] = frozenset()


def check_room(config, prompt_tokens: int, max_new_tokens: int, block: int = 1) -> None:
    """A generation must fit the model's positions: refused in one line, never garbage past them."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit and prompt_tokens + max_new_tokens + block - 1 > limit:
        raise HarnessError(
            f"prompt of {prompt_tokens} tokens + {max_new_tokens} new tokens (+ a block of {block}) exceeds the "
            f"model's {limit} positions: shorten the prompt or lower --max-new-tokens"
        )


def check_same_vocabulary(draft, target) -> None:
    """A draft model (``sps``, ``hf-assisted``) proposes token ids the target reads as its own: the two
    must share a vocabulary (LoadedModels; one line where they do not)."""
    if len(draft.tokenizer) != len(target.tokenizer):
        raise HarnessError(f"draft model '{draft.name}' has another vocabulary than '{target.name}'")


@dataclass
class LoopRecord:
    """One decode loop: drafts verified, drafts accepted (and kept by the sink), tokens emitted,
    forward passes spent."""

    drafted: int
    accepted: int
    emitted: int
    forwards: int


@dataclass
class Stats:
    new_tokens: int = 0
    forward_passes: int = 0  # decode passes; the prefill pass is counted in prefill_passes
    prefill_passes: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    decode_cpu_s: float | None = None  # the process's CPU time while decoding (harness.metrics: noisy)
    peak_memory_bytes: int | None = None
    loops: list[LoopRecord] = field(default_factory=list)
    # False where the loop runs inside another library (transformers' generate): drafted, accepted and
    # loops are then unknown, reported as None, never as a false 0.
    loops_observed: bool = True

    @property
    def drafted(self) -> int:
        return sum(loop.drafted for loop in self.loops)

    @property
    def accepted(self) -> int:
        return sum(loop.accepted for loop in self.loops)

    @property
    def accept_rate(self) -> float | None:
        """The paper's definition: accepted drafts / drafted tokens."""
        drafted = self.drafted
        return self.accepted / drafted if drafted else None

    @property
    def mean_accepted_length(self) -> float | None:
        """Spec-Bench/EAGLE convention: tokens emitted per loop. A one-pass loop emits its accepted drafts
        and a bonus token; the two-step loop also the token of its draft pass."""
        return self.new_tokens / len(self.loops) if self.loops else None

    @property
    def tokens_per_forward(self) -> float | None:
        return self.new_tokens / self.forward_passes if self.forward_passes else None

    @property
    def tokens_per_s(self) -> float | None:
        return self.new_tokens / self.decode_s if self.decode_s > 0 else None

    @property
    def tokens_per_s_e2e(self) -> float | None:
        total = self.prefill_s + self.decode_s
        return self.new_tokens / total if total > 0 else None

    def to_dict(self) -> dict:
        seen = self.loops_observed
        return {
            "new_tokens": self.new_tokens,
            "forward_passes": self.forward_passes,
            "prefill_passes": self.prefill_passes,
            "loops": len(self.loops) if seen else None,
            "drafted": self.drafted if seen else None,
            "accepted": self.accepted if seen else None,
            "accept_rate": self.accept_rate,
            "mean_accepted_length": self.mean_accepted_length,
            "tokens_per_forward": self.tokens_per_forward,
            "prefill_s": self.prefill_s,
            "decode_s": self.decode_s,
            "decode_cpu_s": self.decode_cpu_s,
            "tokens_per_s": self.tokens_per_s,
            "tokens_per_s_e2e": self.tokens_per_s_e2e,
            "peak_memory_bytes": self.peak_memory_bytes,
        }


@dataclass
class Generation:
    tokens: list[int]
    text: str
    stop_reason: str  # "eos" | "stop_string" | "max_new_tokens"
    stats: Stats


class Decoder(Protocol):
    name: str

    def block_sizes(self, greedy: bool) -> tuple[int, ...]:
        """Query lengths of the decode passes run through the model's engine (compiled ahead of time)."""
        ...

    def generate(self, prompt_ids: Sequence[int], stop: StopCondition, sampling: SamplingParams) -> Generation: ...


class TokenSink:
    """Collects emitted tokens and decides, token by token, where generation stops."""

    def __init__(self, tokenizer, prompt_ids: Sequence[int], stop: StopCondition):
        self.tokenizer = tokenizer
        self.prompt_ids = list(prompt_ids)
        self.stop = stop
        self.tokens: list[int] = []
        self.stop_reason: str | None = None
        # Decode the completion together with the prompt and cut the prompt's text off, so that
        # tokenizers which drop a leading space when decoding a slice (SentencePiece) stay right.
        self._prompt_chars = len(tokenizer.decode(self.prompt_ids, skip_special_tokens=True))
        self._text: str | None = None  # set where a stop string cut the completion
        # Tokens before a batch that a stop string ending in it can reach back into: each character
        # of a stop string comes from at most 4 tokens (UTF-8 bytes), 2 more for the decoding context.
        self._lookback = 4 * max((len(s) for s in stop.stop_strings), default=0) + 2

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    def fork(self) -> TokenSink:
        """An independent sink in this one's state, to go on from here more than one way."""
        clone = copy.copy(self)
        clone.tokens = list(self.tokens)
        return clone

    @property
    def text(self) -> str:
        return self._text if self._text is not None else self._decode(self.tokens)

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(self.prompt_ids + tokens, skip_special_tokens=True)[self._prompt_chars :]

    def _first_stop(self, text: str) -> int | None:
        hits = [i for s in self.stop.stop_strings if (i := text.find(s)) >= 0]
        return min(hits) if hits else None

    def _may_stop(self, start: int) -> bool:
        """Whether a stop string can end in the tokens from ``start`` on. Decodes a window of the
        sequence (the batch and the tokens a stop string could reach back into), not the whole of it:
        a window decodes as the sequence does but at its first tokens, which only precede any stop
        string that ends in the batch. A hit may be in the prompt's part of the window; the exact
        check that follows looks at the completion only."""
        sequence = self.prompt_ids + self.tokens
        window = sequence[max(0, len(self.prompt_ids) + start - self._lookback) :]
        return self._first_stop(self.tokenizer.decode(window, skip_special_tokens=True)) is not None

    def emit(self, tokens: Sequence[int]) -> int:
        """Append ``tokens`` in order until a stop; return how many were kept."""
        if self.done:
            return 0
        start = len(self.tokens)
        for t in tokens:
            self.tokens.append(int(t))
            if int(t) in self.stop.eos_token_ids:
                self.stop_reason = "eos"
                break
            if len(self.tokens) >= self.stop.max_new_tokens:
                self.stop_reason = "max_new_tokens"
                break
        if not self.stop.stop_strings or not self._may_stop(start):
            return len(self.tokens) - start  # text is decoded once, at the end
        text = self._decode(self.tokens)
        if self._first_stop(text) is not None:
            # The first token count at which a stop string appears: later tokens are cut.
            for n in range(start + 1, len(self.tokens) + 1):
                cut = self._first_stop(self._decode(self.tokens[:n]))
                if cut is not None:
                    del self.tokens[n:]
                    self._text = self._decode(self.tokens)[:cut]
                    self.stop_reason = "stop_string"
                    break
        return len(self.tokens) - start
