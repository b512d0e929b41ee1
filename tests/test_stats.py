"""Statistics invariants and stop handling shared by all decoders."""

from __future__ import annotations

import pytest

from harness.decoding import SamplingParams, StopCondition, make_decoder
from harness.decoding.base import TokenSink
from tests.tiny import make_lm, prompt_ids


@pytest.mark.parametrize(
    "decoder,k,sampling",
    [
        ("ar", 0, SamplingParams()),
        ("sdsat", 4, SamplingParams()),
        ("sdsat", 5, SamplingParams(temperature=0.8, top_p=0.9)),
        ("sdsat", 3, SamplingParams(temperature=1.0, seed=3)),
    ],
)
@pytest.mark.parametrize("context_free", [False, True])
def test_stats_invariants(decoder, k, sampling, context_free):
    lm = make_lm(seed=7, context_free=context_free)
    for max_new in (1, 2, 17, 64):
        gen = make_decoder(decoder, lm, k=k).generate(prompt_ids(lm, "abc"), StopCondition(max_new), sampling)
        st = gen.stats
        assert st.new_tokens == len(gen.tokens) == sum(loop.emitted for loop in st.loops)
        assert st.new_tokens <= max_new
        assert st.accepted <= st.drafted
        assert all(0 <= loop.accepted <= loop.drafted for loop in st.loops)
        assert st.forward_passes == sum(loop.forwards for loop in st.loops)
        assert st.prefill_passes == 1
        if gen.stop_reason == "max_new_tokens":
            assert st.new_tokens == max_new
        if decoder == "sdsat":
            assert all(loop.forwards in (1, 2) for loop in st.loops)
            # a full loop emits t1, the accepted drafts and the bonus token; only the last one may be cut
            assert all(loop.emitted == 2 + loop.accepted for loop in st.loops[:-1])


def test_drafts_past_a_stop_are_cut_and_not_counted():
    """Context-free greedy model: every draft is accepted, so a stop inside a loop's drafts is cut."""
    lm = make_lm(seed=3, context_free=True)
    ids = prompt_ids(lm, "abc")
    full = make_decoder("sdsat", lm, k=8).generate(ids, StopCondition(40), SamplingParams())
    assert full.stats.accepted == full.stats.drafted > 0  # the whole chain is accepted each loop
    for max_new in range(1, 12):
        gen = make_decoder("sdsat", lm, k=8).generate(ids, StopCondition(max_new), SamplingParams())
        assert gen.tokens == full.tokens[:max_new]
        # loop 1 emits t1, 8 drafts, the bonus (tokens 1..10); token 11 is the next loop's t1
        assert gen.stats.accepted == min(8, max_new - 1)
        assert gen.stats.new_tokens == max_new


class _CharTok:
    """Decodes ids as characters: enough to test the sink's stop-string logic alone."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids if not (skip_special_tokens and i < 2))  # 0, 1: specials


def test_sink_cuts_at_first_stop_string_inside_a_batch():
    sink = TokenSink(
        _CharTok(), [0, ord("x")], StopCondition(100, stop_strings=("\ndef", "\n#"), eos_token_ids=frozenset({1}))
    )
    kept = sink.emit([ord(c) for c in "ab\n#cd\ndef"])
    assert sink.done and sink.stop_reason == "stop_string"
    assert sink.text == "ab"
    assert kept == 4  # through the token that completes the stop string
    assert sink.emit([ord("z")]) == 0


def test_sink_eos_and_max_new_tokens():
    sink = TokenSink(_CharTok(), [0], StopCondition(3, eos_token_ids=frozenset({1})))
    assert sink.emit([ord("a"), 1, ord("b")]) == 2 and sink.stop_reason == "eos" and sink.text == "a"
    sink = TokenSink(_CharTok(), [0], StopCondition(3))
    assert sink.emit([ord(c) for c in "abcdef"]) == 3 and sink.stop_reason == "max_new_tokens"


def _cut_by_full_decodes(tokenizer, prompt: list[int], tokens: list[int], stops: tuple[str, ...]):
    """The reference: the first token count whose full decode holds a stop string, and the text cut there."""
    chars = len(tokenizer.decode(prompt, skip_special_tokens=True))
    for n in range(1, len(tokens) + 1):
        text = tokenizer.decode(prompt + tokens[:n], skip_special_tokens=True)[chars:]
        hits = [i for s in stops if (i := text.find(s)) >= 0]
        if hits:
            return tokens[:n], text[: min(hits)]
    return tokens, tokenizer.decode(prompt + tokens, skip_special_tokens=True)[chars:]


@pytest.mark.parametrize("seed", range(6))
def test_sink_windowed_stop_check_agrees_with_full_decodes(seed):
    """The sink decodes a bounded window per batch to look for stop strings; on the default model's
    byte-level BPE (multi-byte characters split over tokens, leading spaces) it must cut exactly where
    decoding the whole sequence after every token would."""
    import random

    from transformers import AutoTokenizer

    from harness.weights import MODELS_DIR, SHIPPED

    tokenizer = AutoTokenizer.from_pretrained(MODELS_DIR / SHIPPED["default"])
    rng = random.Random(seed)
    text = "def f(x):\n    # ü→ 数 émoji 🙂\n    return x\n\n" * 3
    pieces = tokenizer(text, add_special_tokens=False).input_ids
    stops = ("\ndef", "\n#", "\n\n", "🙂\n", " return")
    for _ in range(10):
        cut_at = rng.randrange(1, 12)
        prompt = pieces[:cut_at]
        # the text's own tokens with some replaced by random ids: stop strings appear where the text
        # has them, straddle batches, and sit next to odd tokens (partial UTF-8 characters)
        tokens = [t if rng.random() < 0.85 else rng.randrange(len(tokenizer)) for t in pieces[cut_at : cut_at + 60]]
        sink = TokenSink(tokenizer, prompt, StopCondition(1000, stop_strings=stops))
        i = 0
        while i < len(tokens) and not sink.done:
            batch = rng.randrange(1, 9)
            sink.emit(tokens[i : i + batch])
            i += batch
        kept, cut = _cut_by_full_decodes(tokenizer, prompt, tokens[:i], stops)
        assert sink.tokens == kept and sink.text == cut


def test_peer_stop_criteria_forget_rejected_drafts():
    """transformers 5.17 calls the stopping criteria on a step's drafted sequence before verifying it.
    Drafts that verification rejects must leave no trace: neither a stop string they spelled nor
    their count towards max_new_tokens."""
    import torch

    from harness.decoding.peers import SinkCriteria

    lm = make_lm(seed=5)
    prompt = prompt_ids(lm, "def f(a):\n")
    stop_ids = lm.tokenizer("):", add_special_tokens=False).input_ids
    plain = lm.tokenizer("ab", add_special_tokens=False).input_ids
    criteria = SinkCriteria(TokenSink(lm.tokenizer, prompt, StopCondition(6, stop_strings=("):",))))

    def call(completion: list[int]) -> bool:
        return bool(criteria(torch.tensor([prompt + completion]), None)[0])

    assert not call(plain[:1])
    assert call(plain[:1] + stop_ids)  # drafts that spell the stop string ...
    assert not call(plain[:1] + plain[1:2])  # ... rejected: verification kept another token
    assert call(plain * 4 + plain[:1]) and criteria.sink.stop_reason == "max_new_tokens"
    assert criteria.sink.tokens == (plain * 4 + plain[:1])[:6]
