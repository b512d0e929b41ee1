"""``pld``: prompt lookup decoding (Saxena 2023; transformers' ``prompt_lookup_num_tokens``) on our engine.

Each loop looks up the last n tokens (n = PLD_MAX_NGRAM down to 1) earlier in the prompt and the
completion so far, takes the up to k tokens that followed that earliest occurrence as a chain of
drafts, and verifies ``[pending, drafts]`` in one pass: the longest prefix that equals the model's
greedy predictions, or, when sampling, the exact walk over a chain of deterministic candidates (each
accepted with its target probability, the bonus drawn from the residual). Where nothing matches, the
loop is a plain AR step. On a static cache every verify pass is padded to k + 1 tokens, so that one
compiled block serves drafts of any length (the padding follows the chain, which causal attention keeps
it from touching); eager passes are not padded.
"""

from __future__ import annotations

from collections.abc import Sequence

from harness.decoding.autoregressive import autoregressive_step
from harness.decoding.base import Generation, SamplingParams, StopCondition
from harness.decoding.ngrams import NgramIndex
from harness.decoding.sdsat import verify_drafted_chain
from harness.decoding.session import DecodeSession
from harness.decoding.trees import DraftTree
from harness.errors import HarnessError
from harness.models import LoadedModel

PLD_MAX_NGRAM = 3  # the original implementation's default (max_ngram_size=3)


class PromptLookupDecoder:
    name = "pld"

    def __init__(self, lm: LoadedModel, k: int):
        if k < 1:
            raise HarnessError(f"pld needs k >= 1 (its longest draft), got {k}")
        self.lm, self.k = lm, k
        self.pad = lm.engine.mode != "eager"
        self.chains = {n: DraftTree.parse("chain", n) for n in range(1, k + 1)}

    @property
    def configuration(self) -> str:
        return f"{self.lm.engine.description}; drafts: the earliest earlier {PLD_MAX_NGRAM}..1-gram match"

    def block_sizes(self, greedy: bool) -> tuple[int, ...]:
        """Query lengths of the decode passes: an AR step where nothing matches, a padded verify pass."""
        return (1, self.k + 1)

    def generate(self, prompt_ids: Sequence[int], stop: StopCondition, sampling: SamplingParams) -> Generation:
        s = DecodeSession(self.lm, prompt_ids, stop, sampling, max_block=self.k + 1)
        s.prefill()
        index = NgramIndex(PLD_MAX_NGRAM)
        index.extend(s.prompt_ids)
        with s.decoding() as t:
            while not s.done:
                drafts, before = index.lookup(self.k), len(s.sink.tokens)
                if drafts:
                    padding = [drafts[-1]] * (self.k - len(drafts)) if self.pad else []
                    verify_drafted_chain(s, self.chains[len(drafts)], drafts, padding)
                else:
                    autoregressive_step(s)
                index.extend(s.sink.tokens[before:])
        return s.result(t)
