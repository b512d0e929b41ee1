"""``sps``: speculative decoding with a small draft model (Leviathan et al. 2023; Chen et al. 2023, "SpS"
in Spec-Bench) on our engine: the draft model and the target each run through their own engine (static
cache and compiled steps on a GPU).

Each loop the draft model proposes k tokens greedily, one pass a token, and the target verifies
``[pending, drafts]`` in one pass: the longest prefix equal to its greedy predictions, or, when
sampling, each draft accepted with its target probability and the bonus drawn from the residual. The
drafts are deterministic given the text, so that rule is exact (the output is distributed as ``ar``'s);
it accepts less than the classic rule, which samples drafts and accepts with min(1, p/q), at high
temperatures. The draft model's cache follows the target's: it keeps what was accepted, and a loop whose
every draft was accepted feeds the last draft together with the next pending token (a block of 2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from harness.decoding.base import Generation, SamplingParams, StopCondition, check_same_vocabulary
from harness.decoding.sdsat import verify_drafted_chain
from harness.decoding.session import DecodeSession
from harness.decoding.trees import DraftTree
from harness.errors import HarnessError
from harness.models import LoadedModel

GREEDY = SamplingParams()


class DraftModelDecoder:
    name = "sps"

    def __init__(self, lm: LoadedModel, draft: LoadedModel, k: int):
        if k < 1:
            raise HarnessError(f"sps needs k >= 1 (draft tokens a loop), got {k}")
        check_same_vocabulary(draft, lm)
        self.lm, self.draft, self.k = lm, draft, k
        self.chain = DraftTree.parse("chain", k)

    @property
    def configuration(self) -> str:
        return f"{self.lm.engine.description}; draft model {self.draft.name}, greedy drafts, its own engine"

    def block_sizes(self, greedy: bool) -> tuple[int, ...]:
        return (self.k + 1,)

    def draft_block_sizes(self) -> tuple[int, ...]:
        """Query lengths of the draft model's passes (its engine compiles them too)."""
        return (1, 2)

    def generate(self, prompt_ids: Sequence[int], stop: StopCondition, sampling: SamplingParams) -> Generation:
        s = DecodeSession(self.lm, prompt_ids, stop, sampling, max_block=self.k + 1)
        d = DecodeSession(self.draft, prompt_ids, StopCondition(stop.max_new_tokens + self.k + 1), GREEDY, max_block=2)
        s.prefill()
        behind: list[int] = []  # accepted tokens the draft model's cache lacks (its last draft)
        with s.decoding() as t:
            d.prefill()  # the draft model's prefill is part of what sps costs: timed as decoding
            while not s.done:
                prefix_d = d.cache_length
                drafts = self._propose(d, [*behind, s.pending])
                accepted = verify_drafted_chain(s, self.chain, drafts, [])
                # the draft cache holds behind, pending and drafts[:k-1]: keep what was accepted
                d.crop(min(prefix_d + len(behind) + 1 + accepted, d.cache_length))
                behind = drafts[self.k - 1 :] if accepted == self.k else []
        return s.result(t)  # forward passes: the target's only, as hf-assisted counts them

    def _propose(self, d: DecodeSession, feed: list[int]) -> list[int]:
        """k greedy draft tokens after ``feed`` (fed in one pass, then one token a pass)."""
        drafts: list[int] = []
        while len(drafts) < self.k:
            token = int(torch.argmax(d.forward(feed)[-1]))
            drafts.append(token)
            feed = [token]
        return drafts
