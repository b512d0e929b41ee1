"""Exact sampling: the first generated tokens of ``sdsat --accept exact`` follow the same distribution
as plain AR sampling; ``--accept paper`` is detectably biased on a constructed case (the test has power)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from scipy.stats import chisquare

from harness.decoding import SamplingParams, StopCondition, make_decoder
from harness.decoding.sampling import target_probs
from tests.tiny import eagle_drafter, make_lm, medusa_drafter, prompt_ids

N_TOKENS = 3


def exact_distribution(lm, ids, sampling) -> dict[tuple[int, ...], float]:
    """P(first N_TOKENS tokens) by enumeration, each step a fresh full forward (no cache, no decoder code)."""
    out: dict[tuple[int, ...], float] = {}

    def expand(prefix: tuple[int, ...], p: float) -> None:
        if len(prefix) == N_TOKENS:
            out[prefix] = p
            return
        with torch.inference_mode():
            logits = lm.model(torch.tensor([ids + list(prefix)])).logits[0, -1]
        probs = target_probs(logits, sampling)
        for token in torch.nonzero(probs > 0).flatten().tolist():
            expand((*prefix, token), p * float(probs[token]))

    expand((), 1.0)
    return out


def sample_counts(decoder, ids, sampling, n) -> Counter:
    stop = StopCondition(max_new_tokens=N_TOKENS)
    return Counter(
        tuple(
            decoder.generate(
                ids, stop, SamplingParams(sampling.temperature, sampling.top_p, sampling.top_k, seed=i)
            ).tokens
        )
        for i in range(n)
    )


def goodness_of_fit(counts: Counter, expected: dict[tuple[int, ...], float]) -> float:
    """Chi-square p-value; cells expected fewer than 5 times are pooled into one."""
    n = sum(counts.values())
    assert set(counts) <= set(expected), "sampled a sequence of probability 0"
    big = [c for c, p in expected.items() if p * n >= 5]
    observed = [counts[c] for c in big]
    exp = [expected[c] * n for c in big]
    rest_exp = n - sum(exp)
    if rest_exp > 1e-9:
        observed.append(n - sum(observed))
        exp.append(rest_exp)
    return float(chisquare(observed, exp).pvalue)


CASES = [
    # (model seed, repeated adaptive id, sampling, k, tree)
    (0, False, SamplingParams(temperature=0.9, top_k=6), 3, None),
    (1, True, SamplingParams(temperature=1.0, top_p=0.7), 2, None),
    (2, False, SamplingParams(temperature=0.7, top_k=5), 3, "chain"),
]


@pytest.mark.parametrize("decoder", ["sdsat", "sdsat-fused"])
@pytest.mark.parametrize("seed,repeated,sampling,k,tree", CASES)
def test_exact_rule_preserves_distribution(seed, repeated, sampling, k, tree, decoder):
    lm = make_lm(seed=seed, repeated=repeated, init_range=0.5)
    ids = prompt_ids(lm, "ab(")
    expected = exact_distribution(lm, ids, sampling)
    n = 3000
    sd = make_decoder(decoder, lm, k=k, accept="exact", tree=tree)
    counts = sample_counts(sd, ids, sampling, n)
    assert goodness_of_fit(counts, expected) > 1e-3


@pytest.mark.parametrize("seed,repeated,sampling,k,tree", CASES)
def test_ar_sampling_matches_the_enumeration(seed, repeated, sampling, k, tree):
    """The reference the speculative decoders are held to: plain AR sampling fits the enumerated
    distribution too (once per case; it does not depend on the speculative decoder)."""
    lm = make_lm(seed=seed, repeated=repeated, init_range=0.5)
    ids = prompt_ids(lm, "ab(")
    ar_counts = sample_counts(make_decoder("ar", lm), ids, sampling, 3000)
    assert goodness_of_fit(ar_counts, exact_distribution(lm, ids, sampling)) > 1e-3


@pytest.mark.parametrize("decoder", ["sdsat", "sdsat-fused"])
def test_exact_rule_accepts_drafts_and_paper_rule_is_biased(decoder):
    """A context-free model predicts the same distribution p at every position (tokens i.i.d. ~ p),
    so drafts are often right. The exact rule keeps p; the paper rule, where every tree path draws
    its own sample, over-accepts the top candidate."""
    lm = make_lm(seed=3, context_free=True)
    ids = prompt_ids(lm, "ab(")
    sampling = SamplingParams(temperature=1.0)
    expected = exact_distribution(lm, ids, sampling)
    n = 2000
    exact = make_decoder(decoder, lm, k=3, accept="exact")
    counts = sample_counts(exact, ids, sampling, n)
    assert goodness_of_fit(counts, expected) > 1e-3
    stats = exact.generate(ids, StopCondition(max_new_tokens=200), sampling).stats
    assert stats.accepted > 0
    paper = make_decoder(decoder, lm, k=3, accept="paper")
    assert goodness_of_fit(sample_counts(paper, ids, sampling, n), expected) < 1e-6


TEXT_DRAFTERS = [("pld", {"k": 3}), ("lookahead", {"k": 2, "window": 3, "guesses": 3}), ("sps", {"k": 2})]


@pytest.mark.parametrize("decoder,options", TEXT_DRAFTERS)
@pytest.mark.parametrize("seed,context_free,sampling", [(3, True, SamplingParams(1.0, top_k=6))])
def test_text_drafters_sample_exactly(decoder, options, seed, context_free, sampling):
    """Prompt lookup and lookahead draft from text (the prompt repeats, so both have candidates from
    the first token on), sps from a draft model's greedy choices, and each accepts a draft with its
    target probability: the first tokens follow the enumerated distribution, and drafts are accepted."""
    lm = make_lm(seed=seed, context_free=context_free, init_range=0.5)
    ids = prompt_ids(lm, "ab(ab(ab(")
    drafter = make_decoder(decoder, lm, **options, draft=lm)  # sps: the target's own greedy choices
    counts = sample_counts(drafter, ids, sampling, 2000)
    assert goodness_of_fit(counts, exact_distribution(lm, ids, sampling)) > 1e-3
    stats = drafter.generate(ids, StopCondition(max_new_tokens=100), sampling).stats
    assert stats.drafted > 0 and stats.accepted > 0


@pytest.mark.parametrize("decoder,make_drafter", [("medusa", medusa_drafter), ("eagle", eagle_drafter)])
def test_feature_drafters_sample_exactly(tmp_path, decoder, make_drafter):
    """Medusa's and EAGLE's trees of top-ranked drafts, walked by the exact rule: the first tokens follow
    the enumerated distribution; zero heads, or a pass-through layer, on a context-free model draft the
    top token, often accepted."""
    lm = make_lm(seed=3, context_free=True, init_range=0.5)
    sampling = CASES[1][2]
    ids = prompt_ids(lm, "ab(")
    drafter = make_decoder(decoder, lm, k=3, drafter=make_drafter(lm, tmp_path))
    counts = sample_counts(drafter, ids, sampling, 2000)
    assert goodness_of_fit(counts, exact_distribution(lm, ids, sampling)) > 1e-3
    assert drafter.generate(ids, StopCondition(max_new_tokens=100), sampling).stats.accepted > 0
