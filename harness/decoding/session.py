"""State shared by our cached decoders for one generation: the KV cache, the pending token, the sink
and the statistics. Every forward pass of ``ar``, ``sdsat`` and ``sdsat-fused`` goes through
:meth:`DecodeSession.forward`, so all of them pay for exactly the same machinery."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from harness.decoding.base import (
    Generation,
    LoopRecord,
    SamplingParams,
    Stats,
    StopCondition,
    TokenSink,
    check_room,
)
from harness.decoding.sampling import draw, make_generator, target_probs
from harness.device import Timer, peak_memory_bytes, reset_peak_memory
from harness.errors import HarnessError
from harness.models import LoadedModel


class DecodeSession:
    def __init__(
        self,
        lm: LoadedModel,
        prompt_ids: Sequence[int],
        stop: StopCondition,
        sampling: SamplingParams,
        max_block: int = 1,
    ):
        if len(prompt_ids) == 0:
            raise HarnessError("empty prompt: at least one token is needed to decode from")
        if stop.max_new_tokens < 1:
            raise HarnessError("max_new_tokens must be at least 1")
        check_room(lm.model.config, len(prompt_ids), stop.max_new_tokens, max_block)
        self.lm = lm
        self.prompt_ids = list(prompt_ids)
        self.sampling = sampling
        self.generator = make_generator(sampling.seed)
        # Room for the prompt, every new token and the largest block a pass may append.
        self.cache = lm.engine.new_cache(len(self.prompt_ids) + stop.max_new_tokens + max_block)
        self.sink = TokenSink(lm.tokenizer, prompt_ids, stop)
        self.stats = Stats()
        # Invariant between loops: the cache holds every token but ``pending``.
        self.pending = self.prompt_ids[-1]

    @property
    def done(self) -> bool:
        return self.sink.done

    @property
    def cache_length(self) -> int:
        return self.cache.length

    def crop(self, length: int) -> None:
        """Keep the cache's first ``length`` positions."""
        self.cache.crop(length)

    def keep(self, prefix: int, tail_offsets: Sequence[int]) -> None:
        """Keep the cache's first ``prefix`` positions and ``prefix + tail_offsets`` after them."""
        self.cache.keep(prefix, tail_offsets)

    def prefill(self, keep: int = 1) -> torch.Tensor | None:
        """The prompt but its last token into the cache; the outputs of its last ``keep`` positions
        (0: all, for a drafter that reads the prompt's hidden states), None for a one-token prompt."""
        reset_peak_memory(self.lm.device)
        out = None
        with Timer(self.lm.device) as t:
            if len(self.prompt_ids) > 1:
                out = self._forward(self.prompt_ids[:-1], logits_to_keep=keep, prefill=True)
                self.stats.prefill_passes += 1
        self.stats.prefill_s = t.seconds
        return out

    def prefill_with_group(self, adaptive_ids: Sequence[int]) -> torch.Tensor:
        """Prefill the whole prompt with a group of adaptive tokens appended (anchored at the prompt's
        last token; plain causal attention and consecutive positions are exactly that group's layout).
        The prompt's last position gives the first new token, which becomes ``pending``; returns the
        group's (k, vocab) draft logits. The group's cache entries are dropped."""
        reset_peak_memory(self.lm.device)
        with Timer(self.lm.device) as t:
            logits = self._forward(
                [*self.prompt_ids, *adaptive_ids], logits_to_keep=len(adaptive_ids) + 1, prefill=True
            )
            self.crop(len(self.prompt_ids))
            self.pending = self.choose(logits[0])
            self.stats.prefill_passes += 1
        self.stats.prefill_s = t.seconds
        return logits[1:]

    def _forward(self, tokens, positions=None, allowed=None, logits_to_keep=0, prefill=False) -> torch.Tensor:
        device = self.lm.device
        base = self.cache_length
        ids = torch.as_tensor(tokens, dtype=torch.long, device=device)[None]
        if positions is None:
            positions = torch.arange(base, base + ids.shape[1])
        return self.lm.engine.forward(self.cache, ids, positions.to(device)[None], allowed, logits_to_keep, prefill)

    def forward(
        self, tokens: Sequence[int], positions: torch.Tensor | None = None, allowed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """A decode forward pass over ``tokens`` appended to the cache; logits (len(tokens), vocab).
        ``positions`` default to consecutive ones after the cache; ``allowed`` (q x q bool) restricts
        attention inside the block (tree verification), the cached prefix staying visible."""
        return self._forward(tokens, positions, allowed)

    def choose(self, logits: torch.Tensor) -> int:
        """The next token from one position's logits: argmax, or a draw from the target distribution."""
        if self.sampling.greedy:
            return int(torch.argmax(logits))
        return draw(target_probs(logits, self.sampling), self.generator)

    def emit(self, tokens: Sequence[int]) -> int:
        return self.sink.emit(tokens)

    def record(self, drafted: int, accepted: int, emitted: int, forwards: int) -> None:
        self.stats.loops.append(LoopRecord(drafted, accepted, emitted, forwards))
        self.stats.forward_passes += forwards

    def decoding(self) -> Timer:
        return Timer(self.lm.device)

    def result(self, timer: Timer) -> Generation:
        self.stats.decode_s, self.stats.decode_cpu_s = timer.seconds, timer.cpu_seconds
        self.stats.new_tokens = len(self.sink.tokens)
        self.stats.peak_memory_bytes = peak_memory_bytes(self.lm.device)
        return Generation(list(self.sink.tokens), self.sink.text, self.sink.stop_reason or "max_new_tokens", self.stats)
