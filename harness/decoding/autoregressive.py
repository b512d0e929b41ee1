"""``ar``: one token per forward pass with a KV cache, through the same forward path as SDSAT."""

from __future__ import annotations

from collections.abc import Sequence

from harness.decoding.base import Generation, SamplingParams, StopCondition
from harness.decoding.session import DecodeSession
from harness.models import LoadedModel


def autoregressive_step(s: DecodeSession) -> None:
    token = s.choose(s.forward([s.pending])[-1])
    s.record(drafted=0, accepted=0, emitted=s.emit([token]), forwards=1)
    s.pending = token


def autoregressive_loop(s: DecodeSession) -> None:
    while not s.done:
        autoregressive_step(s)


class AutoregressiveDecoder:
    name = "ar"

    def __init__(self, lm: LoadedModel):
        self.lm = lm

    def block_sizes(self, greedy: bool) -> tuple[int, ...]:
        """Query lengths of the decode passes (what a compiled engine builds a graph for)."""
        return (1,)

    def generate(self, prompt_ids: Sequence[int], stop: StopCondition, sampling: SamplingParams) -> Generation:
        s = DecodeSession(self.lm, prompt_ids, stop, sampling)
        s.prefill()
        with s.decoding() as t:
            autoregressive_loop(s)
        return s.result(t)
