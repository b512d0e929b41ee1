"""``sdsat-fused`` (one forward pass per loop): token-identical to AR under greedy decoding for every k
and group policy, the cache invariant after every loop, block layout, and bad input."""

from __future__ import annotations

import pytest
import torch

from harness.decoding import SamplingParams, StopCondition, make_decoder
from harness.decoding.fused import Block, parse_groups
from harness.decoding.session import DecodeSession
from harness.decoding.trees import DraftTree
from harness.errors import HarnessError
from tests.tiny import make_lm, prompt_ids

PROMPTS = ["def f(a):\n", "a", "(((hh)) ega: bad\n"]
STOPS = (
    StopCondition(max_new_tokens=37),
    StopCondition(max_new_tokens=60, stop_strings=("\n\n", "):"), eos_token_ids=frozenset({1})),
    StopCondition(max_new_tokens=1),
)


def _policies(k: int) -> list[str]:
    return ["all", "0", "0,1", ",".join(map(str, range(0, k + 1, 2))), str(k)]


@pytest.mark.parametrize("seed,repeated,context_free", [(0, False, False), (1, True, False), (2, False, True)])
def test_fused_greedy_equals_ar_for_every_k_and_group_policy(seed, repeated, context_free):
    lm = make_lm(seed=seed, repeated=repeated, context_free=context_free, init_range=0.5)
    cases = [(prompt_ids(lm, prompt), stop) for prompt in PROMPTS for stop in STOPS]
    ars = [make_decoder("ar", lm).generate(ids, stop, SamplingParams()) for ids, stop in cases]
    accepted = 0
    for k in range(1, 13):
        for groups in _policies(k):
            decoder = make_decoder("sdsat-fused", lm, k=k, groups=groups)
            for (ids, stop), ar in zip(cases, ars, strict=True):
                fused = decoder.generate(ids, stop, SamplingParams())
                assert fused.tokens == ar.tokens, (k, groups, ids, stop)
                assert fused.text == ar.text and fused.stop_reason == ar.stop_reason
                accepted += fused.stats.accepted
    assert accepted > 0, "no draft was ever accepted: the test would not see a verification bug"


@pytest.mark.parametrize(
    "decoder,sampling",
    [
        ("sdsat-fused", SamplingParams()),
        ("sdsat-fused", SamplingParams(temperature=1.0, seed=3)),
        ("sdsat", SamplingParams()),
        ("sdsat", SamplingParams(temperature=1.0, seed=3)),
    ],
)
def test_cache_holds_every_token_but_the_pending_one_after_every_loop(monkeypatch, decoder, sampling):
    lm = make_lm(seed=2, context_free=True, alphabet="abcdefgh")  # drafts often right
    checked = []
    record = DecodeSession.record

    def checking_record(self, *args, **kwargs):
        record(self, *args, **kwargs)
        if not self.done:
            assert self.cache_length == len(self.prompt_ids) + len(self.sink.tokens) - 1
            assert self.sink.tokens[-1] == self.pending
            checked.append(1)

    monkeypatch.setattr(DecodeSession, "record", checking_record)
    gen = make_decoder(decoder, lm, k=4).generate(prompt_ids(lm, "ab"), StopCondition(max_new_tokens=50), sampling)
    assert len(checked) >= 5 and gen.stats.accepted > 0


def test_fused_spends_fewer_forward_passes_than_two_step_on_a_predictable_model():
    lm = make_lm(seed=2, context_free=True)  # drafts always right: both accept everything
    ids, stop = prompt_ids(lm, "ab"), StopCondition(max_new_tokens=60)
    two_step = make_decoder("sdsat", lm, k=5).generate(ids, stop, SamplingParams()).stats
    fused = make_decoder("sdsat-fused", lm, k=5).generate(ids, stop, SamplingParams()).stats
    assert fused.tokens_per_forward > 1.5 * two_step.tokens_per_forward
    assert fused.prefill_passes == two_step.prefill_passes == 1


def test_block_layout():
    tree = DraftTree.parse("chain", 3)
    block = Block.build(tree, parse_groups("0,2", tree), k=3)
    assert block.anchors == (0, 2)
    # nodes t0 d1 d2 d3 at offsets 0..3; the group after t0 at 1..3, the group after d2 at 3..5
    assert block.offsets.tolist() == [0, 1, 2, 3, 1, 2, 3, 3, 4, 5]
    second_group = block.allowed[7:10]
    assert second_group[:, :4].tolist() == [[True, True, True, False]] * 3  # sees t0, d1, d2 only
    assert second_group[:, 7:].tolist() == torch.tril(torch.ones(3, 3, dtype=torch.bool)).tolist()
    assert not second_group[:, 4:7].any()  # never the other group
    assert not block.allowed[:4, 4:].any()  # the drafts never see a group


def test_bad_group_policy_and_k(tmp_path):
    lm = make_lm(seed=0)
    with pytest.raises(HarnessError, match="--groups"):
        make_decoder("sdsat-fused", lm, k=3, groups="0,5")
    with pytest.raises(HarnessError, match="--groups"):
        make_decoder("sdsat-fused", lm, k=3, groups="x")
    with pytest.raises(HarnessError, match="k >= 1"):
        make_decoder("sdsat-fused", lm, k=0)
